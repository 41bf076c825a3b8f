#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) each, two at a time, from
# the committed seeds; findings land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
run() {
    mkdir -p "corpus/$1"
    cargo +nightly fuzz run "$1" "corpus/$1" "seeds/$1" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1
}
cargo +nightly fuzz build
run front_end & a=$!
run safetensors & b=$!
wait $a || status=1; wait $b || status=1
run npy & c=$!
run onnx & d=$!
wait $c || status=1; wait $d || status=1
exit ${status:-0}
