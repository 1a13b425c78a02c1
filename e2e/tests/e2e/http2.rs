//! The admission server's transport through the real API server: HTTP/2 negotiated by the API
//! server (read from the webhook's metrics), HTTP/1.1 clients still served, and a burst of
//! 10,000 HTTP/2 streams plus a slowloris of 2,000 idle connections answered with bounded memory
//! while the API server's own requests keep working. Everything is on 127.0.0.1, and every loop
//! is bounded in count and time.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use k8s_openapi::api::core::v1::Pod;
use kube::api::PostParams;
use tokio::io::AsyncReadExt;
use wif_e2e::{TestNs, WebhookOptions, WebhookProcess, controller::metric_sum};

use crate::webhook::{CLIENT, assert_injected, labelled};

/// A compact review of a labelled pod using ServiceAccount `api` of `ns` (about 700 bytes: the
/// burst is about streams, not bytes).
fn review(ns: &str) -> Bytes {
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns,
            "operation": "CREATE",
            "userInfo": {"username": "e2e"},
            "dryRun": false,
            "object": {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "burst", "namespace": ns, "labels": {"azure.workload.identity/use": "true"}},
                "spec": {"serviceAccountName": "api", "containers": [{"name": "app", "image": "busybox"}]}
            }
        }
    });
    Bytes::from(serde_json::to_vec(&review).unwrap())
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

fn connections(text: &str, protocol: &str) -> f64 {
    metric_sum(text, "wif_webhook_connections_total", &[("protocol", protocol)])
}

fn tls(hook: &WebhookProcess, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        rustls::pki_types::pem::PemObject::pem_slice_iter(hook.ca_pem.as_bytes()).map(Result::unwrap),
    );
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

fn addr(hook: &WebhookProcess) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], hook.port))
}

fn review_request(version: http::Version, body: Bytes) -> http::Request<Full<Bytes>> {
    let mut req = http::Request::post(format!("https://127.0.0.1{}", wif_api::MUTATE_PATH))
        .header("content-type", "application/json")
        .version(version);
    if version == http::Version::HTTP_11 {
        req = req.header("host", "127.0.0.1");
    }
    req.body(Full::new(body)).unwrap()
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn connect_h2(hook: &WebhookProcess) -> H2 {
    let tcp = tokio::net::TcpStream::connect(addr(hook)).await.unwrap();
    let stream = tls(hook, &[b"h2"])
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// 2,000 connections plus the burst's need more descriptors than some machines' soft default.
fn raise_open_files_limit(want: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current < want {
        let max = limit.maximum.unwrap_or(u64::MAX);
        assert!(
            max >= want,
            "this test needs {want} open files; the hard limit is {max}"
        );
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: limit.maximum,
            },
        )
        .unwrap();
    }
}

async fn setup(prefix: &str, args: &[&str], log_level: &str) -> (TestNs, WebhookProcess) {
    let ns = TestNs::new(prefix).await;
    ns.service_account("api", &[("azure.workload.identity/client-id", CLIENT)])
        .await;
    let hook = WebhookProcess::start(
        &ns,
        WebhookOptions {
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            log_level: log_level.to_owned(),
            ..WebhookOptions::default()
        },
    )
    .await;
    (ns, hook)
}

async fn create_mutated(ns: &TestNs, name: &str) {
    let pods = ns.api::<Pod>();
    let pod = pods
        .create(&PostParams::default(), &labelled(name, "api"))
        .await
        .unwrap_or_else(|e| panic!("creating pod {name}: {e}"));
    let tenant = WebhookOptions::default().tenant_id;
    for c in &pod.spec.as_ref().unwrap().containers {
        assert_injected(c, &tenant);
    }
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn the_api_server_negotiates_h2_and_http1_only_clients_still_work() {
    let (ns, hook) = setup("h2", &[], "info,wif_webhook=debug").await;
    for i in 0..5 {
        create_mutated(&ns, &format!("web-{i}")).await;
    }
    let text = metrics(&hook).await;
    assert!(
        connections(&text, "H2") >= 1.0,
        "the API server negotiated h2 (ALPN):\n{text}"
    );
    assert_eq!(
        connections(&text, "Http1"),
        0.0,
        "only the API server has connected, over h2:\n{text}"
    );

    // An HTTP/1.1-only client (ALPN http/1.1) on the same listener.
    let tcp = tokio::net::TcpStream::connect(addr(&hook)).await.unwrap();
    let stream = tls(&hook, &[b"http/1.1"])
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let res = h1
        .send_request(review_request(http::Version::HTTP_11, review(&ns.name)))
        .await
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_11);
    assert_eq!(res.status(), http::StatusCode::OK);
    let answer: serde_json::Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"]["patch"].is_string());
    assert_eq!(connections(&metrics(&hook).await, "Http1"), 1.0);
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn the_api_server_is_served_over_http1_when_http2_is_off() {
    let (ns, hook) = setup("h1", &["--http2=false"], "info,wif_webhook=debug").await;
    for i in 0..3 {
        create_mutated(&ns, &format!("web-{i}")).await;
    }
    let text = metrics(&hook).await;
    assert!(connections(&text, "Http1") >= 1.0, "{text}");
    assert_eq!(connections(&text, "H2"), 0.0, "{text}");
}

/// Peak RSS the webhook may reach under the burst and the slowloris. Without the in-flight
/// limit and HTTP/2's flow-control windows, 10,000 buffered reviews (9.5 KB each, decoded)
/// would take several times this.
const MAX_RSS_MIB: u64 = 160;

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn a_burst_of_10000_h2_streams_and_2000_idle_connections_are_survived_with_bounded_memory() {
    raise_open_files_limit(8192);
    let (ns, hook) = setup(
        "burst",
        &[
            "--max-in-flight",
            "32",
            "--queue-timeout",
            "100ms",
            "--handshake-timeout",
            "3s",
            "--idle-timeout",
            "5s",
        ],
        // As deployed: a line per admitted pod, none per shed request.
        "info",
    )
    .await;
    let pid = hook.process.child.id();
    let rss_before = rss_kib(pid, "VmRSS:");

    // Peak memory, sampled throughout.
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            for _ in 0..6000 {
                if !sampling.load(Ordering::Relaxed) {
                    break;
                }
                peak.fetch_max(rss_kib(pid, "VmRSS:"), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // Slowloris: 1,000 connections that never start TLS, 1,000 that finish it and never send a
    // request.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(IdleConn::Tcp(
            tokio::net::TcpStream::connect(addr(&hook)).await.unwrap(),
        ));
    }
    let connector = tls(&hook, &[b"http/1.1"]);
    for _ in 0..1000 {
        let tcp = tokio::net::TcpStream::connect(addr(&hook)).await.unwrap();
        let stream = connector
            .connect("127.0.0.1".try_into().unwrap(), tcp)
            .await
            .unwrap();
        idle.push(IdleConn::Tls(Box::new(stream)));
    }

    eprintln!("burst: slowloris of {} connections set up", idle.len());
    let t = Instant::now();
    create_mutated(&ns, "during-slowloris").await;
    eprintln!("burst: a pod created during the slowloris in {:?}", t.elapsed());
    // The burst: 40 connections of 250 streams (the server's limit per connection), so 10,000
    // reviews are in flight at the server at once.
    let mut conns = Vec::new();
    for _ in 0..40 {
        conns.push(connect_h2(&hook).await);
    }
    let started = Instant::now();
    let body = review(&ns.name);
    let burst = {
        let conns = conns.clone();
        tokio::spawn(async move {
            futures::future::join_all((0..10_000).map(|i| {
                let mut send = conns[i % conns.len()].clone();
                let body = body.clone();
                async move {
                    let res = tokio::time::timeout(
                        Duration::from_secs(60),
                        send.send_request(review_request(http::Version::HTTP_2, body)),
                    )
                    .await
                    .expect("every stream is answered: none hangs")
                    .expect("no stream is reset");
                    let status = res.status();
                    let body = res.into_body().collect().await.unwrap().to_bytes();
                    (status, body)
                }
            }))
            .await
        })
    };

    // The API server's real requests during the burst and the slowloris.
    // Pods created through the API server while the burst runs: each must be mutated, or (if the
    // API server's retries of a shed review ran out) refused with wif's overload message.
    let mut during = Vec::new();
    while !burst.is_finished() && during.len() < 20 {
        let t = Instant::now();
        let name = format!("during-{}", during.len());
        let result = ns
            .api::<Pod>()
            .create(&PostParams::default(), &labelled(&name, "api"))
            .await;
        eprintln!(
            "burst: pod {name}: {} in {:?} (burst running for {:?})",
            if result.is_ok() {
                "created".to_owned()
            } else {
                format!("{result:?}")
            },
            t.elapsed(),
            started.elapsed()
        );
        during.push(result);
    }
    let results = burst.await.unwrap();
    let created = during.iter().filter(|r| r.is_ok()).count();
    let burst_took = started.elapsed();
    eprintln!("burst: 10,000 streams answered in {burst_took:?}");
    let (mut ok, mut shed, mut late) = (0, 0, 0);
    for (status, body) in &results {
        match status.as_u16() {
            200 => {
                let answer: serde_json::Value = serde_json::from_slice(body).unwrap();
                assert_eq!(answer["response"]["allowed"], true);
                ok += 1;
            }
            429 => {
                let status: serde_json::Value = serde_json::from_slice(body).unwrap();
                let message = status["message"].as_str().unwrap_or_default();
                assert!(
                    message.contains("wif webhook overloaded"),
                    "a shed request says why: {message}"
                );
                shed += 1;
            }
            // The request timeout (10 s) answered a stream whose body this busy client did not
            // finish sending in time: bounded, not a hang.
            408 => late += 1,
            other => panic!("unexpected status {other}: {}", String::from_utf8_lossy(body)),
        }
    }
    let text = metrics(&hook).await;
    eprintln!(
        "burst: {ok} answered, {shed} shed, {late} timed out in {burst_took:?}; {created} pods \
         created through the API server meanwhile; RSS {} → peak {} MiB",
        rss_before / 1024,
        peak.load(Ordering::Relaxed) / 1024
    );
    assert_eq!(ok + shed + late, 10_000);
    // On a loaded 2-core machine the debug webhook shares its CPUs with this 10,000-stream
    // client, so an API server request can still run out of its 10 s; it must be rare, and any
    // other failure is a bug.
    let mut deadline_exceeded = 0;
    for (i, result) in during.iter().enumerate() {
        if let Err(e) = result {
            let e = e.to_string();
            if e.contains("context deadline exceeded") {
                deadline_exceeded += 1;
                continue;
            }
            assert!(
                e.contains("wif webhook overloaded"),
                "pod during-{i} failed other than with wif's overload message: {e}"
            );
        }
    }
    eprintln!("burst: {deadline_exceeded} API server requests ran out of time during the burst");
    assert!(
        created > 0,
        "the API server's requests get through during the burst"
    );
    assert!(ok > 0, "the burst is partly served");
    assert!(
        shed > 0,
        "32 slots and 100 ms of queue cannot hold 10,000 streams"
    );
    // The metric also counts the API server's shed (and retried) reviews.
    assert!(metric_sum(&text, "wif_webhook_shed_requests_total", &[]) >= f64::from(shed));
    // And one more after the burst, with the slowloris still connected.
    create_mutated(&ns, "after-burst").await;

    // The slowloris connections are closed by the server (handshake timeout 3 s, idle timeout
    // 5 s, header read timeout 10 s), not held forever.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (i, conn) in idle.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let closed = tokio::time::timeout(left, conn.read_eof()).await;
        assert!(closed.is_ok(), "idle connection {i} still open after 60 s");
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    let peak_mib = peak.load(Ordering::Relaxed).max(rss_kib(pid, "VmHWM:")) / 1024;
    assert!(
        peak_mib <= MAX_RSS_MIB,
        "peak RSS {peak_mib} MiB exceeds {MAX_RSS_MIB} MiB"
    );
    let text = metrics(&hook).await;
    assert!(
        metric_sum(
            &text,
            "wif_webhook_tls_handshakes_total",
            &[("result", "TimedOut")]
        ) >= 1000.0,
        "the 1,000 connections without TLS timed out:\n{text}"
    );
    drop(conns);
}

enum IdleConn {
    Tcp(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl IdleConn {
    /// Reads until the server closes the connection (a TLS alert or close_notify counts).
    async fn read_eof(&mut self) {
        let mut buf = [0u8; 1024];
        loop {
            let n = match self {
                Self::Tcp(s) => s.read(&mut buf).await,
                Self::Tls(s) => s.read(&mut buf).await,
            };
            match n {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
}
