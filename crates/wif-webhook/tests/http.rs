//! The admission server at the HTTP level: decoding, status codes, answers, metrics, TLS reload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

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

const REVIEW: &str = include_str!("data/review-pod.json");

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

#[tokio::test]
async fn valid_review_gets_a_json_patch_for_the_pod() {
    let (router, _) = router(&Limits::default());
    let a = answer(&router, &review()).await;
    assert_eq!(a["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(a["kind"], "AdmissionReview");
    assert_eq!(a["response"]["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(a["response"]["allowed"], true);
    assert_eq!(a["response"]["patchType"], "JSONPatch");
    let mut pod = review()["request"]["object"].clone();
    json_patch::patch(
        &mut pod,
        &serde_json::from_value::<json_patch::Patch>(Value::Array(patch_of(&a))).unwrap(),
    )
    .unwrap();
    for c in pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["spec"]["initContainers"].as_array().unwrap())
    {
        let env = c["env"].as_array().unwrap();
        assert!(
            env.contains(&json!({"name": "AZURE_CLIENT_ID", "value": "cid-1"})),
            "{}",
            c["name"]
        );
        assert!(env.contains(&json!({"name": "AZURE_TENANT_ID", "value": "tenant-1"})));
        assert!(
            c["volumeMounts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["name"] == "azure-identity-token")
        );
    }
    assert!(
        pod["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == "azure-identity-token")
    );
}

#[tokio::test]
async fn namespace_comes_from_the_request() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], true);
    r["request"]["namespace"] = json!("elsewhere");
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], false);
    assert!(
        a["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("elsewhere/payments-api")
    );
}

#[tokio::test]
async fn missing_service_account_is_refused_naming_it() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["spec"]["serviceAccountName"] = json!("ghost");
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], false);
    let msg = a["response"]["status"]["message"].as_str().unwrap();
    assert!(msg.contains("ServiceAccount payments/ghost not found"), "{msg}");
}

#[tokio::test]
async fn empty_service_account_name_means_default() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["spec"]["serviceAccountName"] = json!("");
    let a = answer(&router, &r).await;
    let patch = serde_json::to_string(&patch_of(&a)).unwrap();
    assert!(patch.contains("cid-default"), "{patch}");
}

#[tokio::test]
async fn unlabelled_pod_is_allowed_without_a_patch() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["metadata"]["labels"]["azure.workload.identity/use"] = json!("false");
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], true);
    assert!(a["response"].get("patch").is_none());
}

#[tokio::test]
async fn policy_refusal_is_a_denied_review_with_the_reason() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["metadata"]["annotations"]["azure.workload.identity/service-account-token-expiration"] =
        json!("60");
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], false);
    assert_eq!(a["response"]["status"]["code"], 400);
    assert!(
        a["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("between 3600 and 86400")
    );
}

#[tokio::test]
async fn warnings_reach_the_review() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["metadata"]["annotations"]["azure.workload.identity/clientId"] = json!("x");
    let a = answer(&router, &r).await;
    let w = a["response"]["warnings"].as_array().expect("warnings");
    assert!(
        w[0].as_str()
            .unwrap()
            .contains("did you mean azure.workload.identity/client-id")
    );
}

#[tokio::test]
async fn update_operations_are_allowed_untouched() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["operation"] = json!("UPDATE");
    r["request"]["oldObject"] = r["request"]["object"].clone();
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], true);
    assert!(a["response"].get("patch").is_none());
}

async fn assert_bad_request(body: impl Into<Body>, needle: &str) {
    let (router, _) = router(&Limits {
        max_body_bytes: 64 * 1024,
        ..Limits::default()
    });
    let (status, body) = post(&router, body).await;
    let text = String::from_utf8_lossy(&body);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert!(text.contains(needle), "{text:?} should mention {needle:?}");
}

#[tokio::test]
async fn malformed_bodies_get_400_with_a_message() {
    assert_bad_request("", "not an admission.k8s.io/v1 AdmissionReview").await;
    assert_bad_request("{\"apiVersion\":", "not an admission.k8s.io/v1 AdmissionReview").await;
    assert_bad_request(
        &REVIEW[..REVIEW.len() / 2],
        "not an admission.k8s.io/v1 AdmissionReview",
    )
    .await;
    assert_bad_request("[1,2,3]", "AdmissionReview").await;
    assert_bad_request(vec![0xff, 0xfe, 0x00], "AdmissionReview").await;
}

#[tokio::test]
async fn wrong_version_gets_400() {
    let mut r = review();
    r["apiVersion"] = json!("admission.k8s.io/v1beta1");
    assert_bad_request(serde_json::to_vec(&r).unwrap(), "admission.k8s.io/v1beta1").await;
}

#[tokio::test]
async fn wrong_kind_gets_400() {
    let mut r = review();
    r["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    assert_bad_request(
        serde_json::to_vec(&r).unwrap(),
        "admits v1 Pods, not apps/v1 Deployment",
    )
    .await;
}

#[tokio::test]
async fn review_without_object_gets_400() {
    let mut r = review();
    r["request"].as_object_mut().unwrap().remove("object");
    assert_bad_request(serde_json::to_vec(&r).unwrap(), "has no object").await;
    let mut r = review();
    r.as_object_mut().unwrap().remove("request");
    assert_bad_request(serde_json::to_vec(&r).unwrap(), "no request").await;
}

#[tokio::test]
async fn oversized_body_gets_400() {
    let mut r = review();
    r["request"]["object"]["metadata"]["annotations"]["huge"] = json!("x".repeat(100 * 1024));
    assert_bad_request(serde_json::to_vec(&r).unwrap(), "exceeds 65536 bytes").await;
}

#[tokio::test]
async fn odd_names_and_huge_annotations_do_not_panic() {
    let (router, _) = router(&Limits::default());
    let mut r = review();
    r["request"]["object"]["metadata"]["generateName"] = json!("ünï/cødé\u{0}-");
    r["request"]["object"]["metadata"]["annotations"]["azure.workload.identity/skip-containers"] =
        json!(";".repeat(100_000));
    let a = answer(&router, &r).await;
    assert_eq!(a["response"]["allowed"], true);
}

#[tokio::test]
async fn metrics_count_requests_by_outcome() {
    let (state, registry) = state();
    let router = server::admission_router(state.clone(), &Limits::default());
    answer(&router, &review()).await;
    let _ = post(&router, "garbage").await;
    let admin = server::admin_router(registry, Arc::new(|| Ok(())), Arc::new(|| {}));
    let res = admin
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
    assert!(
        text.contains("wif_webhook_admission_requests_total{outcome=\"Mutated\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("wif_webhook_admission_requests_total{outcome=\"Invalid\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("wif_webhook_admission_duration_seconds_count 2"),
        "{text}"
    );
}

#[tokio::test]
async fn readyz_reports_what_is_missing() {
    let admin = server::admin_router(
        Arc::new(Mutex::new(Registry::default())),
        Arc::new(|| Err("ServiceAccount cache not synced yet".to_owned())),
        Arc::new(|| {}),
    );
    let res = admin
        .clone()
        .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ServiceAccount cache not synced yet");
    let res = admin
        .oneshot(Request::get("/healthz").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
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

async fn mutate_over(send: &mut Conn) -> StatusCode {
    let req = Request::post("/mutate-v1-pod")
        .header("host", "localhost")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            REVIEW.as_bytes(),
        )))
        .unwrap();
    send.send_request(req).await.unwrap().status()
}

#[tokio::test]
async fn certificate_change_is_served_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    let first = pki.leaf("first.example");
    write_pair(dir.path(), &first);
    let stop = CancellationToken::new();
    let (addr, task) = start(dir.path(), stop.clone()).await;

    let (mut old_conn, leaf1) = connect(addr, &pki).await;
    assert_eq!(mutate_over(&mut old_conn).await, StatusCode::OK);

    let second = pki.leaf("second.example");
    write_pair(dir.path(), &second);
    let mut leaf2 = leaf1.clone();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        leaf2 = connect(addr, &pki).await.1;
        if leaf2 != leaf1 {
            break;
        }
    }
    assert_ne!(leaf1, leaf2, "the new certificate is served to new connections");
    let want = rustls::pki_types::CertificateDer::from_pem_slice(second.cert_pem.as_bytes()).unwrap();
    assert_eq!(leaf2, want.to_vec());
    // The connection opened before the change still works.
    assert_eq!(mutate_over(&mut old_conn).await, StatusCode::OK);

    // A broken pair keeps the current certificate.
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(connect(addr, &pki).await.1, leaf2);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_stops_accepting_and_finishes_in_flight_requests() {
    use futures::SinkExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new();
    write_pair(dir.path(), &pki.leaf("x.example"));
    let stop = CancellationToken::new();
    let (addr, task) = start(dir.path(), stop.clone()).await;

    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .client()
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, http_body_util::StreamBody<_>>(
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (mut tx, rx) =
        futures::channel::mpsc::channel::<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>(4);
    let req = Request::post("/mutate-v1-pod")
        .header("host", "localhost")
        .header("content-length", REVIEW.len())
        .body(http_body_util::StreamBody::new(rx))
        .unwrap();
    let response = tokio::spawn(async move { send.send_request(req).await.map(|r| r.status()) });
    let (head, tail) = REVIEW.as_bytes().split_at(REVIEW.len() / 2);
    tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(head))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Shutdown starts while the request body is still arriving.
    stop.cancel();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no new connections once stopping"
    );
    tx.send(Ok(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(tail))))
        .await
        .unwrap();
    drop(tx);
    assert_eq!(
        response.await.unwrap().unwrap(),
        StatusCode::OK,
        "the in-flight request is answered"
    );
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("drained in time")
        .unwrap();
}

// === HTTP/2, ALPN, idle connections and load shedding ===

impl Pki {
    fn client_alpn(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca.cert_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

/// Serves the admission router (with load shedding) with `limits`; returns the address, the
/// connection metrics and the registry holding them.
async fn serve_metered(
    limits: Limits,
    router: Option<Router>,
    stop: CancellationToken,
) -> (SocketAddr, Arc<wif_webhook::metrics::ConnMetrics>, Pki) {
    let pki = Pki::new();
    let leaf = pki.leaf("localhost");
    let store = CertStore::new();
    store
        .set_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), "test")
        .unwrap();
    let mut registry = Registry::default();
    let metrics = Arc::new(wif_webhook::metrics::ConnMetrics::new(&mut registry));
    let router = router.unwrap_or_else(|| server::admission_router(state().0, &limits));
    let router = server::shed_load(router, &limits, metrics.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(server::serve_tls_metered(
        listener,
        store,
        router,
        limits,
        metrics.clone(),
        stop,
    ));
    (addr, metrics, pki)
}

fn review_request() -> Request<http_body_util::Full<bytes::Bytes>> {
    Request::post("https://localhost/mutate-v1-pod")
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            REVIEW.as_bytes(),
        )))
        .unwrap()
}

type H2 = hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>;

async fn connect_h2(addr: SocketAddr, pki: &Pki) -> (H2, tokio::task::JoinHandle<()>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .client_alpn(&[b"h2", b"http/1.1"])
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, task)
}

fn counter(
    family: &prometheus_client::metrics::family::Family<
        wif_webhook::metrics::ProtocolLabels,
        prometheus_client::metrics::counter::Counter,
    >,
    protocol: wif_webhook::metrics::Protocol,
) -> u64 {
    family
        .get_or_create(&wif_webhook::metrics::ProtocolLabels { protocol })
        .get()
}

#[tokio::test]
async fn h2_and_http1_are_negotiated_by_alpn_and_both_mutate() {
    use wif_webhook::metrics::Protocol;
    let stop = CancellationToken::new();
    let (addr, metrics, pki) = serve_metered(Limits::default(), None, stop.clone()).await;

    // HTTP/2: many reviews multiplexed on one connection.
    let (send, _conn) = connect_h2(addr, &pki).await;
    let answers = futures::future::join_all((0..20).map(|_| {
        let mut send = send.clone();
        async move {
            let res = send.send_request(review_request()).await.unwrap();
            assert_eq!(res.version(), http::Version::HTTP_2);
            let status = res.status();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice::<Value>(&body).unwrap())
        }
    }))
    .await;
    for (status, answer) in answers {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer["response"]["allowed"], true);
        assert!(answer["response"]["patch"].is_string());
    }

    // HTTP/1.1 only (an older client).
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .client_alpn(&[b"http/1.1"])
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut h1, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = review_request();
    req.headers_mut()
        .insert("host", http::HeaderValue::from_static("localhost"));
    let res = h1.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_11);
    assert_eq!(res.status(), StatusCode::OK);

    assert_eq!(
        counter(&metrics.connections, Protocol::H2),
        1,
        "one h2 connection for 20 reviews"
    );
    assert_eq!(counter(&metrics.connections, Protocol::Http1), 1);
    assert_eq!(
        metrics
            .open_connections
            .get_or_create(&wif_webhook::metrics::ProtocolLabels {
                protocol: Protocol::H2
            })
            .get(),
        1
    );
    assert_eq!(
        metrics
            .handshakes
            .get_or_create(&wif_webhook::metrics::HandshakeLabels {
                result: wif_webhook::metrics::Handshake::Ok
            })
            .get(),
        2
    );
    stop.cancel();
}

#[tokio::test]
async fn http2_can_be_turned_off_and_then_only_http1_is_offered() {
    let stop = CancellationToken::new();
    let limits = Limits {
        http2: false,
        ..Limits::default()
    };
    let (addr, metrics, pki) = serve_metered(limits, None, stop.clone()).await;
    // A client offering both gets HTTP/1.1.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = pki
        .client_alpn(&[b"h2", b"http/1.1"])
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    // A client offering only h2 finds no common protocol.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let refused = pki
        .client_alpn(&[b"h2"])
        .connect("localhost".try_into().unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "no h2 when turned off");
    for _ in 0..50 {
        if metrics
            .handshakes
            .get_or_create(&wif_webhook::metrics::HandshakeLabels {
                result: wif_webhook::metrics::Handshake::Failed,
            })
            .get()
            == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        metrics
            .handshakes
            .get_or_create(&wif_webhook::metrics::HandshakeLabels {
                result: wif_webhook::metrics::Handshake::Failed
            })
            .get(),
        1
    );
    stop.cancel();
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_with_goaway() {
    let stop = CancellationToken::new();
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let (addr, metrics, pki) = serve_metered(limits, None, stop.clone()).await;
    let (mut send, conn) = connect_h2(addr, &pki).await;
    let res = send.send_request(review_request()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop(res);
    // The server ends the connection; the client's connection task completes.
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("idle connection closed by the server")
        .unwrap();
    for _ in 0..100 {
        let open = metrics
            .open_connections
            .get_or_create(&wif_webhook::metrics::ProtocolLabels {
                protocol: wif_webhook::metrics::Protocol::H2,
            })
            .get();
        if open == 0 {
            stop.cancel();
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the open-connections gauge never went back to 0");
}

#[tokio::test]
async fn requests_beyond_capacity_are_shed_with_429_and_a_clear_status() {
    let stop = CancellationToken::new();
    // Each request waits for a permit of `gate`, so the test decides when they finish.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let slow = {
        let gate = gate.clone();
        Router::new().route(
            "/mutate-v1-pod",
            axum::routing::post(move || {
                let gate = gate.clone();
                async move {
                    gate.acquire().await.unwrap().forget();
                    "done"
                }
            }),
        )
    };
    let limits = Limits {
        max_in_flight: 2,
        queue_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let (addr, metrics, pki) = serve_metered(limits, Some(slow), stop.clone()).await;
    let (send, _conn) = connect_h2(addr, &pki).await;
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut send = send.clone();
            tokio::spawn(async move { send.send_request(review_request()).await.unwrap().status() })
        })
        .collect();
    for _ in 0..100 {
        if metrics.in_flight.get() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metrics.in_flight.get(), 2, "both slots taken");

    let mut third = send.clone();
    let res = tokio::time::timeout(Duration::from_secs(5), third.send_request(review_request()))
        .await
        .expect("a shed request is answered, not left hanging")
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "1");
    let status: Value = serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["code"], 429);
    assert_eq!(status["reason"], "TooManyRequests");
    let message = status["message"].as_str().unwrap();
    assert!(message.contains("wif webhook overloaded"), "{message}");
    assert!(message.contains("2 admission requests"), "{message}");
    assert_eq!(metrics.shed.get(), 1);

    // Capacity frees up: the held requests finish and new ones get through.
    gate.add_permits(2);
    for h in held {
        assert_eq!(h.await.unwrap(), StatusCode::OK);
    }
    let mut fourth = send.clone();
    let waiting = tokio::spawn(async move { fourth.send_request(review_request()).await.unwrap().status() });
    gate.add_permits(1);
    assert_eq!(waiting.await.unwrap(), StatusCode::OK);
    assert_eq!(metrics.shed.get(), 1);
    stop.cancel();
}
