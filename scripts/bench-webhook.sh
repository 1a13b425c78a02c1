#!/usr/bin/env bash
# make bench (webhook part): the release webhook under HTTPS keep-alive load from oha, against a
# real API server holding 10,000 ServiceAccounts, and — in the same run, for the ratio — a bare
# axum+rustls server on the same transport that reads each body and answers with the webhook's
# own answer to the benchmark pod (same bytes both ways, no work), plus the same bare server
# also reading each body through serde_json (the floor of any webhook that parses the review).
# The review is sent compact, as the API server sends it. Maximum-throughput runs are
# interleaved (bare, scan, webhook) BENCH_ROUNDS times and the median is reported: the machine
# is shared with the load generator and noisy, and interleaving spreads drift over all three.
# Writes bench/results/webhook.json and prints a table. Traffic goes to 127.0.0.1 only, and
# every load is bounded in time.
#
# The container image ships the static musl build (scripts/build-static.sh), whose allocator is
# musl's own, not glibc's: that build is measured too, as a second webhook in the same rounds
# (BENCH_STATIC=0 skips it, e.g. where the musl target cannot be installed).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}
tools=$root/.cache/tools
duration=${BENCH_SECONDS:-10}
accounts=${BENCH_SERVICE_ACCOUNTS:-10000}
conns=${BENCH_CONNECTIONS:-32}
rounds=${BENCH_ROUNDS:-3}
static=${BENCH_STATIC:-1}

log() { printf '==> %s\n' "$*" >&2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/wif-bench.XXXXXX")
pids=()
cleanup() { [[ ${#pids[@]} -gt 0 ]] && kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

if [[ ! -x $tools/bin/oha ]]; then
  log "installing oha (HTTP load generator) from crates.io into .cache/tools"
  cargo install oha --locked --root "$tools" >&2
fi
OHA=$tools/bin/oha
log "building release binaries"
cargo build --release -p wif >&2
cargo build --release -p wif-webhook --example bench_tls >&2
WIF=$target/release/wif
BENCH_TLS=$target/release/examples/bench_tls
CP=$(e2e/controlplane/build.sh | tail -1)
if [[ $static == 1 ]]; then
  log "building the static musl binary (as the Dockerfile does)"
  WIF_STATIC=$(scripts/build-static.sh | tail -1)
fi
"$BENCH_TLS" certs "$work/certs"

# Server and load generator run on different CPUs (taskset): on a small machine they would
# otherwise take turns on the same core, and the figure would be the scheduler's.
server_cpu=${BENCH_SERVER_CPU:-0}
client_cpu=${BENCH_CLIENT_CPU:-1}
log "starting the control plane (on CPU $client_cpu, away from the servers measured)"
# The API server only feeds the webhook's ServiceAccount cache here; on the servers' CPU its
# housekeeping (and etcd's) would preempt them and show up in every p99.
taskset -c "$client_cpu" "$CP" up --dir "$work/cp" --exit-on-stdin-eof=false >"$work/cp.out" 2>"$work/cp.err" &
pids+=($!)
for _ in $(seq 1 600); do grep -q '^READY ' "$work/cp.out" && break; sleep 0.1; done
ready=$(sed -n 's/^READY //p' "$work/cp.out")
[[ -n $ready ]] || { tail "$work/cp.err"; exit 1; }
export KUBECONFIG=$(jq -r .kubeconfig <<<"$ready")

log "creating $accounts ServiceAccounts"
python3 - "$accounts" >"$work/sas.json" <<'PY'
import json, sys
n = int(sys.argv[1])
items = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"bench-{i}"}} for i in range(n // 1000 + 1)]
items.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "payments"}})
items.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "payments-api", "namespace": "payments",
              "annotations": {"azure.workload.identity/client-id": "5b1f3c8e-2d4a-4c6b-9e7f-0a1b2c3d4e5f"}}})
for i in range(n - 1):
    items.append({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
        "name": f"sa-{i}", "namespace": f"bench-{i // 1000}",
        "labels": {"app.kubernetes.io/name": f"app-{i}", "team": "bench"},
        "annotations": {"azure.workload.identity/client-id": f"00000000-0000-4000-8000-{i:012d}",
                        "description": "a ServiceAccount of the benchmark, annotated like a real one"}}})
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
PY
kubectl create -f "$work/sas.json" >/dev/null

# Every server binds port 0 and reports the address it got (no port is picked here and handed
# over: another process could take it in between). The webhook logs it in its "webhook
# listening" line; bench_tls prints "listening on ADDR".
# Servers are always started in the background: `exec` makes the background job the server itself,
# so `$!` is its pid (whose RSS is read), not a shell's.
on_server() { exec taskset -c "$server_cpu" "$@"; }
on_client() { taskset -c "$client_cpu" "$@"; }
logged_addr() { # log field → address once the webhook has logged it
  for _ in $(seq 1 600); do
    local a
    a=$(grep -m1 '"webhook listening"' "$1" 2>/dev/null | jq -r ".$2 // empty" 2>/dev/null || true)
    [[ -n $a ]] && { echo "$a"; return 0; }
    sleep 0.1
  done
  return 1
}
start_webhook() { # binary log → "pid https-addr admin-addr" once ready
  on_server "$1" webhook --tenant-id 72f988bf-86f1-41af-91ab-2d7cd011db47 --listen 127.0.0.1:0 \
    --admin-listen 127.0.0.1:0 --tls-cert-file "$work/certs/tls.crt" --tls-key-file "$work/certs/tls.key" \
    --log-level warn,wif_webhook::run=info --log-format json >"$2" 2>&1 &
  local pid=$! https admin
  https=$(logged_addr "$2" listen) || { cat "$2" >&2; return 1; }
  admin=$(logged_addr "$2" admin) || { cat "$2" >&2; return 1; }
  for _ in $(seq 1 600); do
    curl -sf "http://$admin/readyz" >/dev/null && break
    kill -0 $pid 2>/dev/null || { cat "$2" >&2; return 1; }
    sleep 0.1
  done
  echo "$pid $https $admin"
}
log "starting wif webhook (release) on CPU $server_cpu; load generator on CPU $client_cpu"
read -r hook_pid hook_addr admin_addr < <(start_webhook "$WIF" "$work/webhook.log") || true
[[ -n ${admin_addr:-} ]] || { log "the webhook did not start"; exit 1; }
pids+=($hook_pid)
if [[ $static == 1 ]]; then
  log "starting wif webhook (static musl release)"
  read -r static_pid static_addr _ < <(start_webhook "$WIF_STATIC" "$work/static.log") || true
  [[ -n ${static_addr:-} ]] || { log "the static webhook did not start"; exit 1; }
  pids+=($static_pid)
fi
cached=$(curl -s "http://$admin_addr/metrics" | awk '/^wif_webhook_cached_service_accounts /{print $2}')
log "webhook ready with $cached ServiceAccounts cached"

body=$work/review.json
jq -c . crates/wif-webhook/tests/data/review-pod.json >"$body"
load() { # url extra-args… → oha JSON
  on_client "$OHA" --no-tui --output-format json --insecure -m POST -H 'content-type: application/json' \
    -D "$body" "$@"
}
# A quick request first: it must be a real mutation, or the figures mean nothing. Its answer is
# what the bare servers send back.
curl -s --cacert "$work/certs/ca.crt" -H 'content-type: application/json' --data-binary "@$body" \
  "https://$hook_addr/mutate-v1-pod" >"$work/answer.json"
jq -e '.response.allowed and (.response.patch | length > 100)' "$work/answer.json" >/dev/null ||
  { log "the webhook did not mutate the benchmark pod"; exit 1; }
start_bare() { # mode log → "pid address" once it answers
  on_server "$BENCH_TLS" "$1" 127.0.0.1:0 "$work/certs" "$work/answer.json" >"$2" 2>&1 &
  local pid=$! a=
  for _ in $(seq 1 600); do
    a=$(sed -n 's/^listening on //p' "$2")
    [[ -n $a ]] && break
    sleep 0.1
  done
  [[ -n $a ]] || { cat "$2" >&2; return 1; }
  for _ in $(seq 1 100); do
    curl -s -o /dev/null --cacert "$work/certs/ca.crt" --data-binary "@$body" "https://$a/mutate-v1-pod" && break
    sleep 0.1
  done
  echo "$pid $a"
}
read -r bare_pid bare < <(start_bare bare "$work/bare.log") || true
read -r scan_pid scan < <(start_bare scan "$work/scan.log") || true
[[ -n ${bare:-} && -n ${scan:-} ]] || { log "a bare server did not start"; exit 1; }
pids+=($bare_pid $scan_pid)
rss() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
hwm() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }
rss_idle=$(rss $hook_pid)
[[ $static == 1 ]] && static_rss_idle=$(rss $static_pid)

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
log "max throughput: $conns connections, ${duration}s each, $rounds interleaved rounds (load $load_before)"
for round in $(seq 1 "$rounds"); do
  load -z "${duration}s" -c "$conns" "https://$bare/mutate-v1-pod" >"$work/bare-max-$round.json"
  load -z "${duration}s" -c "$conns" "https://$scan/mutate-v1-pod" >"$work/scan-max-$round.json"
  load -z "${duration}s" -c "$conns" "https://$hook_addr/mutate-v1-pod" >"$work/hook-max-$round.json"
  if [[ $static == 1 ]]; then
    load -z "${duration}s" -c "$conns" "https://$static_addr/mutate-v1-pod" >"$work/static-max-$round.json"
  fi
done
log "fixed 1000 requests/s, ${duration}s each"
load -z "${duration}s" -c "$conns" -q 1000 "https://$bare/mutate-v1-pod" >"$work/bare-1000.json"
load -z "${duration}s" -c "$conns" -q 1000 "https://$hook_addr/mutate-v1-pod" >"$work/hook-1000.json"
if [[ $static == 1 ]]; then
  load -z "${duration}s" -c "$conns" -q 1000 "https://$static_addr/mutate-v1-pod" >"$work/static-1000.json"
  static_hwm=$(hwm $static_pid)
fi
rss_after=$(rss $hook_pid)
hwm_hook=$(hwm $hook_pid)
bare_hwm=$(hwm $bare_pid)
pod_bytes=$(jq -c .request.object "$body" | wc -c)
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

mkdir -p bench/results
review_bytes=$(wc -c <"$body")
answer_bytes=$(wc -c <"$work/answer.json")
python3 - "$work" "$cached" "$rss_idle" "$rss_after" "$hwm_hook" "$bare_hwm" "$pod_bytes" "$conns" "$duration" "$rounds" "$review_bytes" "$answer_bytes" "$static" "${static_rss_idle:-0}" "${static_hwm:-0}" "$load_before" "$load_after" "$server_cpu" "$client_cpu" "$0 $*" <<'PY' >bench/results/webhook.json
import json, sys, platform, os, datetime, statistics
(w, cached, rss_idle, rss_after, hwm, bare_hwm, pod_bytes, conns, duration, rounds, review_bytes, answer_bytes,
 static, static_rss_idle, static_hwm, load_before, load_after, server_cpu, client_cpu, command) = sys.argv[1:]
def median_run(name):
    runs = [r(f"{name}-{i}") for i in range(1, int(rounds) + 1)]
    best = sorted(runs, key=lambda x: x["rps"])[len(runs) // 2]
    return dict(best, rps_runs=[x["rps"] for x in runs])
def r(name):
    d = json.load(open(f"{w}/{name}.json"))
    s, p = d["summary"], d.get("latencyPercentiles", {})
    codes = d.get("statusCodeDistribution", {})
    return {"rps": round(s["requestsPerSec"], 1), "success_rate": s["successRate"],
            "p50_ms": round(p.get("p50", 0) * 1000, 3), "p99_ms": round(p.get("p99", 0) * 1000, 3),
            "status_codes": codes}
out = {
  "benchmark": "wif webhook under HTTPS keep-alive load (oha), vs a bare axum+rustls server on the same transport",
  "date": datetime.datetime.utcnow().isoformat(timespec="seconds") + "Z",
  "command": command,
  "env": {k: os.environ[k] for k in ("BENCH_SECONDS", "BENCH_SERVICE_ACCOUNTS", "BENCH_CONNECTIONS", "BENCH_ROUNDS",
                                     "BENCH_STATIC", "BENCH_SERVER_CPU", "BENCH_CLIENT_CPU") if k in os.environ},
  "machine": {"cpus": os.cpu_count(), "arch": platform.machine(),
              "load_average_before": [float(x) for x in load_before.split()],
              "load_average_after": [float(x) for x in load_after.split()]},
  "pinning": {"servers_cpu": int(server_cpu), "load_generator_cpu": int(client_cpu),
              "note": "taskset: every server (webhook, bare, scan) on one CPU, oha and the API server on another"},
  "pod_bytes": int(pod_bytes), "review_bytes": int(review_bytes), "answer_bytes": int(answer_bytes),
  "service_accounts_cached": int(cached or 0),
  "connections": int(conns), "seconds_per_run": int(duration), "max_throughput_rounds": int(rounds),
  "webhook": {"max": median_run("hook-max"), "at_1000_rps": r("hook-1000"),
              "rss_mib_idle": round(int(rss_idle) / 1024, 1), "rss_mib_after_load": round(int(rss_after) / 1024, 1),
              "peak_rss_mib": round(int(hwm) / 1024, 1)},
  "bare": {"max": median_run("bare-max"), "at_1000_rps": r("bare-1000"), "peak_rss_mib": round(int(bare_hwm) / 1024, 1)},
  "bare_json_scan": {"max": median_run("scan-max")},
}
if static == "1":
    out["webhook_static_musl"] = {"max": median_run("static-max"), "at_1000_rps": r("static-1000"),
                                  "rss_mib_idle": round(int(static_rss_idle) / 1024, 1),
                                  "peak_rss_mib": round(int(static_hwm) / 1024, 1)}
    out["static_vs_glibc_ratio"] = round(out["webhook_static_musl"]["max"]["rps"] / out["webhook"]["max"]["rps"], 3)
out["throughput_ratio"] = round(out["webhook"]["max"]["rps"] / out["bare"]["max"]["rps"], 3)
out["parse_only_ratio"] = round(out["webhook"]["max"]["rps"] / out["bare_json_scan"]["max"]["rps"], 3)
out["json_scan_ratio"] = round(out["bare_json_scan"]["max"]["rps"] / out["bare"]["max"]["rps"], 3)
peak = max(out["webhook"]["peak_rss_mib"], out.get("webhook_static_musl", {}).get("peak_rss_mib", 0))
out["goals"] = {
  "p99_ms_at_1000_rps <= 1": {"figure": out["webhook"]["at_1000_rps"]["p99_ms"],
                              "met": out["webhook"]["at_1000_rps"]["p99_ms"] <= 1.0},
  "webhook / parse-only server >= 0.6": {"figure": out["parse_only_ratio"], "met": out["parse_only_ratio"] >= 0.6},
  "rss_mib <= 40": {"figure": peak, "met": peak <= 40},
}
print(json.dumps(out, indent=2))
PY
jq -r '
  "",
  "webhook benchmark (\(.service_accounts_cached) ServiceAccounts cached, \(.pod_bytes)-byte pod in a \(.review_bytes)-byte review, \(.answer_bytes)-byte answer, \(.connections) connections, median of \(.max_throughput_rounds))",
  "                       max rps   p50@1000rps  p99@1000rps   peak RSS",
  "  wif webhook       \(.webhook.max.rps | tostring | .[0:9] | (" " * (9 - length)) + .)   \(.webhook.at_1000_rps.p50_ms) ms     \(.webhook.at_1000_rps.p99_ms) ms    \(.webhook.peak_rss_mib) MiB",
  (if .webhook_static_musl then "  wif static (musl) \(.webhook_static_musl.max.rps | tostring | .[0:9] | (" " * (9 - length)) + .)   \(.webhook_static_musl.at_1000_rps.p50_ms) ms     \(.webhook_static_musl.at_1000_rps.p99_ms) ms    \(.webhook_static_musl.peak_rss_mib) MiB   (\(.static_vs_glibc_ratio) of the glibc build)" else empty end),
  "  bare axum+rustls  \(.bare.max.rps | tostring | .[0:9] | (" " * (9 - length)) + .)   \(.bare.at_1000_rps.p50_ms) ms     \(.bare.at_1000_rps.p99_ms) ms    \(.bare.peak_rss_mib) MiB",
  "  bare + JSON scan  \(.bare_json_scan.max.rps | tostring | .[0:9] | (" " * (9 - length)) + .)   (ratio \(.json_scan_ratio): what parsing the review alone costs)",
  "  webhook / bare: \(.throughput_ratio)   webhook / parse-only: \(.parse_only_ratio)   (servers on CPU \(.pinning.servers_cpu), oha on CPU \(.pinning.load_generator_cpu); load \(.machine.load_average_before) → \(.machine.load_average_after))",
  "  goals: \(.goals | to_entries | map("\(.key): \(.value.figure) \(if .value.met then "met" else "MISSED" end)") | join(", "))"
' bench/results/webhook.json
