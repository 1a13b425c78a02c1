//! The HTTPS admission server and the plain-HTTP admin server (health, readiness, metrics).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, State},
    http::{Request, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

use crate::{
    admission::{AdmissionState, ReviewError, handle},
    tls::CertStore,
};

/// Limits of the admission listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body accepted, bytes.
    pub max_body_bytes: usize,
    /// Time allowed for a TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed to read request headers.
    pub header_timeout: Duration,
    /// Time allowed for a whole request.
    pub request_timeout: Duration,
    /// Time given to in-flight requests on shutdown.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // The API server caps objects at ~1.5 MiB; a review adds little around the pod.
            max_body_bytes: 3 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(25),
        }
    }
}

/// The admission router: `POST /mutate-v1-pod` plus any extra routes (the validating endpoint).
pub fn admission_router(state: AdmissionState, limits: &Limits) -> Router {
    let max = limits.max_body_bytes;
    Router::new()
        .route(
            wif_api::MUTATE_PATH,
            post(
                move |State(state): State<AdmissionState>, req: Request<Body>| async move {
                    match axum::body::to_bytes(req.into_body(), max).await {
                        Ok(body) => handle(&state, body).await,
                        Err(_) => {
                            state.metrics.observe(crate::metrics::Outcome::Invalid, 0.0);
                            ReviewError::TooLarge(max).into_response()
                        }
                    }
                },
            ),
        )
        .route("/healthz", get(|| async { "ok" }))
        // The limit is enforced by `to_bytes`, which answers 400 rather than axum's 413.
        .layer(DefaultBodyLimit::disable())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .with_state(state)
}

/// Serves `router` over TLS on `listener` until `stop`, then stops accepting and waits up to
/// `limits.drain_timeout` for in-flight requests.
pub async fn serve_tls(
    listener: TcpListener,
    certs: Arc<CertStore>,
    router: Router,
    limits: Limits,
    stop: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(certs.server_config());
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    // EMFILE and friends: back off rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(router.clone());
        let http = http.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = limits.handshake_timeout;
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = http.serve_connection(TokioIo::new(tls), service);
            if let Err(error) = watcher.watch(conn).await {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(connections = graceful.count(), "draining in-flight requests");
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout reached; closing remaining connections");
    }
}

/// Readiness, as seen by `/readyz`.
pub trait Readiness: Send + Sync + 'static {
    /// `Ok` when ready; otherwise what is missing.
    fn check(&self) -> Result<(), String>;
}

impl<F: Fn() -> Result<(), String> + Send + Sync + 'static> Readiness for F {
    fn check(&self) -> Result<(), String> {
        self()
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Mutex<Registry>>,
    ready: Arc<dyn Readiness>,
    before_scrape: Arc<dyn Fn() + Send + Sync>,
}

/// The admin router: `/healthz`, `/readyz`, `/metrics`.
pub fn admin_router(
    registry: Arc<Mutex<Registry>>,
    ready: Arc<dyn Readiness>,
    before_scrape: Arc<dyn Fn() + Send + Sync>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AdminState>| async move {
                match s.ready.check() {
                    Ok(()) => (StatusCode::OK, "ok".to_owned()),
                    Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }),
        )
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            registry,
            ready,
            before_scrape,
        })
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (s.before_scrape)();
    let mut out = String::new();
    let encoded = match s.registry.lock() {
        Ok(registry) => prometheus_client::encoding::text::encode(&mut out, &registry),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    match encoded {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Serves plain HTTP until `stop` (admin endpoints; never secrets).
pub async fn serve_plain(
    listener: TcpListener,
    router: Router,
    stop: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// Binds a TCP listener, naming the address on failure.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("failed to listen on {addr}: {e}")))
}
