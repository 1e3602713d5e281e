// Runs viewers: tabs of headless Chromium (Debian's, at /usr/bin/chromium unless
// CHROMIUM is set) playing player.html (unmodified hls.js + p2p-media-loader) or
// swarmcloud.html (the unmodified SwarmCloud SDK).
//   node viewers.mjs --page URL [--page URL2 ...] [--viewers N] [--seconds S] [--patience S]
// With several pages, viewer i plays page i modulo their number.
// Each viewer plays until it has played S seconds (default 30) or fails. While they play,
// one JSON line per second: {"type":"tick","viewers":[{played,peers,p2pBytes,httpBytes,stalls}]}.
// At the end one line {"type":"summary","viewers":[...]} with, per viewer, what it played,
// its stalls and errors, every segment with its source, and the SHA-256 of the bytes of
// every segment that came over P2P and of every fragment hls.js consumed.
// Exits non-zero only if the browser itself could not run; judging is the caller's.
import { launchChromium } from './chromium.mjs'
import { option, options } from './cli.mjs'

const pages = options('--page')
const count = Number(option('--viewers', '1'))
const seconds = Number(option('--seconds', '30'))
// How long a viewer may take to start playing and then play `seconds`.
const patience = Number(option('--patience', String(seconds + 60)))
if (pages.length === 0 || !(count >= 1) || !(seconds > 0)) {
  console.error('usage: viewers.mjs --page URL [--page URL2 ...] [--viewers N] [--seconds S] [--patience S]')
  process.exit(2)
}

const browser = await launchChromium()
const stopBrowser = () => browser.close().catch(() => {})
process.on('SIGTERM', async () => {
  await stopBrowser()
  process.exit(143)
})

try {
  // One context per viewer: separate storage, so no viewer shares a cache with another.
  const tabs = []
  for (let i = 0; i < count; i++) {
    const context = await browser.newContext()
    const tab = await context.newPage()
    const console = []
    tab.on('console', (message) => {
      if (message.type() === 'error' && console.length < 50) console.push(message.text())
    })
    tab.on('pageerror', (error) => console.push(`page error: ${error.message}`))
    await tab.goto(pages[i % pages.length])
    tabs.push({ tab, console })
  }

  const read = (t) => t.tab.evaluate(() => window.viewer)
  const bytesFrom = (viewer, source) =>
    viewer.loaded.filter((s) => s.source === source).reduce((sum, s) => sum + s.bytes, 0)
  const done = (v) => v.failed !== null || v.playedSeconds >= seconds
  const deadline = Date.now() + patience * 1000
  let states
  for (;;) {
    states = await Promise.all(tabs.map(read))
    const tick = states.map((v) => ({
      protocol: v.protocol ?? 'pml',
      played: Number(v.playedSeconds.toFixed(1)),
      peers: v.peers,
      p2pBytes: bytesFrom(v, 'p2p'),
      httpBytes: bytesFrom(v, 'http'),
      stalls: v.stalls,
    }))
    console.log(JSON.stringify({ type: 'tick', viewers: tick }))
    if (states.every(done) || Date.now() > deadline) break
    await new Promise((resolve) => setTimeout(resolve, 1000))
  }
  // Hashes are computed asynchronously in the page: read once the last has settled.
  await Promise.all(tabs.map((t) => t.tab.waitForFunction(() => window.viewer.hashing === 0)))
  states = await Promise.all(tabs.map(read))
  const viewers = states.map((v, i) => ({
    ...v,
    p2pBytes: bytesFrom(v, 'p2p'),
    httpBytes: bytesFrom(v, 'http'),
    timedOut: !done(v),
    console: tabs[i].console,
  }))
  console.log(JSON.stringify({ type: 'summary', viewers }))
} finally {
  await stopBrowser()
}
