#!/usr/bin/env bash
# Proves the control plane itself, with kubectl and curl only:
#   - TokenRequest for api://AzureADTokenExchange; its "iss" equals the OIDC discovery issuer;
#   - discovery and JWKS are readable without credentials;
#   - ServiceAccount admission is on (a pod gets its kube-api-access projected volume);
#   - with --kcm: a new namespace gets its "default" ServiceAccount and kube-root-ca.crt;
#   - shutdown by stdin EOF and by SIGTERM exits 0 and leaves no process behind;
#   - a taken port fails fast, non-zero, with the log tail.
# Usage: e2e/controlplane/smoke.sh   (E2E_CONTROLPLANE_BIN=path skips build.sh)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="${E2E_CONTROLPLANE_BIN:-$("$here/build.sh" | tail -n 1)}"
work="$(mktemp -d)"
pid=""
cleanup() {
	[[ -n "$pid" ]] && kill "$pid" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

fail() {
	echo "SMOKE FAIL: $*" >&2
	for f in "$work"/*/stderr "$work"/*/apiserver.log; do
		[[ -f "$f" ]] && { echo "--- $f" >&2; tail -n 20 "$f" >&2; }
	done
	exit 1
}
ok() { echo "ok: $*" >&2; }

# start NAME [up flags...]: starts "up" with stdin on a FIFO held open on fd 3 (closing
# fd 3 is the stdin-EOF shutdown), waits for READY and sets pid, dir and the JSON fields.
start() {
	local name="$1"
	shift
	dir="$work/$name"
	mkdir -p "$dir"
	mkfifo "$dir/stdin"
	local t0=$SECONDS
	"$bin" up --dir "$dir" "$@" <"$dir/stdin" >"$dir/stdout" 2>"$dir/stderr" &
	pid=$!
	exec 3>"$dir/stdin"
	for _ in $(seq 1 1200); do
		grep -q '^READY ' "$dir/stdout" && break
		kill -0 "$pid" 2>/dev/null || fail "$name: exited before READY"
		sleep 0.1
	done
	ready="$(grep '^READY ' "$dir/stdout")" || fail "$name: no READY line"
	json="${ready#READY }"
	kubeconfig="$(jq -r .kubeconfig <<<"$json")"
	server="$(jq -r .server <<<"$json")"
	issuer="$(jq -r .issuer <<<"$json")"
	ca="$(jq -r .ca <<<"$json")"
	[[ "$(jq -r .dir <<<"$json")" == "$dir" ]] || fail "$name: dir in READY line"
	[[ "$(wc -l <"$dir/stdout")" == 1 ]] || fail "$name: stdout has more than the READY line"
	ok "$name: READY in $((SECONDS - t0)) s: $ready"
}

# stopped NAME: waits for "up" to exit 0 and checks that no process mentions its dir.
stopped() {
	local rc=0
	wait "$pid" || rc=$?
	pid=""
	[[ $rc == 0 ]] || fail "$1: exit code $rc"
	sleep 0.5
	if pgrep -af -- "$dir" >&2; then fail "$1: processes left behind"; fi
	ok "$1: exited 0, nothing left behind"
}

k() { kubectl --kubeconfig "$kubeconfig" "$@"; }

b64url() { tr '_-' '/+' | base64 -d 2>/dev/null || true; }
claims() { # JWT payload; base64 -d needs padding, which JWTs omit
	local p
	p="$(cut -d. -f2 <<<"$1")"
	while ((${#p} % 4)); do p="$p="; done
	b64url <<<"$p"
}

# 1. Tokens and discovery, shut down by stdin EOF.
start plain
k create namespace smoke >/dev/null
k -n smoke create serviceaccount wif >/dev/null
token="$(k -n smoke create token wif --audience api://AzureADTokenExchange --duration 3600s)"
disco="$(curl -fsS --cacert "$ca" "$server/.well-known/openid-configuration")" || fail "anonymous discovery"
jwks="$(curl -fsS --cacert "$ca" "$server/openid/v1/jwks")" || fail "anonymous JWKS"
[[ "$(jq -r .issuer <<<"$disco")" == "$issuer" ]] || fail "discovery issuer $(jq -r .issuer <<<"$disco") != $issuer"
[[ "$(jq -r .jwks_uri <<<"$disco")" == "$server/openid/v1/jwks" ]] || fail "jwks_uri: $disco"
[[ "$(jq -r '.keys | length' <<<"$jwks")" -ge 1 ]] || fail "JWKS has no keys: $jwks"
c="$(claims "$token")"
[[ "$(jq -r .iss <<<"$c")" == "$issuer" ]] || fail "token iss: $c"
jq -e '.aud | index("api://AzureADTokenExchange")' <<<"$c" >/dev/null || fail "token aud: $c"
[[ "$(jq -r .sub <<<"$c")" == "system:serviceaccount:smoke:wif" ]] || fail "token sub: $c"
ok "token iss=$(jq -r .iss <<<"$c") aud=$(jq -c .aud <<<"$c") = discovery issuer; JWKS alg $(jq -r '.keys[0].alg' <<<"$jwks")"
k -n smoke run pod --image=example.invalid/x --restart=Never --overrides='{"spec":{"serviceAccountName":"wif"}}' >/dev/null
k -n smoke get pod pod -o json | jq -e '.spec.volumes[] | select(.name | startswith("kube-api-access-"))' >/dev/null ||
	fail "ServiceAccount admission did not add the kube-api-access volume"
ok "ServiceAccount admission is on"
exec 3>&- # stdin EOF
stopped "stdin EOF"

# 2. With the controller manager, shut down by SIGTERM.
start kcm --kcm
k create namespace smoke2 >/dev/null
for _ in $(seq 1 100); do
	k -n smoke2 get serviceaccount default >/dev/null 2>&1 && k -n smoke2 get configmap kube-root-ca.crt >/dev/null 2>&1 && break
	sleep 0.1
done
k -n smoke2 get serviceaccount default >/dev/null || fail "KCM: no default ServiceAccount"
k -n smoke2 get configmap kube-root-ca.crt >/dev/null || fail "KCM: no kube-root-ca.crt"
k delete namespace smoke2 --timeout=30s >/dev/null || fail "KCM: namespace deletion did not finish"
ok "KCM: default ServiceAccount, kube-root-ca.crt, namespace deletion"
kill -TERM "$pid"
stopped "SIGTERM"
exec 3>&-

# 3. A taken API server port fails fast with the log tail.
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 -c 'import socket,sys,time; s=socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(120)' "$port" &
blocker=$!
sleep 0.5
dir="$work/taken"
mkdir -p "$dir"
t0=$SECONDS
rc=0
"$bin" up --dir "$dir" --port "$port" --exit-on-stdin-eof=false </dev/null >"$dir/stdout" 2>"$dir/stderr" || rc=$?
kill "$blocker" 2>/dev/null || true
[[ $rc != 0 ]] || fail "taken port: exit 0"
grep -q 'last 40 lines of .*apiserver.log' "$dir/stderr" || fail "taken port: no log tail"
grep -q 'address already in use' "$dir/stderr" || fail "taken port: tail does not show the cause"
ok "taken port: exit $rc after $((SECONDS - t0)) s with the apiserver.log tail"

echo "SMOKE OK" >&2
