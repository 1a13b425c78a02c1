//! The plain-HTTP admin server: `/healthz` (the process is alive), `/readyz` (settings
//! resolved, and — on the leader — the caches synced), `/metrics` (OpenMetrics text).

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// What `/readyz` reports: `Ok` or the reason for not being ready.
pub type ReadyFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    registry: Arc<Mutex<Registry>>,
    ready: ReadyFn,
    before_scrape: Arc<dyn Fn() + Send + Sync>,
}

/// The admin router.
pub fn router(
    registry: Arc<Mutex<Registry>>,
    ready: ReadyFn,
    before_scrape: Arc<dyn Fn() + Send + Sync>,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<AdminState>| async move {
                match (s.ready)() {
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
    let registry = s.registry.lock().unwrap_or_else(PoisonError::into_inner);
    match prometheus_client::encoding::text::encode(&mut out, &registry) {
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

/// Binds `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Serves `router` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let result = axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(error) = result {
        tracing::warn!(%error, "admin server stopped");
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use tower::ServiceExt;

    use super::*;

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(axum::http::Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let mut registry = Registry::default();
        let metrics = crate::metrics::Metrics::new(&mut registry);
        metrics.leader.set(1);
        let registry = Arc::new(Mutex::new(registry));
        let ready_flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ready_flag.clone();
        let r = router(
            registry,
            Arc::new(move || {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("issuer not discovered yet".into())
                }
            }),
            Arc::new(|| {}),
        );
        assert_eq!(get(r.clone(), "/healthz").await.0, StatusCode::OK);
        let (status, body) = get(r.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("issuer"));
        ready_flag.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(get(r.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, body) = get(r, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("wif_controller_leader 1"), "{body}");
    }
}
