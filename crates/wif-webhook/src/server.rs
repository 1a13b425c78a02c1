//! The HTTPS admission server; the plain-HTTP admin server (health, readiness, metrics) is
//! `wif-runtime`'s, re-exported here.

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{DefaultBodyLimit, State},
    http::{Request, StatusCode},
    response::IntoResponse,
    routing::{get, post},
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

pub use wif_runtime::{
    admin::{Readiness, router as admin_router, serve as serve_plain},
    bind,
};

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
