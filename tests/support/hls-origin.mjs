// An HLS origin on 127.0.0.1, on a port the OS picks, serving media that ffmpeg makes:
//   node hls-origin.mjs --dir DIR --vod [--seconds 60]   encodes a VOD stream, then serves it
//   node hls-origin.mjs --dir DIR --live                 encodes a live stream in real time
// Options: --size WxH (426x240), --video-bitrate (800k), and --fmp4 for a stream shaped
// as PeerTube makes them: fragmented MP4 in one file, with #EXT-X-MAP and every segment an
// #EXT-X-BYTERANGE of it.
// The stream is at /<vod|live>/master.m3u8 (one H.264/AAC rendition, 2 s segments).
// Byte ranges are served (206) for `Range: bytes=a-b` requests, as players ask for them.
// It also serves the viewer page (/player.html) and the player libraries from
// node_modules (/lib/<package>/...), so the page and the media share one origin.
// GET /hits.json counts the requests per path, so tests can tell what went to the origin.
// Prints "listening <port>" once a viewer could start playing; exits (stopping ffmpeg)
// on SIGTERM or when its stdin closes, so it never outlives whoever started it.
import { spawn } from 'node:child_process'
import { createReadStream, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs'
import { createServer } from 'node:http'
import { extname, join } from 'node:path'
import { contentTypes, inside, pageFile } from './pages.mjs'
import { flag, option } from './cli.mjs'

const root = option('--dir')
const live = flag('--live')
const seconds = Number(option('--seconds', '60'))
const size = option('--size', '426x240')
const videoBitrate = option('--video-bitrate', '800k')
const fmp4 = flag('--fmp4')
if (!root || (live === flag('--vod')) || !/^\d+x\d+$/.test(size)) {
  console.error(
    'usage: hls-origin.mjs --dir DIR (--vod [--seconds N] | --live) [--size WxH] [--video-bitrate B] [--fmp4]',
  )
  process.exit(2)
}
const kind = live ? 'live' : 'vod'
const out = join(root, kind)
mkdirSync(out, { recursive: true })

// A test picture with a burnt-in clock and a tone: every segment differs from the next.
const encode = [
  '-hide_banner', '-loglevel', 'error', '-nostdin',
  ...(live ? ['-re'] : []),
  '-f', 'lavfi', '-i', `testsrc2=size=${size}:rate=25${live ? '' : `:duration=${seconds}`}`,
  '-f', 'lavfi', '-i', `sine=frequency=440:sample_rate=48000${live ? '' : `:duration=${seconds}`}`,
  '-c:v', 'libx264', '-preset', 'veryfast', '-profile:v', 'main', '-pix_fmt', 'yuv420p',
  '-b:v', videoBitrate, '-maxrate', videoBitrate, '-bufsize', `${2 * parseInt(videoBitrate)}k`,
  // A key frame exactly every 2 s, so every segment starts with one.
  '-g', '50', '-keyint_min', '50', '-sc_threshold', '0',
  '-c:a', 'aac', '-b:a', '64k', '-ac', '2',
  '-f', 'hls', '-hls_time', '2',
  ...(live
    ? ['-hls_list_size', '10', '-hls_flags', 'independent_segments+temp_file']
    : ['-hls_playlist_type', 'vod', '-hls_flags', `independent_segments${fmp4 ? '+single_file' : ''}`]),
  ...(fmp4
    ? ['-hls_segment_type', 'fmp4', '-hls_segment_filename', join(out, 'stream.mp4')]
    : ['-hls_segment_filename', join(out, 'seg%05d.ts')]),
  '-master_pl_name', 'master.m3u8',
  join(out, 'stream.m3u8'),
]

let ffmpeg = null
const stopEncoder = () => {
  if (ffmpeg && ffmpeg.exitCode === null) ffmpeg.kill('SIGTERM')
}

const segmentsListed = () => {
  const playlist = join(out, 'stream.m3u8')
  if (!existsSync(playlist)) return 0
  return readFileSync(playlist, 'utf8').split('\n').filter((l) => l.startsWith('#EXTINF')).length
}

const ready = new Promise((resolve, reject) => {
  ffmpeg = spawn('ffmpeg', encode, { stdio: ['ignore', 'inherit', 'inherit'] })
  ffmpeg.on('error', (error) => reject(new Error(`ffmpeg could not start: ${error.message}`)))
  ffmpeg.on('exit', (code, signal) => {
    if (!live && code === 0) resolve()
    else if (!stopping) reject(new Error(`ffmpeg exited with ${signal ?? code}`))
  })
  if (live) {
    // hls.js starts three target durations behind the live edge: wait for enough.
    const poll = setInterval(() => {
      if (segmentsListed() >= 4) {
        clearInterval(poll)
        resolve()
      }
    }, 200)
  }
})

const hits = {}
// Maps a request path to a file, never outside the directories it serves.
const resolve = (path) => {
  const page = pageFile(path)
  return page === undefined ? inside(root, path) : page
}

const server = createServer((request, response) => {
  const path = decodeURIComponent(new URL(request.url, 'http://origin').pathname)
  response.setHeader('Access-Control-Allow-Origin', '*')
  if (path === '/hits.json') {
    response.setHeader('Content-Type', 'application/json')
    response.end(JSON.stringify(hits))
    return
  }
  hits[path] = (hits[path] ?? 0) + 1
  const file = resolve(path)
  let size
  try {
    size = file && statSync(file).isFile() ? statSync(file).size : null
  } catch {
    size = null
  }
  if (size === null) {
    response.writeHead(404).end()
    return
  }
  response.setHeader('Content-Type', contentTypes[extname(file)] ?? 'application/octet-stream')
  response.setHeader('Accept-Ranges', 'bytes')
  // Live playlists change every segment; nothing may cache them.
  response.setHeader('Cache-Control', path.endsWith('.m3u8') ? 'no-store' : 'max-age=60')
  let [start, end] = [0, size - 1]
  const range = /^bytes=(\d+)-(\d*)$/.exec(request.headers.range ?? '')
  if (range) {
    start = Number(range[1])
    end = range[2] === '' ? size - 1 : Math.min(Number(range[2]), size - 1)
    if (start > end) {
      response.writeHead(416, { 'Content-Range': `bytes */${size}` }).end()
      return
    }
    response.statusCode = 206
    response.setHeader('Content-Range', `bytes ${start}-${end}/${size}`)
  }
  response.setHeader('Content-Length', end - start + 1)
  if (request.method === 'HEAD') {
    response.end()
    return
  }
  createReadStream(file, { start, end }).pipe(response)
})

let stopping = false
const stop = (code) => {
  stopping = true
  stopEncoder()
  server.close(() => process.exit(code))
  server.closeAllConnections()
}
process.on('SIGTERM', () => stop(0))
process.stdin.on('end', () => stop(0))
process.stdin.resume()

ready.then(
  () => server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`)),
  (error) => {
    console.error(error.message)
    stop(1)
  },
)
