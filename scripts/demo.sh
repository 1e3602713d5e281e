#!/usr/bin/env bash
# The demo: starts `superpeer serve` on a free local port with the embedded policy,
# shows it answering, hot-swaps a new policy in over the REST API, shows a bad policy
# being refused while the good one keeps running, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked -p superpeer
bin=target/debug/superpeer
guests=target/guest/wasm32-wasip2/release

work=$(mktemp -d)
server=""
helpers=()
cleanup() {
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server"
    wait "$server" 2>/dev/null || true
  fi
  for pid in "${helpers[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

token=demo-$RANDOM$RANDOM
"$bin" serve --port 0 --bind 127.0.0.1 --data-dir "$work/data" --env-file "$work/.env" --access-token "$token" >"$work/log" 2>&1 &
server=$!

# Wait for the line that says which port it got, or for it to die.
url=""
for _ in $(seq 1 600); do
  url=$(sed -n 's/.*superpeer listening on \(http:[^ ]*\).*/\1/p' "$work/log" | head -n1)
  [ -n "$url" ] && break
  if ! kill -0 "$server" 2>/dev/null; then
    cat "$work/log" >&2
    echo "superpeer exited before it was ready" >&2
    exit 1
  fi
  sleep 0.1
done
[ -n "$url" ] || { cat "$work/log" >&2; echo "superpeer did not start in 60 s" >&2; exit 1; }

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
# METHOD PATH [curl args...]: prints the JSON answer and its status.
api() {
  local method=$1 path=$2 status
  shift 2
  status=$(curl -sS -o "$work/body" -w '%{http_code}' -X "$method" "$@" "$url$path")
  if command -v jq >/dev/null 2>&1; then jq . "$work/body"; else cat "$work/body"; echo; fi
  echo "-> HTTP $status"
}
authed() { api "$@" -H "X-ACCESS-TOKEN: $token"; }

step "superpeer is listening on $url"
authed GET /health

step "The running policy (the embedded default, describing itself)"
authed GET /policy

step "A request without the access token is refused"
api GET /policy

step "Uploading garbage as a policy: refused with a reason, nothing replaced"
printf 'definitely not wasm' >"$work/garbage.wasm"
authed POST /policy --data-binary @"$work/garbage.wasm"

step "Uploading a component of the wrong world: refused"
authed POST /policy --data-binary @"$guests/superpeer_test_wrong_world.wasm"

step "Hot-swapping in a new policy (counter 2.0.0): compiled, type-checked, canary-started, swapped"
authed POST /policy --data-binary @"$guests/superpeer_test_counter_v2.wasm"

step "Now running, with the old one kept for rollback"
authed GET /policy

step "Swapping the default back in"
"$bin" policy export-default "$work/pml.wasm"
authed POST /policy --data-binary @"$work/pml.wasm"

# Polls /stats until the jq filter $1 yields something, for up to 60 s.
wait_stats() {
  local out
  for _ in $(seq 1 600); do
    out=$(curl -sS -H "X-ACCESS-TOKEN: $token" "$url/stats" | jq -r "$1")
    if [ -n "$out" ] && [ "$out" != "null" ]; then echo "$out"; return 0; fi
    sleep 0.1
  done
  echo "gave up waiting for: $1" >&2
  return 1
}

channel=$(printf 'http://127.0.0.1:9/live/master.m3u8' | base64 | tr -d '\n')
step "Seeding a channel (base64 of its manifest URL): a worker process starts for it"
authed POST /seed --data "{\"list\": [{\"channel\": \"$channel\", \"keepAlive\": true, \"label\": \"demo\"}]}"
pid=$(wait_stats '.workers | to_entries[] | select(.value.state == "running") | .key')
wait_stats ".workers[\"$pid\"] | select(.memory > 0) | .memory" >/dev/null
step "Worker $pid in /stats (memory and CPU measured from /proc)"
curl -sS -H "X-ACCESS-TOKEN: $token" "$url/stats" |
  jq ".workers[\"$pid\"] | {channelId, state, memory, cpu, restarts, policy: .policy.name, keepAlive, label: .label}"

step "kill -9 $pid: the master restarts the seed in a new worker"
kill -9 "$pid"
new=$(wait_stats ".workers | to_entries[] | select(.key != \"$pid\" and .value.state == \"running\") | .key")
curl -sS -H "X-ACCESS-TOKEN: $token" "$url/stats" | jq ".workers[\"$new\"] | {pid: \"$new\", state, restarts}"

step "Stopping everything through the API"
authed POST /stop_all

# A real WebTorrent tracker and a small live HLS origin, both on free local ports.
# The tracker exits when its stdin closes: this script holds it open (fd 3) until it ends.
mkfifo "$work/tracker.in"
node tests/support/tracker.mjs <"$work/tracker.in" >"$work/tracker.log" 2>&1 &
helpers+=($!)
exec 3>"$work/tracker.in"
mkdir -p "$work/origin/live"
printf '#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1280000,CODECS="avc1.4d401f,mp4a.40.2",RESOLUTION=1280x720\n720p.m3u8\n' >"$work/origin/live/master.m3u8"
{
  printf '#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXT-X-MEDIA-SEQUENCE:40\n'
  for n in 40 41 42 43; do
    printf '#EXTINF:2,\nseg%s.ts\n' "$n"
    head -c 188000 /dev/urandom >"$work/origin/live/seg$n.ts"
  done
} >"$work/origin/live/720p.m3u8"
python3 -m http.server 0 --bind 127.0.0.1 --directory "$work/origin" >"$work/origin.log" 2>&1 &
helpers+=($!)
tracker_port="" origin_port=""
for _ in $(seq 1 600); do
  tracker_port=$(sed -n 's/^listening \([0-9]*\)$/\1/p' "$work/tracker.log")
  origin_port=$(sed -n 's/.*port \([0-9]*\).*/\1/p' "$work/origin.log" | head -n1)
  [ -n "$tracker_port" ] && [ -n "$origin_port" ] && break
  sleep 0.1
done
[ -n "$tracker_port" ] && [ -n "$origin_port" ] || { echo "tracker or origin did not start" >&2; exit 1; }

manifest="http://127.0.0.1:$origin_port/live/master.m3u8"
channel=$(printf '%s' "$manifest" | base64 | tr -d '\n')
step "Seeding a live stream: the worker reads its playlists, joins the swarm of its rendition on a real bittorrent-tracker (ws://127.0.0.1:$tracker_port) and caches the live window"
authed POST /seed --data "{\"list\": [{\"channel\": \"$channel\", \"keepAlive\": true, \"signal1\": \"ws://127.0.0.1:$tracker_port\"}]}"
pid=$(wait_stats '.workers | to_entries[] | select(.value.segments == 4 and .value.trackers == 1) | .key')
curl -sS -H "X-ACCESS-TOKEN: $token" "$url/stats" |
  jq ".workers[\"$pid\"] | {channelId, trackers, segments, memoryCacheSize, downloaded, policy: .policy.name, policyCalls: .policyStats.calls}"
step "The tracker's view: one swarm, one peer (superpeer)"
curl -sS "http://127.0.0.1:$tracker_port/stats.json" | jq '{torrents, peersAll}'
echo "Viewers who announce in this swarm get superpeer's WebRTC answer and their segments from it."

step "superpeer's log"
cat "$work/log"
