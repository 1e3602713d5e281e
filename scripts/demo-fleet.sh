#!/usr/bin/env bash
# The fleet demo: a single-node etcd and three superpeer masters on this machine, one
# fleet. Six channels of an ffmpeg-made VOD are seeded through one node and spread over
# the three; one master is killed with kill -9 and the others take its channels once
# its lease expires; it comes back and takes them back. It prints the fleet as any node
# sees it (GET /fleet) at each step, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --locked -p superpeer
bin=target/debug/superpeer
lease=${DEMO_LEASE_SECONDS:-4}

work=$(mktemp -d)
helpers=()
declare -A servers=()
etcd_pid=""
cleanup() {
  for pid in "${servers[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null || true; done
  [ -z "$etcd_pid" ] || kill "$etcd_pid" 2>/dev/null || true
  for pid in "${helpers[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# shellcheck source=scripts/helpers.sh
source scripts/helpers.sh
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

# etcd cannot say which port it got: a free one is found by binding port 0.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
client=$(free_port)
peer=$(free_port)
etcd_url="http://127.0.0.1:$client"
step "A single-node etcd at $etcd_url"
etcd --name demo --data-dir "$work/etcd" \
  --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "demo=http://127.0.0.1:$peer" >"$work/etcd.log" 2>&1 &
etcd_pid=$!
for _ in $(seq 1 600); do
  curl -sS "$etcd_url/health" 2>/dev/null | grep -q '"health":"true"' && break
  sleep 0.1
done
curl -sS "$etcd_url/health"; echo

step "An HLS origin with ffmpeg encoding a VOD"
start_helper hls-origin.mjs --dir "$work/media" --vod
manifest="http://127.0.0.1:$port/vod/master.m3u8"
echo "stream $manifest"

token=demo-$RANDOM$RANDOM
declare -A urls=()
start_node() {
  local name=$1 dir="$work/$1"
  mkdir -p "$dir"
  printf 'etcdEndpoints=%s\nnodeName=%s\nfleetLeaseSeconds=%s\nmaxWorkers=4\noriginAllow=127.0.0.1\n' \
    "$etcd_url" "$name" "$lease" >"$dir/.env"
  "$bin" serve --port 0 --bind 127.0.0.1 --data-dir "$dir/data" --env-file "$dir/.env" \
    --access-token "$token" >"$dir/log" 2>&1 &
  servers[$name]=$!
  wait_listening "${servers[$name]}" "$dir/log"
  urls[$name]=$url
}

fleet() { curl -sS -H "X-ACCESS-TOKEN: $token" "${urls[$1]}/fleet"; }
# The fleet as node $1 sees it: each node, what it runs and how many channels it has.
show() {
  fleet "$1" | jq -r '"etcd: \(.etcd); \(.seeds) seeds; as \(.node) sees it:",
    (.nodes[] | "  \(.name) at \(.address): capacity \(.capacity), runs \(.running | length) channel(s) \(.running | map(sub("^fleet-demo-"; "#")) | join(" "))")'
}
# Waits until node $1 sees every one of the $2 channels running exactly once.
settled() {
  for _ in $(seq 1 600); do
    fleet "$1" | jq -e --argjson n "$2" '[.nodes[].running[]] | (length == $n) and (unique | length == $n)' >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "the fleet did not settle" >&2
  return 1
}

step "Three superpeer masters, one fleet (lease $lease s)"
for name in node-1 node-2 node-3; do
  start_node "$name"
  echo "$name at ${urls[$name]}"
done
for _ in $(seq 1 600); do
  [ "$(fleet node-1 | jq '.nodes | length')" = 3 ] && break
  sleep 0.1
done
show node-1

step "Six channels seeded through node-1 only (POST /seed, answered once etcd committed it)"
list=$(for n in 1 2 3 4 5 6; do
  printf '{"channel": "%s", "url": "%s", "live": false, "keepAlive": true}\n' \
    "$(printf 'fleet-demo-%s' "$n" | base64)" "$manifest"
done | jq -s '{list: .}')
curl -sS -H "X-ACCESS-TOKEN: $token" --data "$list" "${urls[node-1]}/seed"; echo
settled node-1 6
show node-3

victim=node-2
step "kill -9 of $victim's master: its lease expires after $lease s and the others take its channels"
before=$(fleet node-1 | jq -c '[.nodes[] | {(.name): .running}] | add')
kill -9 "${servers[$victim]}"
wait "${servers[$victim]}" 2>/dev/null || true
unset "servers[$victim]"
started=$(date +%s.%N)
for _ in $(seq 1 600); do
  fleet node-1 | jq -e '[.nodes[] | select(.name == "node-2")] | length == 0' >/dev/null && break
  sleep 0.1
done
settled node-1 6
awk -v from="$started" -v to="$(date +%s.%N)" 'BEGIN { printf "taken over %.1f s after the kill\n", to - from }'
show node-1

step "$victim back: it takes back what it had, nothing else moves"
start_node "$victim"
for _ in $(seq 1 600); do
  after=$(fleet node-1 | jq -c '[.nodes[] | {(.name): .running}] | add')
  [ "$after" = "$before" ] && break
  sleep 0.2
done
show "$victim"
if [ "$after" = "$before" ]; then echo "the same placement as before the kill"; else echo "placement differs: $before -> $after"; fi

step "The fleet on any node's monitor page: ${urls[node-1]}/ (token $token)"
echo "Stopping everything."
