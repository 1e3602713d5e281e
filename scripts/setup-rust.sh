#!/usr/bin/env bash
# Makes the pinned toolchain (rust-toolchain.toml) and the wasm32-wasip2 target
# available. Idempotent and quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

pinned=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
if ! rustup run "$pinned" rustc --version >/dev/null 2>&1; then
  # A machine whose stable toolchain is the pinned release can use it as is.
  if rustup run stable rustc --version 2>/dev/null | grep -q "^rustc $pinned "; then
    rustup toolchain link "$pinned" "$(rustup run stable rustc --print sysroot)"
  else
    rustup toolchain install "$pinned" --profile minimal --component rustfmt,clippy
  fi
fi

libdir=$(rustup run "$pinned" rustc --print target-libdir --target wasm32-wasip2 2>/dev/null || true)
if [ -z "$libdir" ] || [ ! -d "$libdir" ]; then
  rustup target add --toolchain "$pinned" wasm32-wasip2
fi
