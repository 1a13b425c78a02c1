//! The admin API under `/admin/…`: no authentication, answered only to loopback peers.
//!
//! | route | does |
//! |---|---|
//! | `GET /admin/health` | `{"status":"ok"}` |
//! | `GET /admin/state` | the whole directory (tenants, applications, identities, credentials) |
//! | `POST /admin/seed` | body as the config file's `tenants` ([`Seed`]); create-if-missing; returns the state |
//! | `POST /admin/token` | `{"tenantId","clientId","resource"}` → a token response, without an assertion |
//! | `GET`/`PUT /admin/faults` | read / replace the faults ([`Faults`]) |
//! | `GET`/`PATCH /admin/settings` | read / change settings ([`SettingsPatch`]) |
//! | `GET /admin/counters` | request counters per API ([`Counters`](crate::Counters)) |
//! | `POST /admin/reset` | zero the counters, restore faults and settings to their start values |
//! | `POST /admin/propagate` | end the propagation delay of every credential now |

use std::net::SocketAddr;

use axum::{
    Json,
    body::Bytes,
    extract::{ConnectInfo, Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{
    app::{AppState, ClientAuth},
    config::{Seed, SettingsPatch},
    faults::Faults,
    state::{PersistFailed, now_ms},
};

/// An admin API error: `{"error": "…"}`.
#[derive(Debug)]
pub(crate) struct AdminError(StatusCode, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<PersistFailed> for AdminError {
    fn from(_: PersistFailed) -> Self {
        Self(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed to persist the state".into(),
        )
    }
}

fn bad_request(message: impl Into<String>) -> AdminError {
    AdminError(StatusCode::BAD_REQUEST, message.into())
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("invalid request body: {e}")))
}

/// Refuses admin requests from anything but a loopback peer.
pub(crate) async fn loopback_only(req: Request, next: Next) -> Response {
    let loopback = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| peer.ip().is_loopback());
    if !loopback {
        return AdminError(
            StatusCode::FORBIDDEN,
            "the admin API is only served to loopback clients".into(),
        )
        .into_response();
    }
    next.run(req).await
}

pub(crate) async fn health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

pub(crate) async fn state(State(app): State<AppState>) -> Response {
    let state = app.store.read(Clone::clone).await;
    Json(state).into_response()
}

pub(crate) async fn seed(State(app): State<AppState>, body: Bytes) -> Result<Response, AdminError> {
    let seed: Seed = parse(&body)?;
    let settings = app.settings();
    let state = app
        .store
        .update(|s| {
            s.apply_seed(&seed, &settings).map_err(bad_request)?;
            Ok::<_, AdminError>(s.clone())
        })
        .await?;
    Ok(Json(state).into_response())
}

/// Body of `POST /admin/token`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MintRequest {
    /// Tenant id or domain.
    pub tenant_id: String,
    /// Application appId or identity clientId.
    pub client_id: String,
    /// Audience of the token (`https://graph.microsoft.com`, `https://management.azure.com`, …).
    pub resource: String,
}

pub(crate) async fn token(State(app): State<AppState>, body: Bytes) -> Result<Response, AdminError> {
    let request: MintRequest = parse(&body)?;
    let tenant = app
        .store
        .read(|s| s.tenant(&request.tenant_id).cloned())
        .await
        .ok_or_else(|| {
            AdminError(
                StatusCode::NOT_FOUND,
                format!("unknown tenant {}", request.tenant_id),
            )
        })?;
    let client = tenant.client(&request.client_id).ok_or_else(|| {
        AdminError(
            StatusCode::NOT_FOUND,
            format!("unknown client {}", request.client_id),
        )
    })?;
    let body = app
        .issue_token(&tenant, client, &request.resource, ClientAuth::Assertion)
        .map_err(|e| AdminError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(body).into_response())
}

pub(crate) async fn get_faults(State(app): State<AppState>) -> Response {
    Json(app.faults.faults()).into_response()
}

pub(crate) async fn put_faults(State(app): State<AppState>, body: Bytes) -> Result<Response, AdminError> {
    let faults: Faults = parse(&body)?;
    tracing::info!(faults = ?faults, "admin: faults replaced");
    app.faults.set_faults(faults.clone());
    Ok(Json(faults).into_response())
}

pub(crate) async fn get_settings(State(app): State<AppState>) -> Response {
    Json(app.settings()).into_response()
}

pub(crate) async fn patch_settings(State(app): State<AppState>, body: Bytes) -> Result<Response, AdminError> {
    let patch: SettingsPatch = parse(&body)?;
    let settings = app.update_settings(|s| s.apply(&patch));
    tracing::info!(settings = ?settings, "admin: settings changed");
    Ok(Json(settings).into_response())
}

pub(crate) async fn counters(State(app): State<AppState>) -> Response {
    Json(app.faults.counters()).into_response()
}

pub(crate) async fn reset(State(app): State<AppState>) -> Response {
    app.faults.reset();
    app.faults.set_faults(app.initial_faults.clone());
    let initial = app.initial_settings.clone();
    app.update_settings(|s| *s = initial);
    Json(json!({ "status": "reset" })).into_response()
}

pub(crate) async fn propagate(State(app): State<AppState>) -> Result<Response, AdminError> {
    let now = now_ms();
    let changed = app
        .store
        .update(|s| {
            let mut changed = 0usize;
            for tenant in &mut s.tenants {
                let apps = tenant
                    .applications
                    .iter_mut()
                    .flat_map(|a| a.credentials.iter_mut());
                let identities = tenant
                    .identities
                    .iter_mut()
                    .flat_map(|i| i.credentials.iter_mut());
                for credential in apps.chain(identities) {
                    if credential.visible_after_ms > now {
                        credential.visible_after_ms = now;
                        credential.previous = None;
                        changed += 1;
                    }
                }
            }
            Ok::<_, AdminError>(changed)
        })
        .await?;
    Ok(Json(json!({ "propagated": changed })).into_response())
}

#[cfg(test)]
mod tests {
    use axum::{Router, body::Body, http::Request as HttpRequest, routing::get};
    use tower::ServiceExt;

    use super::*;

    async fn status_from(peer: Option<&str>) -> StatusCode {
        let router = Router::new()
            .route("/admin/health", get(health))
            .layer(axum::middleware::from_fn(loopback_only));
        let mut request = HttpRequest::get("/admin/health")
            .body(Body::empty())
            .expect("request");
        if let Some(peer) = peer {
            let addr: SocketAddr = peer.parse().expect("addr");
            request.extensions_mut().insert(ConnectInfo(addr));
        }
        router.oneshot(request).await.expect("response").status()
    }

    #[tokio::test]
    async fn admin_is_served_to_loopback_peers_only() {
        assert_eq!(status_from(Some("127.0.0.1:5000")).await, StatusCode::OK);
        assert_eq!(status_from(Some("[::1]:5000")).await, StatusCode::OK);
        assert_eq!(status_from(Some("10.1.2.3:5000")).await, StatusCode::FORBIDDEN);
        assert_eq!(status_from(None).await, StatusCode::FORBIDDEN);
    }
}
