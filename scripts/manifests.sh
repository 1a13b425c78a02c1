#!/usr/bin/env bash
# Renders manifests/wif.yaml from charts/wif with its default values (Namespace, CRDs, then every
# object of the chart), or, with --check, fails when the checked-in file differs.
#
# The tenant and the controller's client id are placeholders: replace them before
# `kubectl apply -f manifests/wif.yaml`, or use Helm, which asks for them.
set -euo pipefail
cd "$(dirname "$0")/.."
helm="${HELM:-$(scripts/install-helm.sh)}"
namespace=wif-system
placeholder=00000000-0000-0000-0000-000000000000
controller_placeholder=11111111-1111-1111-1111-111111111111

render() {
  cat <<YAML
# wif, rendered from charts/wif with its default values by \`make manifests\` (do not edit; CI
# checks it). Installs into namespace $namespace with self-managed certificates.
#
#   sed -e 's/$placeholder/<tenant id>/' -e 's/$controller_placeholder/<controller client id>/' \\
#     manifests/wif.yaml | kubectl apply --server-side -f -
#
# Helm does the same and checks the values:
#   helm install wif charts/wif -n $namespace --create-namespace \\
#     --set azure.tenantId=<tenant id> --set controller.clientId=<controller client id>
---
apiVersion: v1
kind: Namespace
metadata:
  name: $namespace
  labels:
    app.kubernetes.io/part-of: wif
YAML
  # Rendered for Kubernetes 1.30 and later (the webhook's preStop sleep needs it).
  "$helm" template wif charts/wif --namespace "$namespace" --include-crds --kube-version 1.30.0 \
    --set "azure.tenantId=$placeholder" --set "controller.clientId=$controller_placeholder"
}

if [[ "${1:-}" == "--check" ]]; then
  tmp=$(mktemp)
  trap 'rm -f "$tmp"' EXIT
  render >"$tmp"
  if ! diff -u manifests/wif.yaml "$tmp"; then
    echo "manifests/wif.yaml is out of date with charts/wif: run \`make manifests\` and commit the result" >&2
    exit 1
  fi
  echo "manifests/wif.yaml matches charts/wif"
else
  mkdir -p manifests
  render >manifests/wif.yaml
  echo "wrote manifests/wif.yaml"
fi
