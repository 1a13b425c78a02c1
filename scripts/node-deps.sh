#!/usr/bin/env bash
# Installs, when missing, the Debian packages `controlplane up --node` needs: containerd (1.6,
# with ctr and the runc shim), runc, the CNI plugins (bridge, host-local, loopback) and nftables
# (the pod network's one DNAT rule). Needs root and apt-get.
set -euo pipefail
need=()
for pkg in containerd runc containernetworking-plugins nftables; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if [[ ${#need[@]} -eq 0 ]]; then exit 0; fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "node-deps: install ${need[*]} (Debian/Ubuntu: apt-get install ${need[*]}) as root" >&2
  exit 1
fi
start=$(date +%s)
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
echo "node-deps: installed ${need[*]} in $(( $(date +%s) - start ))s" >&2
