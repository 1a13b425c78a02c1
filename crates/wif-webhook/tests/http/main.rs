//! The admission server at the HTTP level: decoding, status codes, answers, metrics, TLS reload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bad_requests;
mod h2;
mod probes;
mod review;
mod tls;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    http::{Request, StatusCode},
};
use base64::Engine;
use http_body_util::BodyExt;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use wif_api::{Cloud, MutationConfig};
use wif_webhook::{
    admission::AdmissionState,
    metrics::Metrics,
    selfcert::{generate_ca, issue_cert},
    server::{self, Limits},
    service_accounts::{cached, static_cache},
    tls::{CertFiles, CertStore},
};

const REVIEW: &str = include_str!("../data/review-pod.json");

fn state() -> (AdmissionState, Arc<Mutex<Registry>>) {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let cache = static_cache([
        cached(
            "payments",
            "payments-api",
            &[("azure.workload.identity/client-id", "cid-1")],
        ),
        cached(
            "payments",
            "default",
            &[("azure.workload.identity/client-id", "cid-default")],
        ),
    ]);
    let state = AdmissionState {
        config: Arc::new(MutationConfig::new("tenant-1", Cloud::Public)),
        service_accounts: cache,
        metrics,
    };
    (state, Arc::new(Mutex::new(registry)))
}

fn router(limits: &Limits) -> (Router, Arc<Mutex<Registry>>) {
    let (state, registry) = state();
    (server::admission_router(state, limits), registry)
}

async fn post(router: &Router, body: impl Into<Body>) -> (StatusCode, Vec<u8>) {
    let req = Request::post("/mutate-v1-pod")
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    let res = router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    (
        status,
        res.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
}

fn review() -> Value {
    serde_json::from_str(REVIEW).unwrap()
}

fn patch_of(answer: &Value) -> Vec<Value> {
    let b64 = answer["response"]["patch"].as_str().expect("a patch");
    serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
}

async fn answer(router: &Router, review: &Value) -> Value {
    let (status, body) = post(router, serde_json::to_vec(review).unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

// === over a real socket ===

struct Pki {
    ca: wif_webhook::selfcert::PemPair,
}

impl Pki {
    fn new() -> Self {
        Self {
            ca: generate_ca(
                "test-ca",
                time::OffsetDateTime::now_utc(),
                Duration::from_secs(3600),
            )
            .unwrap(),
        }
    }
    fn leaf(&self, name: &str) -> wif_webhook::selfcert::PemPair {
        issue_cert(
            &self.ca.cert_pem,
            &self.ca.key_pem,
            &[name.to_owned(), "localhost".to_owned()],
            &["127.0.0.1".parse().unwrap()],
            time::OffsetDateTime::now_utc(),
            Duration::from_secs(3600),
        )
        .unwrap()
    }
    fn client(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca.cert_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let cfg =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

use rustls::pki_types::pem::PemObject;

async fn start(dir: &std::path::Path, stop: CancellationToken) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let store = CertStore::new();
    let files = CertFiles {
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
    };
    files.load_into(&store).unwrap();
    tokio::spawn(files.watch(store.clone(), Duration::from_millis(50), stop.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (state, _) = state();
    let limits = Limits {
        drain_timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    let router = server::admission_router(state, &limits);
    let task = tokio::spawn(server::serve_tls(listener, store, router, limits, stop));
    (addr, task)
}

fn write_pair(dir: &std::path::Path, pair: &wif_webhook::selfcert::PemPair) {
    // Key first, then certificate: a poll between the two must keep the old pair.
    std::fs::write(dir.join("tls.key"), &pair.key_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &pair.cert_pem).unwrap();
}

type Conn = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

async fn connect(addr: SocketAddr, pki: &Pki) -> (Conn, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .client()
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    (send, leaf)
}
