// The pages the helpers serve (player.html, swarmcloud.html and their record.mjs, seeder.html, swarm.html) and the player libraries from
// node_modules (/lib/<package>/...), mapped to files, never outside those directories.
import { dirname, join, normalize, sep } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const pages = ['/player.html', '/swarmcloud.html', '/record.mjs', '/seeder.html', '/swarm.html']
const libraries = [
  'hls.js',
  'p2p-media-loader-core',
  'p2p-media-loader-hlsjs',
  'p2p-media-loader-core-2.2',
  'p2p-media-loader-hlsjs-2.2',
  'swarmcloud-hls',
]

export const contentTypes = {
  '.m3u8': 'application/vnd.apple.mpegurl',
  '.ts': 'video/mp2t',
  '.mp4': 'video/mp4',
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript',
  '.mjs': 'text/javascript',
  '.map': 'application/json',
}

// `base` joined with `rest`, or null if that would leave `base`.
export const inside = (base, rest) => {
  const file = normalize(join(base, rest))
  return file.startsWith(base + sep) ? file : null
}

// The file for a page or library path; undefined for any other path, null for a path
// that names no file the helpers serve.
export const pageFile = (path) => {
  if (pages.includes(path)) return join(here, path.slice(1))
  if (path.startsWith('/lib/')) {
    const [name, ...rest] = path.slice('/lib/'.length).split('/')
    if (!libraries.includes(name)) return null
    return inside(join(here, 'node_modules', name), rest.join('/'))
  }
  return undefined
}
