// A real WebTorrent tracker (bittorrent-tracker, WebSocket only) on 127.0.0.1, on a port
// the OS picks, with its statistics at /stats.json. Prints "listening <port>" once ready,
// then one JSON line per announce that starts or stops a peer in a swarm
// ({"event":"start"|"stop","info_hash","peer_id"}); exits on SIGTERM or when its stdin
// closes, so it never outlives the test that started it.
// The package's entry point also loads its client half, which needs a native build;
// the server alone does not.
import Server from './node_modules/bittorrent-tracker/server.js'

// bittorrent-tracker keeps 1,000 peers a swarm unless told (`peersCacheLength`), and
// evicts the one that announced longest ago: a swarm of a thousand viewers and
// superpeer would always have one viewer the tracker hands no offer to.
const server = new Server({ udp: false, http: false, ws: true, stats: true, peersCacheLength: 100000 })
server.on('error', (error) => {
  console.error(`tracker error: ${error.message}`)
  process.exit(1)
})
server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.ws.address().port}`)
})
for (const event of ['start', 'stop']) {
  server.on(event, (_peer, params) => {
    console.log(JSON.stringify({ event, info_hash: params.info_hash, peer_id: params.peer_id }))
  })
}
const stop = () => server.close(() => process.exit(0))
process.on('SIGTERM', stop)
process.stdin.on('end', stop)
process.stdin.resume()
