//! Webhook memory against the number of ServiceAccounts (`make bench-memory`, part of
//! `make bench`): a real API server holding 0, then 10,000, then 100,000 ServiceAccounts (one in
//! `--wif-every` carries wif's client-id annotation, the others a team label and an unrelated
//! annotation, as on a shared cluster), and for each count a fresh `wif webhook` (the binary in
//! `WIF_BIN`): seconds from start until `/readyz` (the cache has listed every ServiceAccount),
//! ServiceAccounts cached, RSS once ready and peak RSS (VmHWM).
//!
//! ```text
//! cargo build --release -p wif
//! WIF_BIN=$CARGO_TARGET_DIR/release/wif WIF_CONTROLPLANE_BIN=$(e2e/controlplane/build.sh | tail -1) \
//!   cargo run --release -p wif-e2e --example bench_memory -- --out bench/results/memory.json
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use wif_e2e::{ChildGuard, control_plane, controller::metric_sum};

struct Args {
    counts: Vec<usize>,
    wif_every: usize,
    out: PathBuf,
}

fn parse_args() -> Args {
    let mut a = Args {
        counts: vec![0, 10_000, 100_000],
        wif_every: 10,
        out: PathBuf::from("bench/results/memory.json"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--counts" => a.counts = value().split(',').map(|c| c.parse().unwrap()).collect(),
            "--wif-every" => a.wif_every = value().parse().unwrap(),
            "--out" => a.out = value().into(),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.wif_every > 0, "--wif-every must be at least 1");
    assert!(a.counts.windows(2).all(|w| w[0] <= w[1]), "--counts must grow");
    a
}

const PER_NAMESPACE: usize = 1000;

fn loadavg() -> Value {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!(
        text.split_whitespace()
            .take(3)
            .filter_map(|x| x.parse::<f64>().ok())
            .collect::<Vec<_>>()
    )
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

fn service_account(i: usize, wif_every: usize) -> ServiceAccount {
    let mut annotations =
        json!({"description": "a ServiceAccount of the benchmark, annotated like a real one"});
    if i.is_multiple_of(wif_every) {
        annotations["azure.workload.identity/client-id"] = json!(format!("00000000-0000-4000-8000-{i:012}"));
    }
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("sa-{i}"),
            "namespace": format!("mem-{}", i / PER_NAMESPACE),
            "labels": {"app.kubernetes.io/name": format!("app-{i}"), "team": "bench"},
            "annotations": annotations,
        }
    }))
    .unwrap()
}

/// Creates ServiceAccounts `from..to` (and their namespaces), 64 at a time.
async fn create(client: &kube::Client, from: usize, to: usize, wif_every: usize) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for n in from / PER_NAMESPACE..to.div_ceil(PER_NAMESPACE) {
        let ns: Namespace =
            serde_json::from_value(json!({"metadata": {"name": format!("mem-{n}")}})).unwrap();
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("namespace mem-{n}: {e}"),
        }
    }
    let started = Instant::now();
    stream::iter(from..to)
        .for_each_concurrent(64, |i| {
            let client = client.clone();
            async move {
                let sa = service_account(i, wif_every);
                let api: Api<ServiceAccount> =
                    Api::namespaced(client, sa.metadata.namespace.as_deref().unwrap());
                for attempt in 0..5 {
                    match api.create(&PostParams::default(), &sa).await {
                        Ok(_) => return,
                        Err(kube::Error::Api(e)) if e.code == 409 => return,
                        Err(e) if attempt == 4 => panic!("ServiceAccount sa-{i}: {e}"),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                    }
                }
            }
        })
        .await;
    eprintln!(
        "bench: created ServiceAccounts {from}..{to} in {:?}",
        started.elapsed()
    );
}

/// Starts `wif webhook` on port 0, reads its admin address from the "webhook listening" log
/// line, and measures until ready and a little after.
async fn measure(dir: &std::path::Path, kubeconfig: &std::path::Path) -> Value {
    let log = dir.join("webhook.log");
    let started = Instant::now();
    let child = std::process::Command::new(wif_e2e::wif_bin())
        .args([
            "webhook",
            "--tenant-id",
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-level",
            "info",
            "--log-format",
            "json",
        ])
        .arg("--tls-cert-file")
        .arg(dir.join("tls.crt"))
        .arg("--tls-key-file")
        .arg(dir.join("tls.key"))
        .env("KUBECONFIG", kubeconfig)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("webhook.err")).unwrap())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard {
        child,
        name: "wif webhook".into(),
    };
    let pid = guard.child.id();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut admin = None;
    let mut peak_while_listing = 0;
    let ready_after = loop {
        assert!(
            !guard.exited(),
            "wif webhook exited:\n{}",
            wif_e2e::tail(&log, 20)
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not ready after 120 s:\n{}",
            wif_e2e::tail(&log, 20)
        );
        peak_while_listing = peak_while_listing.max(status_kib(pid, "VmRSS:"));
        if admin.is_none() {
            admin = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("webhook listening"))
                .find_map(|l| {
                    let v: Value = serde_json::from_str(l).ok()?;
                    v["admin"].as_str().map(str::to_owned)
                });
        }
        if let Some(a) = &admin
            && let Ok(r) = http.get(format!("http://{a}/readyz")).send().await
            && r.status().is_success()
        {
            break started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let admin = admin.unwrap();
    let rss_ready = status_kib(pid, "VmRSS:");
    // Settled: a few seconds after ready, after a scrape.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let text = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let out = json!({
        "seconds_until_ready": (ready_after.as_secs_f64() * 1000.0).round() / 1000.0,
        "service_accounts_cached": metric_sum(&text, "wif_webhook_cached_service_accounts", &[]),
        "rss_mib_when_ready": mib(rss_ready),
        "rss_mib_settled": mib(status_kib(pid, "VmRSS:")),
        "peak_rss_mib": mib(status_kib(pid, "VmHWM:").max(peak_while_listing)),
        // RSS is the process's own memory (anonymous) plus the pages of its binary it has
        // mapped (file): the second is shared page cache, and how much of it counts depends on
        // the kernel (large folios of a 23 MB binary are mapped 2 MiB at a time).
        "rss_anon_mib_settled": mib(status_kib(pid, "RssAnon:")),
        "rss_file_mib_settled": mib(status_kib(pid, "RssFile:")),
    });
    guard.terminate(Duration::from_secs(10));
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = parse_args();
    let cp = control_plane();
    let client = cp.client().await;
    let dir = tempfile::Builder::new()
        .prefix("wif-bench-mem-")
        .tempdir()
        .unwrap();
    let (_, leaf) = wif_e2e::webhook::localhost_pki("wif-bench", Duration::from_secs(86400));
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();

    let mut runs = Vec::new();
    let mut have = 0;
    for &count in &args.counts {
        create(&client, have, count, args.wif_every).await;
        have = count;
        let load = loadavg();
        let mut m = measure(dir.path(), &cp.kubeconfig).await;
        m["service_accounts"] = json!(count);
        m["with_wif_keys"] = json!(count.div_ceil(args.wif_every));
        m["load_average"] = load;
        eprintln!("bench: {m}");
        runs.push(m);
    }
    let at = |n: usize| runs.iter().find(|r| r["service_accounts"] == json!(n));
    let peak = |n: usize| at(n).and_then(|r| r["peak_rss_mib"].as_f64());
    let mut goals = serde_json::Map::new();
    if let Some(p) = peak(10_000) {
        goals.insert(
            "peak RSS <= 20 MiB at 10,000".into(),
            json!({"figure": p, "met": p <= 20.0}),
        );
    }
    if let Some(p) = peak(100_000) {
        goals.insert(
            "peak RSS <= 40 MiB at 100,000".into(),
            json!({"figure": p, "met": p <= 40.0}),
        );
    }
    if let Some(s) = at(100_000).and_then(|r| r["seconds_until_ready"].as_f64()) {
        goals.insert(
            "ready < 5 s at 100,000".into(),
            json!({"figure": s, "met": s < 5.0}),
        );
    }
    let report = json!({
        "benchmark": "wif webhook memory and start-up against the number of ServiceAccounts",
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "wif_bin": wif_e2e::wif_bin().display().to_string(),
        "build": if wif_e2e::wif_bin().display().to_string().contains("/debug/") {
            "debug: figures of latency and CPU are pessimistic; use `make` (release)"
        } else {
            "release"
        },
        "date_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "machine": {"cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "service_accounts": format!("one in {} has azure.workload.identity/client-id; all have 2 labels and an unrelated annotation", args.wif_every),
        "runs": runs,
        "goals": goals,
    });
    let text = serde_json::to_string_pretty(&report).unwrap();
    println!("{text}");
    if let Some(d) = args.out.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(&args.out, format!("{text}\n")).unwrap();
    eprintln!("bench: wrote {}", args.out.display());
}
