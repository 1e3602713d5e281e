#!/usr/bin/env bash
# Installs the system packages the interop tests and the demo run for real: Chromium
# (the viewers' browser), ffmpeg (which makes the HLS media), jq (the demo's JSON) and
# etcd (the fleet tests' store). Does nothing when all are present, so it is cheap to
# call before every run.
set -euo pipefail

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v ffmpeg >/dev/null 2>&1 || missing+=(ffmpeg)
# The demo reads the REST API's JSON with jq.
command -v jq >/dev/null 2>&1 || missing+=(jq)
# A fleet keeps its seed list in etcd; the tests run a real one.
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
  echo "superpeer's tests need ${missing[*]}; install them with your package manager" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "installing ${missing[*]} needs root or sudo" >&2; exit 1; }
  sudo=sudo
fi
echo "installing ${missing[*]} (apt-get)" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
