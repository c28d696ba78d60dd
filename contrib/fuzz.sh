#!/usr/bin/env bash
# Runs every fuzz target for a while (default 30 s each) over its corpus in fuzz/corpus/.
#
#   contrib/fuzz.sh [SECONDS]
#
# cargo-fuzz needs a nightly toolchain; this uses rustup's nightly when installed, else the
# stable toolchain with RUSTC_BOOTSTRAP=1. Crashes are saved under fuzz/artifacts/ and fail
# the run.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-30}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

log=$(mktemp)
# New inputs go to a scratch corpus; the seeds in fuzz/corpus/ stay as committed.
scratch=$(mktemp -d)
trap 'rm -rf "$log" "$scratch"' EXIT
for target in frames events sdp lanes; do
    echo "fuzz: $target for ${seconds}s"
    mkdir -p "$scratch/$target"
    if ! cargo "${toolchain[@]}" fuzz run --sanitizer none --release "$target" \
        "$scratch/$target" "fuzz/corpus/$target" \
        -- -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 80 "$log"
        echo "fuzz: $target failed (see fuzz/artifacts/$target/)" >&2
        exit 1
    fi
    grep -E '^(Done|#[0-9]+|stat::number_of_executed_units)' "$log" | tail -n 2
done
