//! Pod-creation burst through the real API server (`make bench-burst`): 2,000 labelled pods created
//! by 50 concurrent clients, in five configurations, each in its own namespace:
//! - no webhook registered;
//! - a webhook that decides nothing (`bench_tls allow`: reads each review and allows it
//!   unchanged, on wif's HTTP/1.1 transport): what calling any webhook costs the API server;
//! - the same server answering wif's own patch for this pod (`wif mutate -o patch`): adds what
//!   applying wif's mutation costs the API server;
//! - wif serving HTTP/1.1 only, then HTTP/2: wif's figure minus the previous one is what wif's
//!   own work adds.
//!
//! Rounds (`--rounds`, 2) run the configurations in alternating order.
//!
//! Reports per configuration: pod-creation latency (p50, p99, max) as the clients see it,
//! failures, and for the webhook its connections by protocol, the most open at once, TLS
//! handshakes, CPU seconds and peak RSS (from its /metrics and /proc). The machine's load
//! average is recorded beside each configuration: the figures are only comparable within a run.
//!
//! ```text
//! cargo build --release -p wif && cargo build --release -p wif-webhook --example bench_tls
//! WIF_BIN=$CARGO_TARGET_DIR/release/wif WIF_CONTROLPLANE_BIN=$(e2e/controlplane/build.sh | tail -1) \
//!   WIF_BENCH_TLS=$CARGO_TARGET_DIR/release/examples/bench_tls cargo run --release -p wif-e2e --example bench_burst -- --out bench/results/burst.json
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Pod};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};
use wif_e2e::{
    ChildGuard, TestNs, WebhookOptions, WebhookProcess, controller::metric_sum,
    webhook::mutating_configuration,
};

struct Args {
    pods: usize,
    clients: usize,
    warmup: usize,
    rounds: usize,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        pods: 2000,
        clients: 50,
        warmup: 100,
        rounds: 2,
        out: PathBuf::from("bench/results/burst.json"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--pods" => a.pods = value().parse().unwrap(),
            "--clients" => a.clients = value().parse().unwrap(),
            "--warmup" => a.warmup = value().parse().unwrap(),
            "--rounds" => a.rounds = value().parse().unwrap(),
            "--out" => a.out = value().into(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        a.clients > 0 && a.pods >= a.clients,
        "--pods must be at least --clients"
    );
    a
}

const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"azure.workload.identity/use": "true", "app": "burst"}},
        "spec": {
            "serviceAccountName": "api",
            "containers": [{"name": "app", "image": "registry.example/app:1.0",
                            "env": [{"name": "MODE", "value": "burst"}]}]
        }
    }))
    .unwrap()
}

fn loadavg() -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = text
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    json!(v)
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process (all threads), from /proc/PID/stat (100 ticks/s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; here 11 and 12 after state (field 3).
    (ticks(11) + ticks(12)) / 100.0
}

async fn metrics(hook: &WebhookProcess) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://127.0.0.1:{}/metrics", hook.admin_port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Creates `count` pods named `{prefix}-{i}` with `clients` clients in parallel; returns each
/// creation's latency in ms and the failures.
async fn create_pods(ns: &TestNs, prefix: &str, count: usize, clients: usize) -> (Vec<f64>, Vec<String>) {
    let mut tasks = Vec::new();
    for c in 0..clients {
        // One client (one connection pool) per worker, as separate controllers would be.
        let client = ns.cp.client().await;
        let namespace = ns.name.clone();
        let prefix = prefix.to_owned();
        let mine: Vec<usize> = (c..count).step_by(clients).collect();
        tasks.push(tokio::spawn(async move {
            let pods: kube::Api<Pod> = kube::Api::namespaced(client, &namespace);
            let mut latencies = Vec::with_capacity(mine.len());
            let mut failures = Vec::new();
            for i in mine {
                let p = pod(&format!("{prefix}-{i}"));
                let t = Instant::now();
                match pods.create(&PostParams::default(), &p).await {
                    Ok(created) => {
                        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                        let _ = created;
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (latencies, failures)
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        let (l, f) = t.await.unwrap();
        latencies.extend(l);
        failures.extend(f);
    }
    (latencies, failures)
}

/// A webhook that does nothing: `bench_tls allow` (a release build, `WIF_BENCH_TLS`), its own
/// process on wif's transport over HTTP/1.1, reading each review and allowing it unchanged;
/// registered as wif is (URL, same selectors).
struct AllowOnly {
    process: ChildGuard,
    dir: tempfile::TempDir,
    config: String,
}

impl AllowOnly {
    async fn start(ns: &TestNs, patch: Option<&std::path::Path>) -> Self {
        let bin = std::env::var("WIF_BENCH_TLS").expect(
            "WIF_BENCH_TLS: the bench_tls example (cargo build --release -p wif-webhook --example bench_tls)",
        );
        let dir = tempfile::tempdir().unwrap();
        let status = std::process::Command::new(&bin)
            .arg("certs")
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "{bin} certs failed");
        let out = dir.path().join("out.log");
        let child = std::process::Command::new(&bin)
            .args(["allow", "127.0.0.1:0"])
            .arg(dir.path())
            .args(patch)
            .stdout(std::fs::File::create(&out).unwrap())
            .spawn()
            .unwrap();
        let process = ChildGuard {
            child,
            name: "bench_tls allow".into(),
        };
        // It binds port 0 and prints where it listens.
        let mut addr = None;
        for _ in 0..300 {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            addr = text
                .lines()
                .find_map(|l| l.strip_prefix("listening on "))
                .map(str::to_owned);
            if addr.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let addr = addr.expect("bench_tls allow printed no address");
        let ca = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
        let config = format!("allow-only-{}", ns.name);
        let selector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
            match_labels: Some([(wif_api::USE_LABEL.to_owned(), "true".to_owned())].into()),
            ..Default::default()
        };
        let cfg = mutating_configuration(
            &config,
            "allow-only.bench.wif.test",
            &format!("https://{addr}{}", wif_api::MUTATE_PATH),
            &ca,
            &ns.name,
            Some(selector),
        );
        Api::<MutatingWebhookConfiguration>::all(ns.client.clone())
            .create(&PostParams::default(), &cfg)
            .await
            .unwrap();
        Self { process, dir, config }
    }

    async fn stop(mut self, ns: &TestNs) {
        Api::<MutatingWebhookConfiguration>::all(ns.client.clone())
            .delete(&self.config, &DeleteParams::default())
            .await
            .unwrap();
        self.process.terminate(Duration::from_secs(5));
        drop(self.dir);
    }
}

/// How many times the API server called webhook `name` (its own metric), so a configuration's
/// figure is known to include the webhook.
async fn api_server_calls(ns: &TestNs, name: &str) -> f64 {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = ns.client.request_text(request).await.unwrap();
    metric_sum(
        &text,
        "apiserver_admission_webhook_admission_duration_seconds_count",
        &[("name", name), ("type", "admit")],
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Config {
    NoWebhook,
    AllowOnly,
    SamePatch,
    Http1,
    Http2,
}

impl Config {
    /// The name of the webhook the API server calls in this configuration.
    fn webhook(self) -> Option<&'static str> {
        match self {
            Self::NoWebhook => None,
            Self::AllowOnly | Self::SamePatch => Some("allow-only.bench.wif.test"),
            Self::Http1 | Self::Http2 => Some("mutation.wif.azure.workload.identity"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::NoWebhook => "no_webhook",
            Self::AllowOnly => "allow_only_http1",
            Self::SamePatch => "wif_patch_fixed_http1",
            Self::Http1 => "wif_http1",
            Self::Http2 => "wif_http2",
        }
    }
}

/// wif's JSON patch for the benchmark pod (`wif mutate -o patch`), written to a file.
fn wif_patch(dir: &std::path::Path) -> PathBuf {
    let pod_file = dir.join("pod.json");
    let mut p = serde_json::to_value(pod("burst")).unwrap();
    p["metadata"]["namespace"] = json!("burst");
    // As the API server sends it: its ServiceAccount admission has added the token volume and
    // mount, so wif's patch appends to those lists (a patch replacing them would drop that
    // volume, which the API server then adds back and calls the webhook again).
    p["spec"]["volumes"] = json!([{"name": "kube-api-access-bench", "projected": {"sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}]);
    p["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "kube-api-access-bench",
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]);
    std::fs::write(&pod_file, p.to_string()).unwrap();
    let sa_file = dir.join("sa.json");
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": "api", "namespace": "burst",
                                 "annotations": {"azure.workload.identity/client-id": CLIENT_ID}}});
    std::fs::write(&sa_file, sa.to_string()).unwrap();
    let opts = WebhookOptions::default();
    let out = std::process::Command::new(wif_e2e::wif_bin())
        .args([
            "mutate",
            "-o",
            "patch",
            "--tenant-id",
            &opts.tenant_id,
            "--cloud",
            &opts.cloud,
        ])
        .arg("--pod")
        .arg(&pod_file)
        .arg("--service-account")
        .arg(&sa_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wif mutate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = dir.join("patch.json");
    std::fs::write(&file, out.stdout).unwrap();
    file
}

/// `text` with this checkout's absolute path removed, so the report names paths in the repository.
fn repo_relative(text: &str) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    text.replace(&format!("{}/", root.display()), "")
}

async fn run(config: Config, args: &Args, round: usize, patch: &std::path::Path) -> (Value, Vec<f64>) {
    let ns = TestNs::new(&format!("burst-{}-{round}", config.name().replace('_', "-"))).await;
    ns.service_account("api", &[("azure.workload.identity/client-id", CLIENT_ID)])
        .await;
    let allow_only = match config {
        Config::AllowOnly => Some(AllowOnly::start(&ns, None).await),
        Config::SamePatch => Some(AllowOnly::start(&ns, Some(patch)).await),
        _ => None,
    };
    let hook = match config {
        Config::NoWebhook | Config::AllowOnly | Config::SamePatch => None,
        Config::Http1 | Config::Http2 => {
            let mut opts = WebhookOptions {
                log_level: "warn,wif_webhook::run=info".into(),
                ..WebhookOptions::default()
            };
            if config == Config::Http1 {
                opts.args.push("--http2=false".into());
            }
            Some(WebhookProcess::start(&ns, opts).await)
        }
    };
    let load_before = loadavg();
    eprintln!(
        "bench: {}: warm-up {} pods, then {} pods by {} clients (load {load_before})",
        config.name(),
        args.warmup,
        args.pods,
        args.clients
    );
    let (_, warm_failures) = create_pods(&ns, "warm", args.warmup, args.clients.min(args.warmup)).await;
    assert!(
        warm_failures.is_empty(),
        "warm-up failed: {:?}",
        &warm_failures[..warm_failures.len().min(3)]
    );

    let before = match &hook {
        Some(h) => Some((metrics(h).await, cpu_seconds(h.process.child.id()))),
        None => None,
    };
    // The most connections open at once, sampled while the burst runs.
    let max_open = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let sampler = hook.as_ref().map(|h| {
        let (max_open, running) = (max_open.clone(), running.clone());
        let url = format!("http://127.0.0.1:{}/metrics", h.admin_port);
        tokio::spawn(async move {
            let http = reqwest::Client::builder().no_proxy().build().unwrap();
            for _ in 0..60_000 {
                if !running.load(Ordering::Relaxed) {
                    break;
                }
                if let Ok(r) = http.get(&url).send().await
                    && let Ok(text) = r.text().await
                {
                    let open = metric_sum(&text, "wif_webhook_open_connections", &[]);
                    max_open.fetch_max(open as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    });
    let calls_before = match config.webhook() {
        Some(name) => api_server_calls(&ns, name).await,
        None => 0.0,
    };
    let started = Instant::now();
    let (mut latencies, failures) = create_pods(&ns, "pod", args.pods, args.clients).await;
    let seconds = started.elapsed().as_secs_f64();
    running.store(false, Ordering::Relaxed);
    if let Some(s) = sampler {
        s.await.unwrap();
    }
    latencies.sort_by(f64::total_cmp);
    let load_after = loadavg();

    let mut out = json!({
        "pods": args.pods,
        "clients": args.clients,
        "seconds": round3(seconds),
        "pods_per_second": round3(args.pods as f64 / seconds),
        "latency_ms": {
            "p50": round3(percentile(&latencies, 50.0)),
            "p99": round3(percentile(&latencies, 99.0)),
            "max": round3(latencies.last().copied().unwrap_or(0.0)),
            "mean": round3(latencies.iter().sum::<f64>() / latencies.len().max(1) as f64),
        },
        "failures": failures.len(),
        "failure_examples": failures.iter().take(3).collect::<Vec<_>>(),
        "load_average_before": load_before,
        "load_average_after": load_after,
    });
    if let (Some(hook), Some((before, cpu_before))) = (&hook, before) {
        let pid = hook.process.child.id();
        let after = metrics(hook).await;
        let delta = |name: &str, labels: &[(&str, &str)]| {
            metric_sum(&after, name, labels) - metric_sum(&before, name, labels)
        };
        out["webhook"] = json!({
            "connections_during_burst": {
                "h2": delta("wif_webhook_connections_total", &[("protocol", "H2")]),
                "http1": delta("wif_webhook_connections_total", &[("protocol", "Http1")]),
            },
            "connections_since_start": {
                "h2": metric_sum(&after, "wif_webhook_connections_total", &[("protocol", "H2")]),
                "http1": metric_sum(&after, "wif_webhook_connections_total", &[("protocol", "Http1")]),
            },
            "max_open_connections": max_open.load(Ordering::Relaxed),
            "open_connections_after": metric_sum(&after, "wif_webhook_open_connections", &[]),
            "tls_handshakes_during_burst": delta("wif_webhook_tls_handshakes_total", &[("result", "Ok")]),
            "tls_handshake_failures_during_burst": delta("wif_webhook_tls_handshakes_total", &[("result", "Failed")])
                + delta("wif_webhook_tls_handshakes_total", &[("result", "TimedOut")]),
            "admission_requests": delta("wif_webhook_admission_requests_total", &[]),
            "mutated": delta("wif_webhook_admission_requests_total", &[("outcome", "Mutated")]),
            "shed": delta("wif_webhook_shed_requests_total", &[]),
            "cpu_seconds": round3(cpu_seconds(pid) - cpu_before),
            "peak_rss_mib": round3(proc_status_kib(pid, "VmHWM:") as f64 / 1024.0),
        });
    }
    if let Some(name) = config.webhook() {
        let calls = api_server_calls(&ns, name).await - calls_before;
        out["api_server_webhook_calls"] = json!(calls);
        assert!(
            calls >= args.pods as f64,
            "{}: the API server called {name} {calls} times for {} pods",
            config.name(),
            args.pods
        );
    }
    if let Some(a) = allow_only {
        a.stop(&ns).await;
    }
    eprintln!("bench: {} (round {round}): {}", config.name(), out);
    drop(hook);
    (out, latencies)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    wif_e2e::init();
    let args = parse_args();
    let configs = [
        Config::NoWebhook,
        Config::AllowOnly,
        Config::SamePatch,
        Config::Http1,
        Config::Http2,
    ];
    let dir = tempfile::tempdir().unwrap();
    let patch = wif_patch(dir.path());
    // Rounds alternate the order, so a drift of the machine's load does not favour one
    // configuration; percentiles are over every round's pods together.
    let mut rounds: Vec<Vec<Value>> = vec![Vec::new(); configs.len()];
    let mut latencies: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for round in 0..args.rounds {
        let mut order: Vec<usize> = (0..configs.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (out, l) = run(configs[i], &args, round, &patch).await;
            rounds[i].push(out);
            latencies[i].extend(l);
        }
    }
    let mut results = serde_json::Map::new();
    for (i, config) in configs.iter().enumerate() {
        let l = &mut latencies[i];
        l.sort_by(f64::total_cmp);
        let failures: u64 = rounds[i]
            .iter()
            .map(|r| r["failures"].as_u64().unwrap_or(0))
            .sum();
        let last = rounds[i].last().cloned().unwrap_or_default();
        results.insert(
            config.name().into(),
            json!({
                "pods": l.len() as u64 + failures,
                "latency_ms": {
                    "p50": round3(percentile(l, 50.0)),
                    "p99": round3(percentile(l, 99.0)),
                    "max": round3(l.last().copied().unwrap_or(0.0)),
                    "mean": round3(l.iter().sum::<f64>() / l.len().max(1) as f64),
                },
                "failures": failures,
                "webhook": last.get("webhook").cloned().unwrap_or(Value::Null),
                "rounds": rounds[i],
            }),
        );
    }
    let p99 = |c: &str| results[c]["latency_ms"]["p99"].as_f64().unwrap_or(0.0);
    let added_h1 = round3(p99("wif_http1") - p99("no_webhook"));
    let added_h2 = round3(p99("wif_http2") - p99("no_webhook"));
    let any_webhook = round3(p99("allow_only_http1") - p99("no_webhook"));
    let over_allow_only = round3(p99("wif_http1") - p99("allow_only_http1"));
    let patch_cost = round3(p99("wif_patch_fixed_http1") - p99("allow_only_http1"));
    let own_work = round3(p99("wif_http1") - p99("wif_patch_fixed_http1"));
    let failures: u64 = results
        .values()
        .map(|r| r["failures"].as_u64().unwrap_or(0))
        .sum();
    let h2_conns = results["wif_http2"]["webhook"]["connections_during_burst"]["h2"]
        .as_f64()
        .unwrap_or(f64::MAX)
        .max(
            results["wif_http2"]["webhook"]["max_open_connections"]
                .as_f64()
                .unwrap_or(f64::MAX),
        );
    let report = json!({
        "benchmark": "pod-creation burst through kube-apiserver: no webhook, a do-nothing webhook, a webhook answering wif's patch, wif over HTTP/1.1, wif over HTTP/2",
        "rounds": args.rounds,
        "command": repo_relative(&std::env::args().collect::<Vec<_>>().join(" ")),
        "wif_bin": repo_relative(&wif_e2e::wif_bin().display().to_string()),
        "build": if wif_e2e::wif_bin().display().to_string().contains("/debug/") {
            "debug: figures of latency and CPU are pessimistic; use `make` (release)"
        } else {
            "release"
        },
        "date_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "note": "client-side latency of POST pods through the API server (admission chain, etcd write); \
                 the warm-up pods are not counted; percentiles over all rounds' pods (rounds alternate \
                 the order of the configurations); webhook figures are the last round's, deltas over \
                 the measured burst except peak RSS and connections_since_start. allow_only_http1: \
                 bench_tls allow, reads each review and allows it unchanged; wif_patch_fixed_http1: the \
                 same server answering wif's own patch for this pod (wif mutate -o patch), so \
                 wif_http1 minus it is what wif's own work adds",
        "configs": results,
        "p99_added_ms": {"http1": added_h1, "http2": added_h2, "do_nothing_webhook": any_webhook,
                         "wif_http1_over_do_nothing_webhook": over_allow_only,
                         "applying_wifs_patch": patch_cost,
                         "wif_http1_over_a_webhook_returning_the_same_patch": own_work},
        "goals": {
            "p99 added by wif <= 2 ms (HTTP/1.1)": {"figure": added_h1, "met": added_h1 <= 2.0},
            "p99 added by wif <= 2 ms (HTTP/2)": {"figure": added_h2, "met": added_h2 <= 2.0},
            "p99 added by wif's own work (over a webhook returning the same patch) <= 2 ms (HTTP/1.1)": {"figure": own_work, "met": own_work <= 2.0},
            "0 failures": {"figure": failures, "met": failures == 0},
            "HTTP/2: a handful of connections (<= 5)": {"figure": h2_conns, "met": h2_conns <= 5.0},
        },
    });
    let text = serde_json::to_string_pretty(&report).unwrap();
    println!("{text}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).unwrap();
    }
    std::fs::write(&args.out, format!("{text}\n")).unwrap();
    eprintln!("bench: wrote {}", args.out.display());
}
