#!/usr/bin/env bash
# Sets up a fresh machine and runs every check CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# The build and tests take about 8 GB of disk: say what there is, so a
# full disk reads as that and not as a failed compile.
df -h . | awk 'NR == 2 { print "test: " $4 " of disk free" }'
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --locked
