#!/usr/bin/env bash
# make fuzz: runs the admission decoder + mutation fuzz target for $1 seconds (default 60).
# Needs a nightly toolchain (cargo-fuzz uses sanitizers); cargo-fuzz is installed from crates.io.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
tools=$PWD/.cache/tools
if [[ ! -x $tools/bin/cargo-fuzz ]]; then
  cargo install cargo-fuzz --locked --root "$tools"
fi
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
corpus=fuzz/corpus/admission
mkdir -p "$corpus"
cp crates/wif-webhook/tests/data/review-pod.json "$corpus/seed-review.json"
cd fuzz
PATH=$tools/bin:$PATH cargo +nightly fuzz run admission "../$corpus" -- \
  -max_total_time="$seconds" -max_len=65536 -timeout=10
