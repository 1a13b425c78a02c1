//! Router assembly, the fault/counter/trace layer, and the TLS accept loop.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Json, Router,
    extract::{ConnectInfo, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, server::graceful::GracefulShutdown};
use serde_json::json;
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::{
    admin,
    app::AppState,
    arm, entra,
    faults::{Api, Decision},
    graph,
    wire::{AadError, ArmError, GraphError, client_request_id},
};

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may run after shutdown is asked.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Every route of the emulator.
pub(crate) fn router(state: AppState) -> Router {
    let admin = Router::new()
        .route("/admin/health", get(admin::health))
        .route("/admin/state", get(admin::state))
        .route("/admin/seed", post(admin::seed))
        .route("/admin/token", post(admin::token))
        .route("/admin/faults", get(admin::get_faults).put(admin::put_faults))
        .route(
            "/admin/settings",
            get(admin::get_settings).patch(admin::patch_settings),
        )
        .route("/admin/counters", get(admin::counters))
        .route("/admin/reset", post(admin::reset))
        .route("/admin/propagate", post(admin::propagate))
        .layer(middleware::from_fn(admin::loopback_only));
    Router::new()
        .merge(admin)
        .route("/graph", any(graph::handle))
        .route("/graph/{*rest}", any(graph::handle))
        .route("/arm", any(arm::handle))
        .route("/arm/{*rest}", any(arm::handle))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(entra::openid_configuration),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(entra::jwks))
        .route("/{tenant}/discovery/keys", get(entra::jwks))
        .route("/{tenant}/discovery/instance", get(entra::instance_discovery))
        .route(
            "/{tenant}/oauth2/v2.0/token",
            post(entra::token).get(entra::token_get),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), faults_and_trace))
        .with_state(state)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "not_found", "error_description": "No such endpoint on the wif emulator." })),
    )
        .into_response()
}

/// Counts the request, injects faults and latency, and logs one line per request (path only:
/// query strings and bodies may carry tokens).
async fn faults_and_trace(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let Some(api) = Api::classify(&path) else {
        return next.run(req).await;
    };
    let started = std::time::Instant::now();
    let (decision, latency) = app.faults.decide(api);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let request_id = client_request_id(req.headers());
    let response = match decision {
        Decision::Pass => next.run(req).await,
        Decision::Throttle { retry_after_seconds } => throttled(api, retry_after_seconds, request_id),
        Decision::ServerError { status } => server_error(api, status, request_id),
    };
    tracing::info!(
        api = api.name(),
        method = %method,
        path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        injected = !matches!(decision, Decision::Pass),
        "request"
    );
    response
}

fn throttled(api: Api, retry_after: f64, request_id: Option<String>) -> Response {
    match api {
        Api::Token | Api::Discovery => {
            let mut err = AadError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                90055,
                "There are too many incoming requests. Retry after the time given in the Retry-After header.",
            )
            .with_correlation(request_id);
            err.retry_after = Some(retry_after);
            err.into_response()
        }
        Api::Graph => {
            let mut err = GraphError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Please retry again later.",
            )
            .with_request_id(request_id);
            err.retry_after = Some(retry_after);
            err.into_response()
        }
        Api::Arm => {
            let mut err = ArmError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                format!(
                    "The request is being throttled. Please retry after {} seconds.",
                    crate::wire::retry_after_value(retry_after)
                ),
            );
            err.retry_after = Some(retry_after);
            err.into_response()
        }
    }
}

fn server_error(api: Api, status: u16, request_id: Option<String>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match api {
        Api::Token | Api::Discovery => AadError::new(
            status,
            "temporarily_unavailable",
            50033,
            "A transient error has occurred. Please try again.",
        )
        .with_correlation(request_id)
        .into_response(),
        Api::Graph => {
            let code = match status {
                StatusCode::SERVICE_UNAVAILABLE => "serviceNotAvailable",
                StatusCode::GATEWAY_TIMEOUT => "gatewayTimeout",
                _ => "generalException",
            };
            GraphError::new(
                status,
                code,
                "The service is temporarily unavailable. Please retry.",
            )
            .with_request_id(request_id)
            .into_response()
        }
        Api::Arm => {
            let code = match status {
                StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
                StatusCode::GATEWAY_TIMEOUT => "GatewayTimeout",
                _ => "InternalServerError",
            };
            ArmError::new(
                status,
                code,
                "Encountered internal server error. Please retry the request.",
            )
            .into_response()
        }
    }
}

/// Accepts TLS connections until `shutdown` flips, then drains in-flight requests.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "failed to accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let router = router.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                        req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                        router.clone().oneshot(req)
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(Duration::from_secs(30))
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = watcher.watch(connection).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("in-flight requests did not finish in time");
    }
    tracing::info!("emulator stopped");
}
