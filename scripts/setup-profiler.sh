#!/usr/bin/env bash
# Installs what `just bench` profiles the worker with: perf (Debian's linux-perf) and
# inferno (from crates.io: turns perf's samples into a flame graph SVG). Does nothing
# when both are there.
set -euo pipefail

inferno_version=0.12.8
if ! command -v perf >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq linux-perf >/dev/null
fi
# inferno's commands print no version; cargo's list of what it installed does.
if ! cargo install --list | grep -qx "inferno v$inferno_version:"; then
  echo "building inferno $inferno_version (once; cargo install)" >&2
  cargo install inferno --version "$inferno_version" --locked --quiet
fi
