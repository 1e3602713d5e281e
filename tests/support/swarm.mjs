// Runs a swarm of viewers in one headless Chromium tab (swarm.html: one iframe per viewer,
// each an unmodified hls.js + p2p-media-loader of the generation asked for) until its
// stdin closes, so a test can change the world around them while they watch.
//   node swarm.mjs --page URL
// URL is swarm.html with its query (viewers=2.3,2.2,... and what player.html takes).
// Prints {"type":"ready","viewers":N} once every player page has loaded, then one line a
// second: {"type":"tick","viewers":[{generation, played, stalls, failed, errors, peers,
// everConnected, p2pBytes, httpBytes, p2pFrom}]}, and when stdin closes one line
// {"type":"summary","viewers":[...]} with what each viewer played, every segment with its
// source, and the SHA-256 of every segment that came over P2P and every fragment played.
// Exits non-zero only if the browser itself could not run; judging is the caller's.
import { launchChromium } from './chromium.mjs'
import { option } from './cli.mjs'

const page = option('--page')
if (!page) {
  console.error('usage: swarm.mjs --page URL')
  process.exit(2)
}
const count = (new URL(page).searchParams.get('viewers') ?? '2.3').split(',').length

const browser = await launchChromium()
let stopping = false
const stop = async (code) => {
  stopping = true
  await browser.close().catch(() => {})
  process.exit(code)
}
process.on('SIGTERM', () => stop(143))

const context = await browser.newContext({ viewport: { width: 1600, height: 1200 } })
const tab = await context.newPage()
const console_ = []
tab.on('pageerror', (error) => console_.length < 50 && console_.push(`page error: ${error.message}`))
await tab.goto(page)

const frames = async () => {
  for (;;) {
    const found = Array.from({ length: count }, (_, i) => tab.frame({ name: `viewer${i}` }))
    if (found.every((f) => f)) {
      await Promise.all(
        found.map((f) => f.waitForFunction(() => window.viewerTick !== undefined, null, { timeout: 0 })),
      )
      return found
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}
const viewers = await frames()
console.log(JSON.stringify({ type: 'ready', viewers: count }))

let finished = false
process.stdin.on('end', () => { finished = true })
process.stdin.resume()

while (!finished && !stopping) {
  const tick = await Promise.all(viewers.map((f) => f.evaluate(() => window.viewerTick())))
  console.log(JSON.stringify({ type: 'tick', viewers: tick }))
  await new Promise((resolve) => setTimeout(resolve, 1000))
}

// Hashes are computed asynchronously in the pages: read once the last has settled.
await Promise.all(
  viewers.map((f) => f.waitForFunction(() => window.viewer.hashing === 0, null, { timeout: 0 })),
)
const states = await Promise.all(viewers.map((f) => f.evaluate(() => ({
  ...window.viewerTick(),
  loaded: window.viewer.loaded,
  closed: window.viewer.closed,
  p2pDownloads: window.viewer.p2pDownloads,
  p2pHashes: window.viewer.p2pHashes,
  playedHashes: window.viewer.playedHashes,
}))))
console.log(JSON.stringify({ type: 'summary', viewers: states, console: console_ }))
await stop(0)
