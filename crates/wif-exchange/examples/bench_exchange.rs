//! Exchange benchmark harness: cached latency, single-flight on a cold cache, and caller latency
//! during a background refresh, against the in-process HTTPS test endpoint with 100 ms latency.
//! Prints a table and writes `bench/results/exchange.json` at the workspace root.
//!
//! `cargo run --release -p wif-exchange --example bench_exchange`
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use common::{Reply, SCOPE, TestServer};
use wif_exchange::{TokenRequestOptions, WorkloadIdentityCredential};

const CALLERS: usize = 1000;
const SERVER_LATENCY: Duration = Duration::from_millis(100);
const CACHED_CALLS: u32 = 1_000_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Microseconds, one decimal.
fn us(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e7).round() / 10.0
}

/// Milliseconds, one decimal.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Starts `CALLERS` concurrent `get_token` calls and returns their latencies, sorted.
async fn burst(cred: &WorkloadIdentityCredential) -> Vec<Duration> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CALLERS));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (cred, barrier) = (cred.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let start = Instant::now();
                cred.get_token(&[SCOPE], &TokenRequestOptions::default())
                    .await
                    .unwrap();
                start.elapsed()
            })
        })
        .collect();
    let mut lat = Vec::with_capacity(CALLERS);
    for t in tasks {
        lat.push(t.await.unwrap());
    }
    lat.sort();
    lat
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    // Every exchange takes 100 ms; tokens refresh after 1 s (refresh_in), expire after 1 h.
    let server =
        TestServer::start(|n, _| Reply::token(&format!("token-{n}"), 3600, Some(1)).delay(SERVER_LATENCY))
            .await;

    // 1. Cold cache: 1000 concurrent callers.
    let cred = server.credential();
    let cold = burst(&cred).await;
    let cold_requests = server.count();

    // 2. Cached latency, single caller, hot loop.
    let warm = server.credential();
    warm.get_token(&[SCOPE], &TokenRequestOptions::default())
        .await
        .unwrap();
    let before = server.count();
    let opts = TokenRequestOptions::default();
    let start = Instant::now();
    for _ in 0..CACHED_CALLS {
        std::hint::black_box(
            warm.get_token(std::hint::black_box(&[SCOPE]), &opts)
                .await
                .unwrap(),
        );
    }
    let cached_mean = start.elapsed() / CACHED_CALLS;
    assert_eq!(server.count(), before, "the hot loop was served from the cache");

    // 3. Background refresh: past refresh_on, 1000 callers while the 100 ms refresh runs.
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let before = server.count();
    let refresh = burst(&warm).await;
    tokio::time::sleep(SERVER_LATENCY * 3).await;
    let refresh_requests = server.count() - before;

    let rows = [
        (
            "cached get_token, mean",
            format!("{:.0} ns", cached_mean.as_nanos()),
            "< 1 µs".to_string(),
        ),
        (
            "cold cache: requests for 1000 callers",
            cold_requests.to_string(),
            "1".to_string(),
        ),
        (
            "cold cache: caller p50 / p99",
            format!(
                "{} / {} ms",
                ms(percentile(&cold, 0.5)),
                ms(percentile(&cold, 0.99))
            ),
            "≈ server latency".into(),
        ),
        (
            "refresh: requests for 1000 callers",
            refresh_requests.to_string(),
            "1".into(),
        ),
        (
            "refresh: caller p50 / p99 / max",
            format!(
                "{} / {} / {} µs",
                us(percentile(&refresh, 0.5)),
                us(percentile(&refresh, 0.99)),
                us(refresh[refresh.len() - 1])
            ),
            "p99 ≪ 100 ms".into(),
        ),
    ];
    println!("{:<42} {:>26}  goal", "measure", "value");
    for (k, v, g) in &rows {
        println!("{k:<42} {v:>26}  {g}");
    }

    let report = serde_json::json!({
        "bench": "wif-exchange",
        "command": "cargo run --release -p wif-exchange --example bench_exchange",
        "setup": {
            "server": "in-process HTTPS (axum + rustls) on 127.0.0.1",
            "server_latency_ms": SERVER_LATENCY.as_millis() as u64,
            "callers": CALLERS,
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        },
        "cached_get_token": { "calls": CACHED_CALLS, "mean_ns": cached_mean.as_nanos() as u64, "goal_ns": 1000 },
        "cold_cache": {
            "requests_sent": cold_requests,
            "goal_requests": 1,
            "caller_latency_ms": {
                "p50": ms(percentile(&cold, 0.5)),
                "p99": ms(percentile(&cold, 0.99)),
                "max": ms(cold[cold.len() - 1]),
            },
        },
        "background_refresh": {
            "requests_sent": refresh_requests,
            "goal_requests": 1,
            "caller_latency_us": {
                "p50": us(percentile(&refresh, 0.5)),
                "p99": us(percentile(&refresh, 0.99)),
                "max": us(refresh[refresh.len() - 1]),
            },
            "no_caller_waited_for_the_network": refresh[refresh.len() - 1] < SERVER_LATENCY,
        },
    });
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../bench/results");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("exchange.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).unwrap() + "\n").unwrap();
    println!("wrote bench/results/exchange.json");
}
