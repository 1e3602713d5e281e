// Drives superpeer's monitor page in headless Chromium as an operator would: opens it,
// is refused with a wrong token, gets in with the right one, finds the running worker's
// row and the charts, clicks the row's Restart button and waits for the replacement
// worker's row, then saves a screenshot.
//   node monitor.mjs --url URL --token TOKEN --screenshot OUT.png
// Prints one JSON line: {before, after, channel, row, uplinkPoints, peersPoints,
// refusal, foreign, pageErrors, title}. Exits non-zero if a step did not happen in time.
// With `--look SECONDS` it only logs in, waits that long, and saves the screenshot.
// With `--fleet NODES` it logs in, waits until the fleet panel lists that many nodes,
// and prints {fleetRows, fleetStatus, foreign, pageErrors} with the screenshot saved.
// With `--candidates ROWS` it logs in, waits until the candidates panel lists that many
// and prints {candidatesRows, candidatesStatus, foreign, pageErrors}.
import { launchChromium } from './chromium.mjs'
import { option } from './cli.mjs'

const url = option('--url')
const token = option('--token')
const screenshot = option('--screenshot')
const look = option('--look')
const fleet = option('--fleet')
const candidates = option('--candidates')
if (!url || !token || !screenshot) {
  console.error('usage: monitor.mjs --url URL --token TOKEN --screenshot OUT.png')
  process.exit(2)
}

const STEP_MS = 60_000
const browser = await launchChromium()
const stop = async (code) => {
  await browser.close().catch(() => {})
  process.exit(code)
}
process.on('SIGTERM', () => stop(143))

try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 860 } })
  page.setDefaultTimeout(STEP_MS)
  // Everything must come from superpeer itself: no CDN, no font service.
  const origin = new URL(url).origin
  const foreign = []
  page.on('request', (request) => {
    if (new URL(request.url()).origin !== origin) foreign.push(request.url())
  })
  const pageErrors = []
  page.on('pageerror', (error) => pageErrors.push(String(error)))

  await page.goto(url)
  await page.locator('#login').waitFor({ state: 'visible' })
  if (look !== undefined) {
    await page.fill('#token', token)
    await page.click('#connect')
    await page.locator('#dashboard').waitFor({ state: 'visible' })
    await page.waitForTimeout(Number(look) * 1000)
    await page.screenshot({ path: screenshot, fullPage: true })
    console.log(JSON.stringify({ screenshot, foreign, pageErrors }))
    await stop(0)
  }
  // Logs in, waits until the panel `name` lists `count` rows, prints them and its
  // status line as `{<name>Rows, <name>Status}`, and exits.
  const reportPanel = async (name, count) => {
    await page.fill('#token', token)
    await page.click('#connect')
    await page.locator(`#${name}-panel`).waitFor({ state: 'visible' })
    await page.waitForFunction(
      ([id, n]) => document.querySelectorAll(`tbody#${id} tr`).length === n,
      [name, Number(count)],
    )
    const rows = await page.$$eval(`tbody#${name} tr`, (trs) =>
      trs.map((r) => [...r.querySelectorAll('td')].map((td) => td.textContent)))
    const status = await page.textContent(`#${name}-status`)
    await page.screenshot({ path: screenshot, fullPage: true })
    console.log(JSON.stringify({ [`${name}Rows`]: rows, [`${name}Status`]: status, foreign, pageErrors }))
    await stop(0)
  }
  if (fleet !== undefined) await reportPanel('fleet', fleet)
  if (candidates !== undefined) await reportPanel('candidates', candidates)
  await page.fill('#token', 'not-the-token')
  await page.click('#connect')
  await page.waitForFunction(() => document.getElementById('login-error').textContent.includes('refused'))
  const refusal = await page.textContent('#login-error')

  await page.fill('#token', token)
  await page.click('#connect')
  const running = 'tbody#workers tr[data-pid]:has(td.state-running)'
  await page.locator(running).first().waitFor()
  const before = await page.getAttribute(running, 'data-pid')
  const channel = await page.getAttribute(running, 'data-channel')
  // The history holds a sample a second: a line needs two.
  await page.waitForFunction(() => Number(document.getElementById('chart-uplink').dataset.points) >= 2)
  await page.waitForFunction(() => Number(document.getElementById('chart-peers').dataset.points) >= 2)
  const row = await page.locator(`tr[data-pid="${before}"]`).innerText()

  await page.click(`tr[data-pid="${before}"] button[data-action="restart"]`)
  const after = await page.waitForFunction(
    ([channel, before]) => {
      const rows = [...document.querySelectorAll('tbody#workers tr[data-pid]')]
      const replacement = rows.find((r) => r.dataset.channel === channel && r.dataset.pid !== before &&
        r.querySelector('td.state-running'))
      return replacement ? replacement.dataset.pid : null
    },
    [channel, before],
  ).then((handle) => handle.jsonValue())
  await page.waitForFunction((before) => !document.querySelector(`tr[data-pid="${before}"]`), before)

  await page.screenshot({ path: screenshot, fullPage: true })
  const points = (id) => page.$eval(id, (svg) => Number(svg.dataset.points))
  console.log(JSON.stringify({
    before,
    after,
    channel,
    row,
    uplinkPoints: await points('#chart-uplink'),
    peersPoints: await points('#chart-peers'),
    refusal,
    foreign,
    pageErrors,
    title: await page.title(),
  }))
  await stop(0)
} catch (error) {
  console.error(`monitor driver: ${error.stack || error}`)
  await stop(1)
}
