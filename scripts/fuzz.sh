#!/usr/bin/env bash
# make fuzz: runs every fuzz target for $1 seconds each (default 60): the admission decoder +
# mutation, the emulator's client-assertion checks, and the emulator's router (token form, Graph
# and ARM JSON bodies). Needs a nightly toolchain (cargo-fuzz uses sanitizers); cargo-fuzz is
# installed from crates.io when missing. FUZZ_TARGETS="a b" runs only those.
# No sanitizer by default (FUZZ_SANITIZER=address to add one): wif forbids `unsafe`, so
# AddressSanitizer finds nothing a panic would not, and costs 5-8x the executions (admission:
# about 1,600/s with ASan, 12,000/s without, on this 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
tools=$PWD/.cache/tools
export PATH=$tools/bin:$PATH
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --root "$tools"
fi
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
seed() { mkdir -p "fuzz/corpus/$1"; cp "$2" "fuzz/corpus/$1/seed-$(basename "$2")"; }
seed admission crates/wif-webhook/tests/data/review-pod.json
mkdir -p fuzz/corpus/assertion fuzz/corpus/emulator_requests
# A well-formed assertion (RS256, iss/sub/aud/iat/exp) and one request per service.
printf '%s' 'eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJpIiwic3ViIjoicyIsImF1ZCI6ImEiLCJpYXQiOjEwMCwiZXhwIjoyMDB9.c2ln' \
  > fuzz/corpus/assertion/seed-jwt
printf '\x00\x01\nclient_id=11111111-2222-3333-4444-555555555555&grant_type=client_credentials&scope=https%%3A%%2F%%2Fgraph.microsoft.com%%2F.default&client_assertion_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Aclient-assertion-type%%3Ajwt-bearer&client_assertion=a.b.c' \
  > fuzz/corpus/emulator_requests/seed-token
printf '\x01\x01v1.0/applications\n{"displayName":"x"}' > fuzz/corpus/emulator_requests/seed-graph
printf '\x02\x03subscriptions/00000000-0000-0000-0000-00000000000a/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id/federatedIdentityCredentials/c?api-version=2023-01-31\n{"properties":{"issuer":"https://i","subject":"s","audiences":["api://AzureADTokenExchange"]}}' \
  > fuzz/corpus/emulator_requests/seed-arm
cd fuzz
for target in ${FUZZ_TARGETS:-admission assertion emulator_requests}; do
  echo "fuzz: $target for ${seconds}s"
  cargo +nightly fuzz run -s "${FUZZ_SANITIZER:-none}" "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -max_len=65536 -timeout=10 -print_final_stats=1
done
