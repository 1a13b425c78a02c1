//! The plain-HTTP admin server: `/healthz` (the process is alive), `/readyz` (what the component
//! says it still lacks, 503 until then), `/metrics` (OpenMetrics text of a prometheus-client
//! registry). It never serves secrets.

use std::sync::{Arc, Mutex, PoisonError};

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

/// Readiness, as `/readyz` reports it.
pub trait Readiness: Send + Sync + 'static {
    /// `Ok` when ready; otherwise what is missing.
    fn check(&self) -> Result<(), String>;
}

impl<F: Fn() -> Result<(), String> + Send + Sync + 'static> Readiness for F {
    fn check(&self) -> Result<(), String> {
        self()
    }
}

/// Called before each scrape, to refresh gauges computed on demand.
pub(crate) type BeforeScrape = Arc<dyn Fn() + Send + Sync>;

#[derive(Clone)]
struct AdminState {
    registry: Arc<Mutex<Registry>>,
    ready: Arc<dyn Readiness>,
    before_scrape: BeforeScrape,
}

/// The admin router: `/healthz`, `/readyz`, `/metrics`.
pub fn router(
    registry: Arc<Mutex<Registry>>,
    ready: Arc<dyn Readiness>,
    before_scrape: BeforeScrape,
) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            registry,
            ready,
            before_scrape,
        })
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    match s.ready.check() {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (s.before_scrape)();
    let mut out = String::new();
    // A panic while the registry was held leaves consistent counters: serve them.
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

/// Serves `router` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    use axum::body::Body;
    use prometheus_client::metrics::gauge::Gauge;
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
        let gauge = Gauge::<i64>::default();
        registry.register("wif_test_leader", "a test gauge", gauge.clone());
        let registry = Arc::new(Mutex::new(registry));
        let ready_flag = Arc::new(AtomicBool::new(false));
        let flag = ready_flag.clone();
        let scrapes = Arc::new(AtomicU32::new(0));
        let counted = scrapes.clone();
        let r = router(
            registry,
            Arc::new(move || {
                if flag.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("issuer not discovered yet".into())
                }
            }),
            Arc::new(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                gauge.set(1);
            }),
        );
        assert_eq!(get(r.clone(), "/healthz").await.0, StatusCode::OK);
        let (status, body) = get(r.clone(), "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("issuer"));
        ready_flag.store(true, Ordering::SeqCst);
        assert_eq!(get(r.clone(), "/readyz").await.0, StatusCode::OK);
        let (status, body) = get(r, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains("wif_test_leader 1"),
            "the gauge set before the scrape: {body}"
        );
        assert_eq!(scrapes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_taken_address_is_named() {
        let taken = crate::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let err = crate::bind(addr).await.unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
