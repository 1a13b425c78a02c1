#!/usr/bin/env bash
# Builds the e2e control plane binary, or finds it already built, and prints its path as
# the LAST line on stdout (progress goes to stderr).
#
# The binary lives at $REPO/.cache/e2e-cp/<hash>/controlplane, where <hash> is the
# sha256 of the contents of go.mod, go.sum, *.go (in C-locale name order) and this
# script (it holds the build flags) concatenated, so an edit to any of them makes a new
# binary and an unchanged tree costs no build. Callers should run this script rather
# than recompute the hash.
#
# Environment (all optional):
#   GOCACHE     default $REPO/.cache/go/build  (~3 GiB after a build)
#   GOMODCACHE  default $REPO/.cache/go/mod    (~0.8 GiB)
#   E2E_CP_CACHE  default $REPO/.cache/e2e-cp  (binaries; the newest 3 are kept)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$here"

export GOTOOLCHAIN=local # Go 1.26.8 from the machine; never download a toolchain
export CGO_ENABLED=0
export GOCACHE="${GOCACHE:-$repo/.cache/go/build}"
export GOMODCACHE="${GOMODCACHE:-$repo/.cache/go/mod}"
out_root="${E2E_CP_CACHE:-$repo/.cache/e2e-cp}"

# shellcheck disable=SC2046 # file names here never contain spaces
hash="$(export LC_ALL=C; cat go.mod go.sum $(ls -- *.go | sort) build.sh | sha256sum | cut -d' ' -f1)"
bin="$out_root/$hash/controlplane"

if [[ -x "$bin" ]]; then
	echo "e2e controlplane: cached $bin" >&2
	echo "$bin"
	exit 0
fi

mkdir -p "$out_root"
# Serialize builds: two concurrent cold builds on a small machine take twice as long
# and need twice the memory. The loser of the race then finds the binary built.
exec 9>"$out_root/.lock"
if ! flock -n 9; then
	echo "e2e controlplane: waiting for another build (lock $out_root/.lock)" >&2
	flock 9
fi
if [[ -x "$bin" ]]; then
	echo "$bin"
	exit 0
fi

echo "e2e controlplane: building $bin (cold: ~10+ min on 2 cores; GOCACHE=$GOCACHE)" >&2
mkdir -p "$out_root/$hash"
tmp="$(mktemp "$out_root/$hash/.controlplane.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
# Stamp the Kubernetes version as k/k's release build does (hack/lib/version.sh):
# unstamped, /version says v0.0.0-master, which trips version checks such as a Helm
# chart's kubeVersion.
kver="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v[0-9]/ { print $2; exit }' go.mod)"
[[ "$kver" =~ ^v([0-9]+)\.([0-9]+)\. ]] || {
	echo "e2e controlplane: cannot read the k8s.io/kubernetes version from go.mod" >&2
	exit 1
}
v=k8s.io/component-base/version
ldflags="-s -w -X $v.gitVersion=$kver -X $v.gitMajor=${BASH_REMATCH[1]} -X $v.gitMinor=${BASH_REMATCH[2]}"
ldflags+=" -X $v.gitTreeState=clean -X k8s.io/client-go/pkg/version.gitVersion=$kver"
start=$SECONDS
# -buildvcs=false: the binary must not depend on (or fail on) the git state.
go build -trimpath -buildvcs=false -ldflags="$ldflags" -o "$tmp" . >&2
mv -f "$tmp" "$bin"
trap - EXIT
echo "e2e controlplane: built in $((SECONDS - start)) s" >&2

# Keep the newest 3 binaries (each is ~100+ MB); older hashes are stale edits.
# shellcheck disable=SC2012
ls -1td -- "$out_root"/*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf --

echo "$bin"
