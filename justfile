# superpeer's entry points. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

guest_target_dir := "target/guest"

# Run the whole test suite (the README's test command; CI runs it too).
default: test

# Install what the other recipes need: the pinned toolchain and the wasm32-wasip2 target.
setup:
    scripts/setup-rust.sh

# Build the policy components (also done by the host's build script).
guests: setup
    cargo build --release --locked --workspace --target wasm32-wasip2 --manifest-path guest/Cargo.toml --target-dir {{guest_target_dir}}

# Formatting and clippy, for the host and the guests; warnings are errors.
lint: setup
    cargo fmt --all --check
    cargo fmt --all --check --manifest-path guest/Cargo.toml
    cargo clippy --workspace --all-targets --locked -- -D warnings
    cargo clippy --workspace --all-targets --exclude superpeer-guest-0-1-0 --exclude superpeer-segments-0-1-0 --exclude superpeer-test-pml-0-1-0 --locked --target wasm32-wasip2 --manifest-path guest/Cargo.toml --target-dir {{guest_target_dir}} -- -D warnings
    # The 0.1.0 builds of shared sources: their tests are those sources' own, run
    # against the newest world.
    cargo clippy -p superpeer-guest-0-1-0 -p superpeer-segments-0-1-0 -p superpeer-test-pml-0-1-0 --lib --locked --target wasm32-wasip2 --manifest-path guest/Cargo.toml --target-dir {{guest_target_dir}} -- -D warnings

# The third-party parts tests run against, from npm: bittorrent-tracker, hls.js,
# p2p-media-loader and playwright-core. Reinstalled only when the lock file changed.
node-deps:
    cmp -s tests/support/package-lock.json tests/support/node_modules/.installed-lock.json || { npm ci --ignore-scripts --no-audit --no-fund --prefix tests/support && cp tests/support/package-lock.json tests/support/node_modules/.installed-lock.json; }

# The system packages the interop tests and the demo run: Chromium and ffmpeg (apt).
system-deps:
    scripts/setup-system.sh

# Tools from crates.io the tests run: aquatic_ws (a real WebTorrent tracker), built once
# into cargo's bin directory.
tools:
    scripts/setup-tools.sh

# Lint, then every test: host unit and integration tests, guest logic natively.
test: lint node-deps system-deps tools
    cargo test --workspace --locked
    cargo test --locked -p superpeer-hls -p superpeer-segments -p superpeer-policy-pml -p superpeer-policy-swarmcloud -p superpeer-guest --manifest-path guest/Cargo.toml --target-dir {{guest_target_dir}}

# The parsers: peer wire, chunks, tracker JSON, playlists, URLs, datagrams, master/worker
# frames, .env, seed bodies, channel ids. `just test` runs a few thousand inputs each.
# Every parser of untrusted input on a million generated inputs (or as told), then as
# many under AFL++, guided by coverage; prints each one's count or the crash.
fuzz inputs="1000000": setup
    SUPERPEER_FUZZ_INPUTS={{inputs}} cargo test --release --locked -p superpeer --test fuzz -- --nocapture --test-threads 1
    SUPERPEER_FUZZ_INPUTS={{inputs}} cargo test --locked -p superpeer-policy-pml --manifest-path guest/Cargo.toml --target-dir {{guest_target_dir}} --test fuzz -- --nocapture --test-threads 1
    scripts/fuzz-afl.sh {{inputs}}

# Start superpeer for real on this machine and show it at work.
demo: setup node-deps system-deps
    scripts/demo.sh

# Three superpeer masters and an etcd on this machine, one fleet: channels spread over
# the nodes, a node killed and its channels taken over, the node back.
demo-fleet: setup node-deps system-deps
    scripts/demo-fleet.sh

# Benchmarks; prints tables: the policy runtime, then one worker under a rising number
# of simulated viewers, side by side with a Chromium seeder, with the goals met or
# missed (written to results/: load.md, load.json, load.png, and worker-flame.svg, a
# perf profile of the worker at the most viewers).
bench: setup node-deps system-deps
    scripts/setup-profiler.sh
    cargo bench --locked -p superpeer --bench policy
    cargo build --release --locked -p superpeer-load
    SUPERPEER_LOAD=target/release/superpeer-load cargo bench --locked -p superpeer --bench load

# Build the release binary.
build: setup
    cargo build --release --locked -p superpeer
