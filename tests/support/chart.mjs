// Draws the load benchmark's chart: upload Mbit/s and p99 segment time against viewers,
// for each series in the benchmark's JSON, as a PNG (an SVG rendered by headless
// Chromium, so nothing else needs installing).
//   node chart.mjs results/load.json results/load.png
import { readFileSync } from 'node:fs'
import { launchChromium } from './chromium.mjs'

const [input, output] = process.argv.slice(2)
if (!input || !output) {
  console.error('usage: chart.mjs FIGURES.json OUT.png')
  process.exit(2)
}
const figures = JSON.parse(readFileSync(input, 'utf8'))
const side = figures.side_by_side ?? []
const lines = [
  { name: 'superpeer, viewers fetching as fast as served', color: '#1f77b4', points: figures.greedy ?? [] },
  { name: 'superpeer, viewers of a 4.2 Mbit/s stream', color: '#2ca02c', points: figures.paced ?? [] },
  { name: 'superpeer, viewers of a 1 Mbit/s stream', color: '#9467bd', points: figures.many ?? [] },
  { name: 'Chromium seeder, viewers of a 4.2 Mbit/s stream', color: '#d62728', points: side.map((p) => p.chromium) },
].filter((line) => line.points.length > 0)

const width = 560
const height = 360
const margin = { left: 70, right: 20, top: 40, bottom: 50 }
const escape = (text) => String(text).replace(/&/g, '&amp;').replace(/</g, '&lt;')

// One panel: x = viewers (log scale), y = `key` (linear or log).
const panel = (title, key, unit, logY) => {
  const points = lines.flatMap((l) => l.points).filter((p) => p[key] > 0)
  const xs = points.map((p) => p.viewers)
  const ys = points.map((p) => p[key])
  const [x0, x1] = [Math.min(...xs) / 1.2, Math.max(...xs) * 1.2]
  const [y0, y1] = logY ? [Math.min(...ys) / 1.5, Math.max(...ys) * 1.5] : [0, Math.max(...ys) * 1.1]
  const plotW = width - margin.left - margin.right
  const plotH = height - margin.top - margin.bottom
  const sx = (x) => margin.left + (Math.log(x / x0) / Math.log(x1 / x0)) * plotW
  const sy = logY
    ? (y) => margin.top + plotH - (Math.log(y / y0) / Math.log(y1 / y0)) * plotH
    : (y) => margin.top + plotH - ((y - y0) / (y1 - y0)) * plotH
  const ticks = (lo, hi, log) => {
    if (!log) {
      const step = 10 ** Math.floor(Math.log10(hi / 2)) * (hi / 10 ** Math.floor(Math.log10(hi)) > 5 ? 2 : 1)
      return Array.from({ length: Math.floor(hi / step) + 1 }, (_, i) => i * step)
    }
    const out = []
    for (let decade = 10 ** Math.floor(Math.log10(lo)); decade <= hi; decade *= 10) {
      for (const m of [1, 2, 5]) if (decade * m >= lo && decade * m <= hi) out.push(decade * m)
    }
    return out
  }
  let svg = `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="12">`
  svg += `<text x="${width / 2}" y="20" text-anchor="middle" font-size="14" font-weight="bold">${escape(title)}</text>`
  for (const t of ticks(y0, y1, logY)) {
    svg += `<line x1="${margin.left}" x2="${width - margin.right}" y1="${sy(t)}" y2="${sy(t)}" stroke="#ddd"/>`
    svg += `<text x="${margin.left - 6}" y="${sy(t) + 4}" text-anchor="end">${t}</text>`
  }
  for (const t of ticks(x0, x1, true)) {
    svg += `<line x1="${sx(t)}" x2="${sx(t)}" y1="${margin.top}" y2="${height - margin.bottom}" stroke="#eee"/>`
    svg += `<text x="${sx(t)}" y="${height - margin.bottom + 16}" text-anchor="middle">${t}</text>`
  }
  svg += `<text x="${margin.left + plotW / 2}" y="${height - 12}" text-anchor="middle">viewers</text>`
  svg += `<text transform="translate(16 ${margin.top + plotH / 2}) rotate(-90)" text-anchor="middle">${escape(unit)}</text>`
  if (key === 'p99_ms') {
    svg += `<line x1="${margin.left}" x2="${width - margin.right}" y1="${sy(2000)}" y2="${sy(2000)}" stroke="#888" stroke-dasharray="6 4"/>`
    svg += `<text x="${width - margin.right - 4}" y="${sy(2000) - 4}" text-anchor="end" fill="#666">segment duration</text>`
  }
  for (const line of lines) {
    const shown = line.points.filter((p) => p[key] > 0)
    const path = shown.map((p, i) => `${i ? 'L' : 'M'}${sx(p.viewers)},${sy(p[key])}`).join(' ')
    svg += `<path d="${path}" fill="none" stroke="${line.color}" stroke-width="2"/>`
    for (const p of shown) svg += `<circle cx="${sx(p.viewers)}" cy="${sy(p[key])}" r="3.5" fill="${line.color}"/>`
  }
  return `${svg}</svg>`
}

const legend = lines
  .map((l) => `<span><i style="background:${l.color}"></i>${escape(l.name)}</span>`)
  .join('')
const html = `<!doctype html><html><body style="margin:0;font-family:sans-serif">
<div id="chart" style="display:inline-block;padding:12px;background:#fff">
<div style="font-size:16px;font-weight:bold">superpeer load benchmark</div>
<div style="font-size:12px;color:#444;margin-bottom:6px">${escape(figures.machine ?? '')}; ${figures.seconds ?? '?'} s per step</div>
<div style="display:flex">${panel('Upload', 'mbps', 'Mbit/s', false)}${panel('Segment time, p99', 'p99_ms', 'ms (log scale)', true)}</div>
<style>span{margin-right:18px;font-size:12px}i{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-1px}</style>
<div>${legend}</div>
</div></body></html>`

const browser = await launchChromium()
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 600 } })
  await page.setContent(html)
  await page.locator('#chart').screenshot({ path: output })
} finally {
  await browser.close()
}
