#!/usr/bin/env bash
# superpeer's parsers of untrusted input under AFL++, guided by coverage (tests/afl;
# targets in tests/fuzz_targets and guest/pml/tests/targets): each target for about $1
# executions (default a million), starting from its valid examples. Prints, per target, the
# inputs run, the paths AFL++ found and the crashes; fails on any crash, keeping the
# inputs that crashed. Installs cargo-afl (and builds AFL++) the first time.
set -euo pipefail
executions="${1:-1000000}"
root="$(cd "$(dirname "$0")/.." && pwd)"
command -v cargo-afl >/dev/null || cargo install cargo-afl --locked
# Builds AFL++ for this toolchain once; afterwards it only says it already has.
cargo afl config --build >/dev/null 2>&1 || true
cd "$root/tests/afl"
cargo afl build --release --locked
work="$root/target/afl"
rm -rf "$work"
mkdir -p "$work/out"
./target/release/superpeer-afl --seeds "$work/seeds"
crashed=0
for seeds in "$work"/seeds/*; do
    name="$(basename "$seeds")"
    AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
        cargo afl fuzz -i "$seeds" -o "$work/out/$name" -E "$executions" \
        -- ./target/release/superpeer-afl "$name" >"$work/$name.log" 2>&1 || {
        echo "$name: AFL++ did not run; see $work/$name.log" >&2
        exit 1
    }
    stats="$work/out/$name/default/fuzzer_stats"
    field() { awk -F' *: *' -v key="$1" '$1 == key { print $2 }' "$stats"; }
    crashes="$(find "$work/out/$name/default/crashes" -type f -name 'id:*' | wc -l)"
    echo "$name (AFL++, coverage-guided): $(field execs_done) inputs, $(field corpus_count) paths, $crashes crashes"
    if [ "$crashes" -gt 0 ]; then
        find "$work/out/$name/default/crashes" -type f -name 'id:*' -printf '  crashed on %p\n'
        crashed=1
    fi
done
exit "$crashed"
