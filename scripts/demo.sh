#!/usr/bin/env bash
# make demo: shows what the webhook does to a labelled pod.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "building wif (first run compiles dependencies; this takes a few minutes)"
cargo build -p wif
WIF=${CARGO_TARGET_DIR:-target}/debug/wif

step "the ServiceAccount (examples/serviceaccount.yaml)"
cat examples/serviceaccount.yaml
step "the labelled pod (examples/pod.yaml)"
cat examples/pod.yaml
step "what the webhook injects (wif mutate -o patch)"
"$WIF" mutate --pod examples/pod.yaml --service-account examples/serviceaccount.yaml \
  --tenant-id 72f988bf-0000-4000-8000-000000000000 -o patch
