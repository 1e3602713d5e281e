#!/usr/bin/env bash
# The demo: starts `superpeer serve` on a free local port with the embedded policies,
# shows it answering, hot-swaps a new policy in over the REST API, shows a bad policy
# being refused while the good one keeps running, survives kill -9 of a worker, then
# seeds a live stream (ffmpeg) for both viewer protocols, through a real
# bittorrent-tracker for p2p-media-loader and a SwarmCloud-compatible tracker and signal
# relay for the SwarmCloud SDK, and lets headless Chromium viewers of each (unmodified
# players) watch it, printing what superpeer uploads to them as it happens and a
# summary. DEMO_PROTOCOL=pml or swarmcloud shows one protocol only. It stops everything
# it started.
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

protocols=${DEMO_PROTOCOL:-both}
case "$protocols" in both | pml | swarmcloud) ;; *) echo "DEMO_PROTOCOL is pml, swarmcloud or both" >&2; exit 2 ;; esac

# shellcheck source=scripts/helpers.sh
source scripts/helpers.sh

# The SwarmCloud tracker and relay run from the start: the tracker is a zone of the
# master's configuration (trackerZones), and on this machine (originAllow).
start_helper swarmcloud.mjs tracker
swarmcloud_tracker="http://127.0.0.1:$port/v1"
start_helper swarmcloud.mjs signal
swarmcloud_relay="ws://127.0.0.1:$port"
printf 'trackerZones=demo=%s\noriginAllow=127.0.0.1\n' "$swarmcloud_tracker" >"$work/.env"

token=demo-$RANDOM$RANDOM
"$bin" serve --port 0 --bind 127.0.0.1 --data-dir "$work/data" --env-file "$work/.env" --access-token "$token" >"$work/log" 2>&1 &
server=$!

wait_listening "$server" "$work/log"

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

step "Starting a bittorrent-tracker and an HLS origin with ffmpeg encoding a live stream"
start_helper tracker.mjs
tracker_port=$port
start_helper hls-origin.mjs --dir "$work/media" --live
origin_port=$port
tracker="ws://127.0.0.1:$tracker_port"
origin="http://127.0.0.1:$origin_port"
manifest="$origin/live/master.m3u8"
echo "tracker $tracker, stream $manifest; SwarmCloud tracker $swarmcloud_tracker, relay $swarmcloud_relay"

if [ "$protocols" != swarmcloud ]; then
  channel=$(printf '%s' "$manifest" | base64 | tr -d '\n')
  step "Seeding the live stream for p2p-media-loader viewers: the worker reads its playlists, joins its rendition's swarm on the tracker and caches the live window"
  authed POST /seed --data "{\"list\": [{\"channel\": \"$channel\", \"keepAlive\": true, \"signal1\": \"$tracker\"}]}"
  pid=$(wait_stats '.workers | to_entries[] | select(.value.protocol == "pml" and .value.segments >= 2 and .value.trackers == 1) | .key')
  curl -sS -H "X-ACCESS-TOKEN: $token" "$url/stats" |
    jq ".workers[\"$pid\"] | {protocol, channelId, trackers, segments, memoryCacheSize, downloaded, policy: .policy.name}"
fi
if [ "$protocols" != pml ]; then
  # The channel id as the SwarmCloud SDK computes it: base64 of encodeURIComponent of
  # host:port/path-without-extension|relay-host:port[8].
  plain="127.0.0.1:$origin_port/live/master|127.0.0.1:${swarmcloud_relay##*:}[8]"
  sc_channel=$(jq -rn --arg v "$plain" '$v|@uri' | tr -d '\n' | base64 | tr -d '\n')
  step "Seeding the same stream for SwarmCloud viewers (another swarm, its own worker): it announces to the tracker's HTTP API as a super peer and waits on the signal relay for offers"
  authed POST /seed --data "{\"list\": [{\"channel\": \"$sc_channel\", \"protocol\": \"swarmcloud\", \"trackerZone\": \"demo\", \"url\": \"$manifest\", \"signal1\": \"$swarmcloud_relay\", \"keepAlive\": true}]}"
  pid=$(wait_stats '.workers | to_entries[] | select(.value.protocol == "swarmcloud" and .value.segments >= 2 and .value.trackers == 1) | .key')
  curl -sS -H "X-ACCESS-TOKEN: $token" "$url/stats" |
    jq ".workers[\"$pid\"] | {protocol, channelId, trackers, segments, memoryCacheSize, downloaded, policy: .policy.name}"
fi

uri() { jq -rn --arg v "$1" '$v|@uri'; }
pages=()
[ "$protocols" != swarmcloud ] && pages+=(--page "$origin/player.html?manifest=$(uri "$manifest")&trackers=$(uri "$tracker")&highDemand=4&liveSync=7")
[ "$protocols" != pml ] && pages+=(--page "$origin/swarmcloud.html?manifest=$(uri "$manifest")&announce=$(uri "$swarmcloud_tracker")&signal=$(uri "$swarmcloud_relay")&liveSync=7")
# Two of each protocol, or three of the one shown.
viewers=${DEMO_VIEWERS:-$([ "$protocols" = both ] && echo 4 || echo 3)}
seconds=${DEMO_SECONDS:-40}
step "$viewers viewers (headless Chromium, unmodified players: hls.js + p2p-media-loader, and the SwarmCloud SDK's hls.js) watch for $seconds s"
echo "Each finds superpeer through its tracker, plays 7 segments behind the live edge, and takes over P2P what plays far enough ahead."
# What each worker does, every 2 s, from the master's /stats.
(
  previous='{}'
  while sleep 2; do
    stats=$(curl -sS -H "X-ACCESS-TOKEN: $token" "$url/stats" 2>/dev/null) || continue
    jq -r --argjson previous "$previous" '.workers | to_entries[] | select(.value.state == "running") |
      "  superpeer worker \(.key) (\(.value.protocol)): \(.value.peers) peer(s), uplink \(((.value.uploaded - ($previous[.key] // .value.uploaded)) * 8 / 2e6 * 10 | round) / 10) Mbit/s, uploaded \((.value.uploaded / 1e5 | round) / 10) MB, \(.value.segments) segments cached, CPU \((.value.cpu * 10 | round) / 10)%"' <<<"$stats"
    previous=$(jq -c '.workers | map_values(.uploaded)' <<<"$stats")
  done
) &
monitor=$!
helpers+=($monitor)
screenshot=${DEMO_SCREENSHOT:-target/demo/monitor.png}
mkdir -p "$(dirname "$screenshot")"
echo "The monitor page is at $url/ (token $token); a screenshot of it is taken while they watch."
# A few seconds before the viewers are done, while they still play.
node tests/support/monitor.mjs --url "$url/" --token "$token" --screenshot "$screenshot" \
  --look "$((seconds > 10 ? seconds - 5 : seconds))" >"$work/monitor.json" 2>&1 &
looker=$!
helpers+=($looker)
node tests/support/viewers.mjs "${pages[@]}" --viewers "$viewers" --seconds "$seconds" >"$work/viewers.jsonl" &
driver=$!
helpers+=($driver)
tail -f --pid "$driver" "$work/viewers.jsonl" | jq --unbuffered -r 'select(.type == "tick") | .viewers | to_entries[] |
  "  viewer \(.key + 1) (\(.value.protocol)): played \(.value.played) s, \(.value.peers) peer(s), P2P \(.value.p2pBytes / 1e6 * 10 | round / 10) MB, HTTP \(.value.httpBytes / 1e6 * 10 | round / 10) MB, stalls \(.value.stalls)"'
wait "$driver"
kill "$monitor" 2>/dev/null || true
wait "$looker" && echo "monitor screenshot: $screenshot" || echo "no monitor screenshot: $(cat "$work/monitor.json")"

step "Prometheus metrics (GET /metrics, a few of them)"
curl -sS -H "Authorization: Bearer $token" "$url/metrics" |
  grep -E '^superpeer_(peers|uploaded_bytes_total|segments_served_total|worker_peers|worker_uploaded_bytes_total|worker_cpu_seconds_total)[ {]'

step "Summary"
# Viewers also trade segments among themselves: P2P counts bytes from any peer.
jq -r 'select(.type == "summary") | .viewers | to_entries[] |
  "viewer \(.key + 1) (\(.value.protocol // "pml")): played \((.value.playedSeconds * 10 | round) / 10) s, stalls \(.value.stalls), \((.value.p2pBytes + .value.httpBytes) / 1e5 | round / 10) MB of segments, \(.value.p2pBytes * 100 / ([.value.p2pBytes + .value.httpBytes, 1] | max) | round)% over P2P"' "$work/viewers.jsonl"
viewed=$(jq 'select(.type == "summary") | [.viewers[] | .p2pBytes + .httpBytes] | add' "$work/viewers.jsonl")
curl -sS -H "X-ACCESS-TOKEN: $token" "$url/stats" |
  jq -r --argjson viewed "$viewed" '[.workers[] | select(.state == "running")] |
    "superpeer: uploaded \(map(.uploaded) | add / 1e5 | round / 10) MB, \(map(.uploaded) | add * 100 / ([$viewed, 1] | max) | round)% of all the bytes the viewers loaded; fetched \(map(.downloaded) | add / 1e5 | round / 10) MB from the origin"'
curl -sS "$origin/hits.json" |
  jq -r '[to_entries[] | select(.key | endswith(".ts"))] | "origin: \(length) segments asked for \(map(.value) | add) times in all (each superpeer worker once; viewers only what played within 4 s)"'
