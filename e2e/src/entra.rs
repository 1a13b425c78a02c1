//! `wif emulator` in-process, seeded to trust this control plane's ServiceAccount tokens.

use std::time::Duration;

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
};
use kube::api::PostParams;
use serde_json::json;
use wif_emulator::{Config, Emulator, EmulatorConfig, Handle};

use crate::TestNs;

/// The tenant every e2e emulator serves.
pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

/// A running emulator and its state directory.
pub struct Entra {
    /// The emulator.
    pub handle: Handle,
    _dir: tempfile::TempDir,
}

impl Entra {
    /// Starts an emulator trusting the control plane's CA, seeded with `config` (the emulator's
    /// config-file shape, as JSON).
    pub async fn start(ns: &TestNs, config: serde_json::Value) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wif-e2e-entra-")
            .tempdir()
            .unwrap();
        let config: Config = serde_json::from_value(config).expect("emulator config");
        let handle = Emulator::start(
            EmulatorConfig::new(dir.path())
                .with_config(config)
                .trust_ca_pem(ns.cp.ca_pem()),
        )
        .await
        .expect("start emulator");
        Self { handle, _dir: dir }
    }

    /// An emulator with one application `client_id` trusting `ns`'s ServiceAccount `sa`.
    pub async fn trusting(ns: &TestNs, client_id: &str, sa: &str) -> Self {
        Self::start(
            ns,
            json!({"tenants": [{"id": TENANT, "applications": [{
                "displayName": "e2e", "appId": client_id,
                "federatedIdentityCredentials": [{
                    "name": "e2e", "issuer": ns.cp.issuer,
                    "subject": format!("system:serviceaccount:{}:{sa}", ns.name),
                    "audiences": ["api://AzureADTokenExchange"]}]}]}]}),
        )
        .await
    }
}

/// A ServiceAccount token for Entra (TokenRequest, audience `api://AzureADTokenExchange`), as
/// the kubelet writes into the projected volume.
pub async fn service_account_token(ns: &TestNs, sa: &str, lifetime: Duration) -> String {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![wif_api::DEFAULT_AUDIENCE.into()]),
            expiration_seconds: Some(lifetime.as_secs() as i64),
            bound_object_ref: None,
        }),
        ..TokenRequest::default()
    };
    ns.api::<ServiceAccount>()
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .and_then(|s| s.token)
        .expect("a token")
}

/// The claims of a JWT, unverified (for assertions on tokens the test already trusts).
pub fn claims(jwt: &str) -> serde_json::Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}
