//! ARM: user-assigned identities and their federated credentials, api-version, validation rules,
//! concurrent-write 409, bearer-token checks.

mod auth;
mod credentials;
mod errors;
mod identities;
mod metadata;

#[path = "../common/mod.rs"]
mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wif_emulator::{Seed, SettingsPatch, TenantSeed};

struct Arm<'a> {
    env: &'a Env,
    token: String,
}

impl Arm<'_> {
    async fn new(env: &Env) -> Arm<'_> {
        let token = env.bearer(ARM).await;
        Arm { env, token }
    }

    async fn call(&self, method: Method, url: impl AsRef<str>, body: Option<Value>) -> (StatusCode, Value) {
        self.env.call(&self.token, method, url.as_ref(), body).await
    }

    /// `PUT url` of a resource located in westeurope.
    async fn put_in_westeurope(&self, url: impl AsRef<str>) -> (StatusCode, Value) {
        self.call(Method::PUT, url, Some(json!({ "location": "westeurope" })))
            .await
    }

    fn fic_url(&self, identity: &str, fic: &str) -> String {
        format!(
            "{}/federatedIdentityCredentials/{fic}?{ARM_API}",
            self.env.identity_url(identity)
        )
    }
}

fn fic_body(subject: &str) -> Value {
    json!({ "properties": {
        "issuer": "https://oidc.example/cluster",
        "subject": subject,
        "audiences": [AUDIENCE],
    }})
}

#[track_caller]
fn assert_arm_error(status: StatusCode, body: &Value, want: u16, code: &str) {
    assert_eq!(status.as_u16(), want, "{body:#}");
    assert_eq!(body["error"]["code"], code, "{body:#}");
    assert!(body["error"]["message"].is_string(), "{body:#}");
}

/// Asserts that `response` is ARM error `code` with status `want` (and a message).
async fn assert_arm_response(response: reqwest::Response, want: u16, code: &str) {
    let status = response.status();
    let body = response.json().await.expect("json");
    assert_arm_error(status, &body, want, code);
}
