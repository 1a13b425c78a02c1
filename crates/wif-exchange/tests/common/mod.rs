//! An in-process HTTPS stand-in for Entra's token endpoint (axum over tokio-rustls, with an
//! rcgen CA), plus raw and dead endpoints for the failure cases.
#![allow(dead_code, clippy::unwrap_used)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Form, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use wif_exchange::{RetryPolicy, WorkloadIdentityCredential, WorkloadIdentityCredentialBuilder};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
pub const SCOPE: &str = "https://vault.azure.net/.default";
pub const ASSERTION: &str = "eyJhbGciOiJSUzI1NiJ9.SECRET-ASSERTION-PAYLOAD.sig";

/// A CA and a server certificate for 127.0.0.1 / localhost.
pub struct Pki {
    pub ca_pem: String,
    pub server_config: Arc<rustls::ServerConfig>,
}

impl Pki {
    pub fn new() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "wif-exchange test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "localhost");
        let leaf_cert = leaf.signed_by(&leaf_key, &ca).unwrap();
        let key = PrivateKeyDer::from_pem_slice(leaf_key.serialize_pem().as_bytes()).unwrap();
        let mut cfg =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![CertificateDer::from(leaf_cert.der().to_vec())], key)
                .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            ca_pem: ca.pem(),
            server_config: Arc::new(cfg),
        }
    }
}

/// What the server saw.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub tenant: String,
    pub form: HashMap<String, String>,
    pub headers: HeaderMap,
    pub at: Instant,
}

/// What the server answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Duration,
}

impl Reply {
    pub fn token(access_token: &str, expires_in: u64, refresh_in: Option<u64>) -> Self {
        let mut body = serde_json::json!({
            "token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": access_token,
        });
        if let Some(r) = refresh_in {
            body["refresh_in"] = r.into();
        }
        Self::json(200, body)
    }

    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json; charset=utf-8".into())],
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    /// Entra's error shape.
    pub fn entra(status: u16, error: &str, code: u32, message: &str) -> Self {
        Self::json(
            status,
            serde_json::json!({
                "error": error,
                "error_description": format!("AADSTS{code}: {message}\r\nTrace ID: trace-{code}\r\nCorrelation ID: corr-{code}\r\nTimestamp: 2026-01-01 00:00:00Z"),
                "error_codes": [code],
                "timestamp": "2026-01-01 00:00:00Z",
                "trace_id": format!("trace-{code}"),
                "correlation_id": format!("corr-{code}"),
                "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
            }),
        )
    }

    pub fn raw(status: u16, content_type: &str, body: &str) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Behavior = Box<dyn Fn(usize, &Recorded) -> Reply + Send + Sync>;

pub struct ServerState {
    count: AtomicUsize,
    requests: Mutex<Vec<Recorded>>,
    behavior: Mutex<Arc<Behavior>>,
}

/// The test token endpoint.
pub struct TestServer {
    pub authority: String,
    pub addr: SocketAddr,
    pub pki: Pki,
    state: Arc<ServerState>,
}

impl TestServer {
    /// Starts a server answering every request with `behavior(n, request)` (`n` counts from 1).
    pub async fn start(behavior: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static) -> Self {
        let pki = Pki::new();
        let state = Arc::new(ServerState {
            count: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            behavior: Mutex::new(Arc::new(Box::new(behavior))),
        });
        let app = Router::new()
            .route("/{tenant}/oauth2/v2.0/token", post(token))
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            authority: format!("https://127.0.0.1:{}/", addr.port()),
            addr,
            pki,
            state,
        }
    }

    /// Always answers a token `token-<n>` valid for an hour.
    pub async fn issuing() -> Self {
        Self::start(|n, _| Reply::token(&format!("token-{n}"), 3600, None)).await
    }

    pub fn set_behavior(&self, behavior: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static) {
        *self.state.behavior.lock().unwrap() = Arc::new(Box::new(behavior));
    }

    pub fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// A builder aimed at this server, trusting its CA, with fast retries.
    pub fn builder(&self) -> WorkloadIdentityCredentialBuilder {
        builder_for(&self.authority)
            .add_root_certificates_pem(self.pki.ca_pem.as_bytes())
            .retry_policy(fast_retries(3))
            .timeout(Duration::from_secs(10))
    }

    pub fn credential(&self) -> WorkloadIdentityCredential {
        self.builder().build().unwrap()
    }
}

/// A builder for the test tenant, client and assertion, aimed at `authority`.
pub fn builder_for(authority: impl Into<String>) -> WorkloadIdentityCredentialBuilder {
    WorkloadIdentityCredential::builder()
        .tenant_id(TENANT)
        .client_id(CLIENT)
        .assertion(ASSERTION)
        .authority_host(authority)
}

pub fn fast_retries(n: u32) -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(n)
        .with_initial_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_secs(5))
}

async fn token(
    State(state): State<Arc<ServerState>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let rec = Recorded {
        tenant,
        form,
        headers,
        at: Instant::now(),
    };
    let n = state.count.fetch_add(1, Ordering::SeqCst) + 1;
    state.requests.lock().unwrap().push(rec.clone());
    let behavior = state.behavior.lock().unwrap().clone();
    let reply = behavior(n, &rec);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = (StatusCode::from_u16(reply.status).unwrap(), reply.body).into_response();
    for (k, v) in reply.headers {
        resp.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            axum::http::HeaderValue::from_str(&v).unwrap(),
        );
    }
    resp
}

/// A TLS endpoint that reads one request and writes `response` verbatim, then closes: for cut-off
/// and malformed answers.
pub async fn raw_server(pki: &Pki, response: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config.clone());
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head and a body of Content-Length bytes.
                loop {
                    let Ok(n) = tls.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = tls.write_all(response).await;
                let _ = tls.flush().await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (format!("https://127.0.0.1:{}/", addr.port()), count)
}

/// A TCP endpoint that accepts connections and never says a word.
pub async fn dead_server() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    (format!("https://127.0.0.1:{}/", addr.port()), count)
}
