// A SwarmCloud-compatible tracker or signal server on 127.0.0.1, on a port the OS
// picks, for tests and the demo; written here from the protocol's published shape.
//
//   node swarmcloud.mjs tracker   the tracker's HTTP API under /v1: announce
//                                 (POST /v1/channel), more peers
//                                 (POST /v1/channel/<channel>/node/<peer>/peers) and
//                                 figures (.../stats; `off: true` leaves); CORS open,
//                                 bodies read whatever their content type (the SDK
//                                 sends JSON as text/plain)
//   node swarmcloud.mjs signal    the signal relay: a WebSocket per peer
//                                 (`?id=<peer>`), `signal` and `reject` relayed by
//                                 `to_peer_id`; a `signal` to a peer not connected
//                                 comes back without `data` (not found)
//   node swarmcloud.mjs signal P  the same on port P (a relay that comes back where
//                                 it was)
//
// Prints "listening <port>" once ready, then one JSON line per thing a test may wait
// for ({"event":"announce"|"peers"|"leave"|"connect"|"disconnect",...}). Peers a channel lists
// are those that announced (super peers first: a viewer asks them first), minus the
// asker. Exits on SIGTERM or when its stdin closes, so it never outlives its test.
import http from 'node:http'
import { randomBytes } from 'node:crypto'
import { WebSocketServer } from './node_modules/ws/wrapper.mjs'

const role = process.argv[2]
const log = (line) => console.log(JSON.stringify(line))
const REPORT_INTERVAL = 20

function tracker() {
  // channel -> Map(peer id -> {super: bool})
  const channels = new Map()
  const members = (channel) => {
    if (!channels.has(channel)) channels.set(channel, new Map())
    return channels.get(channel)
  }
  const listed = (channel, asker, excluded = []) =>
    [...members(channel).entries()]
      .filter(([id]) => id !== asker && !excluded.includes(id))
      .sort(([, a], [, b]) => Number(b.super) - Number(a.super))
      .map(([id]) => ({ id }))
  const reply = (res, status, body) => {
    res.writeHead(status, {
      'content-type': 'application/json',
      'access-control-allow-origin': '*',
    })
    res.end(JSON.stringify(body))
  }
  const refuse = (res, code, msg) => reply(res, 200, { ret: -1, data: { code, msg } })
  const server = http.createServer((req, res) => {
    if (req.method === 'OPTIONS') {
      res.writeHead(204, {
        'access-control-allow-origin': '*',
        'access-control-allow-methods': 'GET, POST, OPTIONS',
        'access-control-allow-headers': '*',
      })
      return res.end()
    }
    let text = ''
    req.setEncoding('utf8')
    req.on('data', (chunk) => {
      text += chunk
      if (text.length > 65536) req.destroy()
    })
    req.on('end', () => {
      let body
      try {
        body = text ? JSON.parse(text) : {}
      } catch {
        return refuse(res, 4000, 'body is not JSON')
      }
      const path = new URL(req.url, 'http://x').pathname
      if (req.method === 'POST' && path === '/v1/channel') {
        if (typeof body.channel !== 'string' || !body.channel) {
          return refuse(res, 4001, 'no channel')
        }
        const id = randomBytes(8).toString('hex')
        const peers = listed(body.channel, id)
        members(body.channel).set(id, { super: body.super === true })
        log({ event: 'announce', channel: body.channel, peer_id: id, super: body.super === true })
        return reply(res, 200, {
          ret: 0,
          data: { id, report_interval: REPORT_INTERVAL, min_conns: 8, peers },
        })
      }
      const node = path.match(/^\/v1\/channel\/([^/]+)\/node\/([^/]+)\/(peers|stats)$/)
      if (req.method === 'POST' && node) {
        const [, channel, id, call] = node
        if (!members(channel).has(id)) return refuse(res, 4004, 'unknown peer')
        if (call === 'peers') {
          log({ event: 'peers', channel, peer_id: id })
          const excluded = Array.isArray(body.exclusions) ? body.exclusions : []
          return reply(res, 200, { ret: 0, data: { peers: listed(channel, id, excluded) } })
        }
        if (body.off === true) {
          members(channel).delete(id)
          log({ event: 'leave', channel, peer_id: id })
        }
        return reply(res, 200, { ret: 0, data: {} })
      }
      reply(res, 404, { ret: -1, data: { code: 4040, msg: 'not found' } })
    })
  })
  server.listen(0, '127.0.0.1', () => console.log(`listening ${server.address().port}`))
  return server
}

function signal() {
  const peers = new Map()
  const server = http.createServer((_, res) => {
    res.writeHead(426)
    res.end()
  })
  const wss = new WebSocketServer({ server, maxPayload: 65536 })
  wss.on('connection', (socket, req) => {
    const id = new URL(req.url, 'http://x').searchParams.get('id')
    if (!id) return socket.close(4000, 'no id')
    peers.get(id)?.close(4001, 'replaced')
    peers.set(id, socket)
    log({ event: 'connect', peer_id: id })
    socket.send(JSON.stringify({ action: 'ver', ver: 26 }))
    socket.on('message', (data) => {
      let message
      try {
        message = JSON.parse(data.toString())
      } catch {
        return socket.close(4002, 'not JSON')
      }
      if (message.action === 'ping') return socket.send(JSON.stringify({ action: 'pong' }))
      if (message.action !== 'signal' && message.action !== 'reject') return
      const target = peers.get(message.to_peer_id)
      if (!target) {
        if (message.action === 'signal') {
          socket.send(JSON.stringify({ action: 'signal', from_peer_id: message.to_peer_id }))
        }
        return
      }
      const { to_peer_id: _, ...rest } = message
      target.send(JSON.stringify({ ...rest, from_peer_id: id }))
    })
    socket.on('close', () => {
      if (peers.get(id) === socket) {
        peers.delete(id)
        log({ event: 'disconnect', peer_id: id })
      }
    })
  })
  server.listen(Number(process.argv[3] ?? 0), '127.0.0.1', () =>
    console.log(`listening ${server.address().port}`),
  )
  return server
}

const server = role === 'tracker' ? tracker() : role === 'signal' ? signal() : null
if (!server) {
  console.error('usage: node swarmcloud.mjs tracker|signal')
  process.exit(2)
}
const stop = () => {
  server.closeAllConnections?.()
  process.exit(0)
}
process.on('SIGTERM', stop)
process.stdin.on('end', stop)
process.stdin.resume()
