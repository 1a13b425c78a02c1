#!/usr/bin/env bash
# Builds `helm` from its Go module at a pinned version into .cache/bin (once; later runs reuse
# it) and prints its path. Used by `make helm`, `make manifests` and the e2e Helm tests.
#
# Env: HELM_VERSION (default below), CACHE (default <repo>/.cache).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
version="${HELM_VERSION:-v3.19.5}"
cache="${CACHE:-$root/.cache}"
bin_dir="$cache/bin/helm-$version"
helm="$bin_dir/helm"

if [[ -x "$helm" ]] && "$helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$version"; then
  echo "$helm"
  exit 0
fi

command -v go >/dev/null || { echo "install-helm: go is required to build helm $version" >&2; exit 1; }
mkdir -p "$bin_dir"
export GOBIN="$bin_dir" GOCACHE="${GOCACHE:-$cache/go/build}" GOMODCACHE="${GOMODCACHE:-$cache/go/mod}"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
# Serialise concurrent callers (parallel test processes) on one lock.
exec 9>"$cache/bin/.helm-$version.lock"
flock 9
if [[ ! -x "$helm" ]]; then
  start=$(date +%s)
  echo "install-helm: building helm $version from helm.sh/helm/v3 (cached after the first time)" >&2
  go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" \
    "helm.sh/helm/v3/cmd/helm@$version" >&2
  echo "install-helm: built in $(( $(date +%s) - start ))s" >&2
fi
echo "$helm"
