#!/usr/bin/env bash
# make demo: the whole chain on this machine, each step printed.
#   a real kube-apiserver (+ etcd) and node (kubelet, containerd) → wif webhook (self-managed
#   certificates) → a labelled pod, running as uid 1000 → the token the kubelet wrote into it
#   → wif emulator (a local Entra) → an Entra access token, obtained inside the pod.
# The node needs root and Debian's containerd, runc, CNI plugins and nftables (installed here
# when missing, as `make node-deps` does).
# Ctrl-C (or the end) stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bold() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/wif-demo.XXXXXX")
pids=()
cleanup() {
  local code=$?
  [[ ${#pids[@]} -gt 0 ]] && kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
  [[ $code -eq 0 ]] && bold "done: everything the demo started is stopped" || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

claims() { # the payload of a JWT, decoded (never the signature)
  python3 -c 'import sys,json,base64; p=sys.argv[1].split(".")[1]; print(json.dumps(json.loads(base64.urlsafe_b64decode(p+"="*(-len(p)%4)))))' "$1"
}

wait_for() { # file pattern seconds what
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  tail -20 "$1" >&2 || true
  die "$4 did not start within $3 s (log above)"
}
# Servers bind port 0 and log where they listen ("... listen=127.0.0.1:PORT admin=...");
# picking a free port here and handing it on would race with other processes.
listen_field() { # file message field -> host:port
  sed -n "/$2/s/.* $3=\([^ ]*\).*/\1/p" "$1" | head -1
}

bold "1/8 building wif, the test control plane and the node's images (the first run compiles everything: several minutes)"
cargo build -p wif 2>&1 | grep -E '^\s*(Compiling wif|Finished|error)' || true
WIF=${CARGO_TARGET_DIR:-$root/target}/debug/wif
[[ -x $WIF ]] || die "cargo build failed"
CP=$(e2e/controlplane/build.sh | tail -1)
AZ=${WIF_AZ:-$root/.cache/venv-az/bin/az}
[[ -x $AZ ]] || die "az (azure-cli) not found at $AZ: run make venv-az (or make demo, which does)"
scripts/node-deps.sh
images=$(scripts/images.sh 2>"$work/images.err" | tail -1) || { cat "$work/images.err" >&2; die "make images failed"; }
PY=${WIF_PYTHON:-$root/.cache/venv/bin/python}
[[ -x $PY ]] || die "Python venv not found at $PY: run make venv (or make demo, which does)"
venv=$(cd "$(dirname "$PY")/.." && pwd -P)
# The pod runs this machine's venv Python, bind-mounted read-only with what it links against:
# /usr, /lib, /lib64, and the base installation when it lives elsewhere (pyenv's, say).
py_prefix=$(cd "$(sed -n 's/^home = //p' "$venv/pyvenv.cfg")/.." && pwd -P)
py_mount='' py_volume=''
if [[ $py_prefix != /usr && $py_prefix != /usr/* ]]; then
  py_mount="- {name: python, mountPath: \"$py_prefix\", readOnly: true}"
  py_volume="- {name: python, hostPath: {path: \"$py_prefix\", type: Directory}}"
fi
note "wif: $WIF"
note "control plane: $CP"
note "images: $(cd "$images" && echo *.tar)"

bold "2/8 starting kube-apiserver + etcd and a node: kubelet, containerd, runc, a CNI bridge (built or packaged locally)"
"$CP" up --dir "$work/cp" --node --images "$images" --exit-on-stdin-eof=false >"$work/cp.out" 2>"$work/cp.err" &
pids+=($!)
wait_for "$work/cp.out" '^READY ' 120 "the control plane"
ready=$(sed -n 's/^READY //p' "$work/cp.out")
export KUBECONFIG=$(jq -r .kubeconfig <<<"$ready")
server=$(jq -r .server <<<"$ready")
issuer=$(jq -r .issuer <<<"$ready")
cp_ca=$(jq -r .ca <<<"$ready")
gateway=$(jq -r .gateway <<<"$ready")
note "API server $server, ServiceAccount issuer $issuer"
note "node $(jq -r .node <<<"$ready") Ready, pod network $(jq -r .podCIDR <<<"$ready"); pods reach this machine at $gateway"
note "its OIDC discovery, read anonymously as Entra reads it:"
curl -s --cacert "$cp_ca" "$server/.well-known/openid-configuration" | jq -c '{issuer, jwks_uri}' | sed 's/^/    /'

tenant=72f988bf-86f1-41af-91ab-2d7cd011db47
client=5b1f3c8e-2d4a-4c6b-9e7f-0a1b2c3d4e5f
ctl_client=9d8c7b6a-5f4e-4d3c-8b2a-1f0e9d8c7b6a
bold "3/8 starting wif emulator (a local Entra): the demo app, and the controller's own app trusting wif-system/wif-controller"
cat >"$work/entra.yaml" <<EOF
tenants:
  - id: $tenant
    applications:
      - displayName: demo-api
        appId: $client
      - displayName: wif-controller
        appId: $ctl_client
        federatedIdentityCredentials:
          - name: wif-controller
            issuer: "$issuer"
            subject: system:serviceaccount:wif-system:wif-controller
            audiences: [api://AzureADTokenExchange]
EOF
"$WIF" emulator --listen "$gateway:0" --state-dir "$work/entra" --config "$work/entra.yaml" \
  --trust-ca "$cp_ca" >"$work/entra.out" 2>"$work/entra.err" &
pids+=($!)
wait_for "$work/entra.out" '^EMULATOR READY ' 60 "the emulator"
entra=$(sed -n 's/^EMULATOR READY //p' "$work/entra.out")
entra_url=$(jq -r .url <<<"$entra")
entra_ca=$(jq -r .ca <<<"$entra")
note "Entra at $entra_url (on the pod network: pods reach it); app $client has no federated credential yet: the controller will create it"

bold "4/8 starting wif webhook (self-managed CA in a Secret, caBundle patched by the webhook itself)"
kubectl create namespace wif-system >/dev/null
# The configuration exists before the webhook starts, so the webhook publishes its caBundle at
# once; its URL gets the port once the webhook says where it listens.
kubectl apply -f - >/dev/null <<EOF
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: wif-webhook
webhooks:
  - name: mutation.wif.azure.workload.identity
    admissionReviewVersions: [v1]
    clientConfig:
      url: https://127.0.0.1:1/mutate-v1-pod
    rules:
      - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
    objectSelector:
      matchLabels: {azure.workload.identity/use: "true"}
    namespaceSelector:
      matchExpressions:
        - {key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system, wif-system]}
    failurePolicy: Fail
    sideEffects: None
    reinvocationPolicy: IfNeeded
    timeoutSeconds: 10
EOF
"$WIF" webhook --tenant-id "$tenant" --cloud "$entra_url/" --listen 127.0.0.1:0 \
  --admin-listen 127.0.0.1:0 --cert-mode self-managed --namespace wif-system \
  --webhook-config wif-webhook --cert-extra-hosts 127.0.0.1 --log-format text \
  >"$work/webhook.out" 2>"$work/webhook.err" &
pids+=($!)
wait_for "$work/webhook.err" 'webhook listening' 60 "wif webhook"
listen=$(listen_field "$work/webhook.err" 'webhook listening' listen)
admin=$(listen_field "$work/webhook.err" 'webhook listening' admin)
kubectl patch mutatingwebhookconfiguration wif-webhook --type json >/dev/null \
  -p "[{\"op\": \"replace\", \"path\": \"/webhooks/0/clientConfig/url\", \"value\": \"https://$listen/mutate-v1-pod\"}]"
for _ in $(seq 1 300); do
  curl -sf "http://$admin/readyz" >/dev/null && break
  sleep 0.1
done
curl -sf "http://$admin/readyz" >/dev/null || { tail -20 "$work/webhook.err"; die "webhook not ready"; }
note "ready; Secret $(kubectl -n wif-system get secret wif-webhook-tls -o jsonpath='{.metadata.name}') holds its CA,"
note "caBundle published: $(kubectl get mutatingwebhookconfiguration wif-webhook -o jsonpath='{.webhooks[0].clientConfig.caBundle}' | head -c 24)…"
sleep 1 # the API server's webhook cache picks the caBundle up

bold "5/8 wif controller (its own workload identity), the CRDs, a policy granting namespace demo the app, and a binding"
"$WIF" crd | kubectl apply -f - >/dev/null
kubectl create serviceaccount wif-controller -n wif-system >/dev/null
kubectl create token wif-controller -n wif-system --audience api://AzureADTokenExchange --duration 24h >"$work/ctl-token"
"$WIF" controller --tenant-id "$tenant" --client-id "$ctl_client" --token-file "$work/ctl-token" \
  --authority-host "$entra_url/" --graph-url "$entra_url/graph" --arm-url "$entra_url/arm" --trust-ca "$entra_ca" \
  --lease-namespace wif-system --admin-listen 127.0.0.1:0 --log-format text \
  >"$work/controller.out" 2>"$work/controller.err" &
pids+=($!)
kubectl create namespace demo >/dev/null
kubectl apply -f - <<EOF | sed 's/^/    /'
apiVersion: azure.workload.identity/v1alpha1
kind: FederatedIdentityPolicy
metadata:
  name: demo
spec:
  namespaceSelector:
    matchLabels: {kubernetes.io/metadata.name: demo}
  applications: ["$client"]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: api, namespace: demo}
---
apiVersion: azure.workload.identity/v1alpha1
kind: FederatedIdentityBinding
metadata: {name: api, namespace: demo}
spec:
  serviceAccountName: api
  identity:
    application: {clientId: "$client"}
EOF
kubectl wait -n demo federatedidentitybinding/api --for=condition=Ready --timeout=90s >/dev/null ||
  { tail -20 "$work/controller.err"; die "the binding did not become Ready"; }
kubectl get -n demo federatedidentitybinding api | sed 's/^/    /'
note "the credential the controller created in Entra:"
kubectl get -n demo federatedidentitybinding api -o json | jq -c '.status.credential | {name, issuer, subject, audiences}' | sed 's/^/    /'
note "the ServiceAccount it annotated: client-id $(kubectl get sa -n demo api -o jsonpath='{.metadata.annotations.azure\.workload\.identity/client-id}')"
note "the same credential as Azure's own CLI shows it: az, with the local Entra registered as a custom cloud,"
note "logged in as the controller's app with its ServiceAccount token (az ad app federated-credential list):"
(
  export AZURE_CONFIG_DIR=$work/az REQUESTS_CA_BUNDLE=$entra_ca AZURE_CORE_INSTANCE_DISCOVERY=false \
    AZURE_CORE_COLLECT_TELEMETRY=false AZURE_CORE_ONLY_SHOW_ERRORS=true AZURE_CORE_SURVEY_MESSAGE=false
  "$AZ" cloud register --name WifEmulator --endpoint-resource-manager "$entra_url/arm" >/dev/null
  "$AZ" cloud set --name WifEmulator >/dev/null
  "$AZ" login --service-principal --username "$ctl_client" --tenant "$tenant" \
    --federated-token "$(cat "$work/ctl-token")" --allow-no-subscriptions >/dev/null
  "$AZ" ad app federated-credential list --id "$client" --output table \
    --query '[].{Name:name, Issuer:issuer, Subject:subject, Audience:audiences[0]}'
) | sed 's/^/    /'

bold "6/8 a labelled pod using that ServiceAccount, running as uid 1000 with a read-only root filesystem"
note "what the webhook makes of examples/pod.yaml (kubectl apply --dry-run=server: mutated, not stored):"
kubectl apply -f examples/pod.yaml --dry-run=server -o json | jq '{
  volume: (.spec.volumes[] | select(.name == "azure-identity-token")),
  containers: [(.spec.initContainers + .spec.containers)[] | {name,
    env: [.env[]? | select(.name | startswith("AZURE_")) | "\(.name)=\(.value)"],
    mount: [.volumeMounts[] | select(.name == "azure-identity-token") | .mountPath]}]}' | sed 's/^/    /'
kubectl create configmap entra-ca -n demo --from-file=ca.crt="$entra_ca" >/dev/null
show='
import base64, json, os, stat
path = os.environ["AZURE_FEDERATED_TOKEN_FILE"]
st = os.stat(path)
p = open(path).read().split(".")[1]
c = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
print(json.dumps({"file": path, "mode": oct(stat.S_IMODE(st.st_mode)), "owner": st.st_uid, "read by uid": os.getuid(),
  "claims": {"iss": c["iss"], "sub": c["sub"], "aud": c["aud"], "exp": c["exp"], "pod": c["kubernetes.io"]["pod"]["name"]}}))'
hardened='{readOnlyRootFilesystem: true, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}'
kubectl apply -f - <<EOF | sed 's/^/    /'
apiVersion: v1
kind: Pod
metadata:
  name: api
  namespace: demo
  labels: {azure.workload.identity/use: "true"}
spec:
  serviceAccountName: api
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  securityContext: {runAsUser: 1000, runAsGroup: 1000, runAsNonRoot: true}
  containers:
    - name: show-token
      image: localhost/wif-e2e/test-client:1
      imagePullPolicy: Never
      command: ["$venv/bin/python", "-c", $(jq -Rs . <<<"$show")]
      securityContext: $hardened
      volumeMounts:
        - {name: usr, mountPath: /usr, readOnly: true}
        - {name: lib, mountPath: /lib, readOnly: true}
        - {name: lib64, mountPath: /lib64, readOnly: true}
        - {name: venv, mountPath: "$venv", readOnly: true}
        $py_mount
    - name: app
      image: localhost/wif-e2e/test-client:1
      imagePullPolicy: Never
      command: ["/wif", "token", "--scope", "https://management.azure.com/.default", "--output", "json"]
      env: [{name: SSL_CERT_FILE, value: /etc/entra-ca/ca.crt}]
      securityContext: $hardened
      volumeMounts: [{name: entra-ca, mountPath: /etc/entra-ca, readOnly: true}]
  volumes:
    - {name: usr, hostPath: {path: /usr, type: Directory}}
    - {name: lib, hostPath: {path: /lib, type: Directory}}
    - {name: lib64, hostPath: {path: /lib64, type: Directory}}
    - {name: venv, hostPath: {path: "$venv", type: Directory}}
    $py_volume
    - {name: entra-ca, configMap: {name: entra-ca}}
EOF
kubectl wait -n demo pod/api --for=jsonpath='{.status.phase}'=Succeeded --timeout=90s >/dev/null ||
  { kubectl describe pod -n demo api; tail -20 "$work/cp/node/kubelet.log"; die "the pod did not succeed"; }
kubectl get pod -n demo api -o wide | sed 's/^/    /'

bold "7/8 the token the kubelet wrote into the pod, as the container (uid 1000) sees it"
kubectl logs -n demo api -c show-token | jq . | sed 's/^/    /'

bold "8/8 exchanging it for an Entra access token inside the pod: wif token, with only what the webhook injected"
out=$(kubectl logs -n demo api -c app)
jq -c '{token_type, expires_on}' <<<"$out" | sed 's/^/    /'
note "access token claims:"
claims "$(jq -r .access_token <<<"$out")" | jq '{iss, aud, tid, appid, oid, exp}' | sed 's/^/    /'
kubectl delete pod -n demo api --wait=true >/dev/null
note "the whole chain ran with no stored secret."
