#!/usr/bin/env bash
# Writes a copy of the workspace's manifests with stub sources into DEST: enough for
# `cargo build` to compile every dependency, and nothing that changes when only our code does.
# The Dockerfile builds this skeleton first, so its dependency layer stays cached until a
# Cargo.toml or Cargo.lock changes (the trick cargo-chef automates, without installing it).
#
# Usage: scripts/cargo-skeleton.sh DEST   (run from the workspace root)
set -euo pipefail
dest="${1:?usage: cargo-skeleton.sh DEST}"
mkdir -p "$dest"
cp Cargo.toml Cargo.lock "$dest/"
[[ -f rust-toolchain.toml ]] && cp rust-toolchain.toml "$dest/"

stub() { # stub FILE CONTENT
  mkdir -p "$dest/$(dirname "$1")"
  printf '%s\n' "$2" >"$dest/$1"
}

# Every package of the workspace (members are globs in Cargo.toml; a Cargo.toml next to src/
# or under e2e/ is one), excluding build output and caches.
find . -name Cargo.toml -not -path './Cargo.toml' \
  -not -path './target/*' -not -path './.cache/*' -not -path './fuzz/*' -not -path '*/node_modules/*' -print |
  sort | while read -r manifest; do
    dir="${manifest%/Cargo.toml}"
    dir="${dir#./}"
    mkdir -p "$dest/$dir"
    cp "$manifest" "$dest/$dir/Cargo.toml"
    if [[ -f "$dir/build.rs" ]]; then cp "$dir/build.rs" "$dest/$dir/build.rs"; fi
    # Target roots cargo would find or that the manifest names: libraries get an empty file,
    # everything else an empty main.
    if [[ -f "$dir/src/lib.rs" ]]; then stub "$dir/src/lib.rs" ""; fi
    for f in "$dir"/src/main.rs "$dir"/src/bin/*.rs "$dir"/src/bin/*/main.rs \
      "$dir"/benches/*.rs "$dir"/examples/*.rs "$dir"/tests/*.rs "$dir"/tests/*/main.rs; do
      if [[ -f "$f" ]]; then stub "$f" "fn main() {}"; fi
    done
  done
