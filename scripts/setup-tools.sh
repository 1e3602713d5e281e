#!/usr/bin/env bash
# Installs the tools the tests run that come from crates.io: aquatic_ws, the WebTorrent
# tracker behind the large public trackers (tests/swarm.rs runs viewers against it). It
# is built once (about 10 minutes on two cores) into cargo's own bin directory, where the
# next run finds it; does nothing when the pinned version is there.
set -euo pipefail

version=0.9.0
bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if [ "$("$bin/aquatic_ws" -v 2>/dev/null)" = "$version" ]; then
  exit 0
fi
echo "building aquatic_ws $version (once; cargo install)" >&2
# Not --locked: its lock file pins a crate that no longer builds with this toolchain.
cargo install aquatic_ws --version "$version" --quiet
