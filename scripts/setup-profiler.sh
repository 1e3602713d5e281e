#!/usr/bin/env bash
# Installs what `just bench` profiles the worker with: perf (Debian's linux-perf) and
# inferno (from crates.io: turns perf's samples into a flame graph SVG). Does nothing
# when both are there.
set -euo pipefail

inferno_version=0.12.8
bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if ! command -v perf >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq linux-perf >/dev/null
fi
if ! "$bin/inferno-flamegraph" --version 2>/dev/null | grep -q " $inferno_version\$"; then
  echo "building inferno $inferno_version (once; cargo install)" >&2
  cargo install inferno --version "$inferno_version" --locked --quiet
fi
