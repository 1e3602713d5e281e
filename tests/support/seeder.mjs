// A Chromium seeder: one headless Chromium tab running p2p-media-loader (seeder.html)
// that loads a VOD stream and uploads it to whoever connects through the tracker, the
// way sites seed a swarm from a browser today.
//   node seeder.mjs --manifest URL --trackers URL
// Serves the page itself on 127.0.0.1 (a port the OS picks). Prints "listening <port>"
// once the tab holds every segment and is in the swarm, then on request (a line on
// stdin) or at the end one JSON line {"peers","uploadedBytes","segments"}. Chromium's
// processes are this process's descendants, so callers can measure them from /proc.
// Exits (closing Chromium) on SIGTERM or when its stdin closes.
import { createReadStream, statSync } from 'node:fs'
import { createServer } from 'node:http'
import { extname } from 'node:path'
import { createInterface } from 'node:readline'
import { launchChromium } from './chromium.mjs'
import { contentTypes, pageFile } from './pages.mjs'
import { option } from './cli.mjs'

const manifest = option('--manifest')
const trackers = option('--trackers')
if (!manifest || !trackers) {
  console.error('usage: seeder.mjs --manifest URL --trackers URL')
  process.exit(2)
}

const server = createServer((request, response) => {
  const file = pageFile(new URL(request.url, 'http://seeder').pathname)
  let size = null
  try {
    size = file && statSync(file).isFile() ? statSync(file).size : null
  } catch {}
  if (size === null) {
    response.writeHead(404).end()
    return
  }
  response.setHeader('Content-Type', contentTypes[extname(file)] ?? 'application/octet-stream')
  response.setHeader('Content-Length', size)
  createReadStream(file).pipe(response)
})
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
const port = server.address().port

const browser = await launchChromium()
let stopping = false
const stop = async (code) => {
  if (stopping) return
  stopping = true
  server.close()
  await browser.close().catch(() => {})
  process.exit(code)
}
process.on('SIGTERM', () => stop(0))

try {
  const tab = await browser.newPage()
  const query = new URLSearchParams({ manifest, trackers })
  await tab.goto(`http://127.0.0.1:${port}/seeder.html?${query}`)
  await tab.waitForFunction(() => window.seeder?.ready || window.seeder?.failed, null, {
    timeout: 60_000,
  })
  const loaded = await tab.evaluate(() => window.seeder)
  if (loaded.failed) throw new Error(`the seeder tab failed: ${loaded.failed}`)
  const report = async () => {
    const { peers, uploadedBytes, segments } = await tab.evaluate(() => window.seeder)
    console.log(JSON.stringify({ peers, uploadedBytes, segments }))
  }
  console.log(`listening ${port}`)
  const input = createInterface({ input: process.stdin })
  input.on('line', () => report().catch(() => {}))
  input.on('close', async () => {
    await report().catch(() => {})
    await stop(0)
  })
} catch (error) {
  console.error(error.message)
  await stop(1)
}
