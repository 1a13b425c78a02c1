//! Entry points of the fuzz targets in `fuzz/` (hidden; not an API): the client-assertion checks
//! of the token endpoint, and the whole router (token form, Graph and ARM JSON bodies) in
//! process, without sockets or TLS.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{Method, Request, header},
};
use tower::ServiceExt;

use crate::{
    Config, Error, Result, app::App, entra::assertion::Assertion, jwt::SigningKey, oidc::IssuerKeys, server,
};

/// Tenant of the fuzzed directory.
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
/// Application (client id) with a federated credential in [`TENANT`].
pub const APP_ID: &str = "11111111-2222-3333-4444-555555555555";
/// Subscription of the fuzzed ARM identities.
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-00000000000a";
/// Issuer of the seeded federated credentials: a loopback port nothing listens on.
pub const ISSUER: &str = "https://127.0.0.1:1/issuer";

/// Parses and checks a client assertion at `now` (seconds) as the token endpoint does before it
/// looks at keys and credentials; whether it passed.
pub fn assertion(token: &str, now: i64) -> bool {
    Assertion::check(token, 300, now).is_ok()
}

/// Which service a fuzzed request goes to.
#[derive(Clone, Copy, Debug)]
pub enum Service {
    /// `POST /{tenant}/oauth2/v2.0/token`, a form body.
    Token,
    /// `/graph/{path}` with a Graph token.
    Graph,
    /// `/arm/{path}` with an ARM token.
    Arm,
}

/// The emulator's router over a small seeded directory, driven in process.
pub struct Target {
    runtime: tokio::runtime::Runtime,
    router: Router,
    graph_token: String,
    arm_token: String,
    _dir: TempDir,
}

impl Target {
    /// Builds the directory (one RSA key: slow once) in a fresh temporary state directory.
    pub fn new() -> Result<Self> {
        // As `wif` does at start: one process-wide choice, ring (an error means already chosen).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::WriteFile {
                path: PathBuf::from("<runtime>"),
                source,
            })?;
        let dir = TempDir::new()?;
        let (router, graph_token, arm_token) = runtime.block_on(setup(&dir.0))?;
        Ok(Self {
            runtime,
            router,
            graph_token,
            arm_token,
            _dir: dir,
        })
    }

    /// Sends one request; its status code, or `None` when `path` makes no valid URI.
    pub fn request(&self, service: Service, method: &str, path: &str, body: &[u8]) -> Option<u16> {
        let method = Method::from_bytes(method.as_bytes()).ok()?;
        let (uri, auth, content_type) = match service {
            Service::Token => (
                format!("/{TENANT}/oauth2/v2.0/token"),
                None,
                "application/x-www-form-urlencoded",
            ),
            Service::Graph => (
                format!("/graph/{path}"),
                Some(&self.graph_token),
                "application/json",
            ),
            Service::Arm => (format!("/arm/{path}"), Some(&self.arm_token), "application/json"),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type);
        if let Some(token) = auth {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let mut request = request.body(Body::from(body.to_vec())).ok()?;
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
        let response = self.runtime.block_on(self.router.clone().oneshot(request)).ok()?;
        Some(response.status().as_u16())
    }
}

/// The router and a Graph and an ARM token minted for the seeded application.
async fn setup(dir: &std::path::Path) -> Result<(Router, String, String)> {
    let config: Config = serde_json::from_value(serde_json::json!({
        "tenants": [{
            "id": TENANT,
            "applications": [{
                "displayName": "fuzz",
                "appId": APP_ID,
                "federatedIdentityCredentials": [{"name": "fuzz", "issuer": ISSUER, "subject": "system:serviceaccount:a:b"}],
            }],
            "subscriptions": [{"id": SUBSCRIPTION, "resourceGroups": [{"name": "rg"}]}],
            "userAssignedIdentities": [{
                "subscriptionId": SUBSCRIPTION, "resourceGroup": "rg", "name": "id",
                "federatedIdentityCredentials": [{"name": "fuzz", "issuer": ISSUER, "subject": "system:serviceaccount:a:b"}],
            }],
        }],
        "settings": {"outboundTimeoutMs": 50},
    }))
    .map_err(|e| Error::InvalidConfig(e.to_string()))?;
    let signing = SigningKey::load_or_generate(dir).await?;
    let store = crate::seeded_store(dir, &config, true).await?;
    let outbound = reqwest::Client::builder().build().map_err(Error::HttpClient)?;
    let app = Arc::new(App::new(
        "https://127.0.0.1:1".to_owned(),
        store,
        signing,
        IssuerKeys::new(outbound),
        config.settings,
        config.faults,
    ));
    let router = server::router(app);
    let graph = mint(&router, "https://graph.microsoft.com").await?;
    let arm = mint(&router, "https://management.azure.com").await?;
    Ok((router, graph, arm))
}

/// A token for the seeded application, through `POST /admin/token`.
async fn mint(router: &Router, resource: &str) -> Result<String> {
    let failed =
        |message: String| Error::InvalidConfig(format!("fuzz set-up: minting a token failed: {message}"));
    let body = serde_json::json!({"tenantId": TENANT, "clientId": APP_ID, "resource": resource});
    let mut request = Request::post("/admin/token")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .map_err(|e| failed(e.to_string()))?;
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
    let response = router
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| failed(e.to_string()))?;
    value["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| failed(String::from_utf8_lossy(&bytes).into_owned()))
}

/// A state directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("wif-emulator-fuzz-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).map_err(|source| Error::WriteFile {
            path: path.clone(),
            source,
        })?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
