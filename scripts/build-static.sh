#!/usr/bin/env bash
# Builds the static `wif` binary exactly as the Dockerfile does (release, x86_64-unknown-linux-musl,
# --locked) and prints its path. Installs the musl target and musl-gcc (ring's C code) when they
# are missing: `rustup target add` and Debian's musl-tools.
set -euo pipefail
cd "$(dirname "$0")/.."
target=x86_64-unknown-linux-musl

if ! rustup target list --installed | grep -qx "$target"; then
  rustup target add "$target" >&2
fi
if ! command -v musl-gcc >/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq --no-install-recommends musl-tools) >&2
  else
    echo "build-static: musl-gcc is missing: install musl-tools (Debian/Ubuntu) or musl (others)" >&2
    exit 1
  fi
fi

start=$(date +%s)
# The image's binary: without `wif emulator` (a demo/test tool; cargo feature `emulator`).
cargo build --locked --release --target "$target" -p wif --no-default-features >&2
bin="${CARGO_TARGET_DIR:-target}/$target/release/wif"
# Static: no dynamic section, no interpreter.
if file "$bin" 2>/dev/null | grep -q 'dynamically linked'; then
  echo "build-static: $bin is dynamically linked" >&2
  exit 1
fi
"$bin" version >&2
echo "build-static: $(du -h "$bin" | cut -f1) in $(( $(date +%s) - start ))s" >&2
echo "$bin"
