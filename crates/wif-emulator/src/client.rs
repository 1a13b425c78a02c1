//! A typed client of the admin API, for tests and tools.

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::{
    Error, Result,
    admin::MintRequest,
    config::{Seed, Settings, SettingsPatch},
    faults::{Counters, Faults},
};

/// Calls `/admin/…` of one emulator.
#[derive(Debug, Clone)]
pub struct AdminClient {
    base: String,
    client: reqwest::Client,
}

impl AdminClient {
    /// A client of the emulator at `base` (e.g. `https://127.0.0.1:8443`), trusting `client`'s roots.
    pub fn new(base: impl Into<String>, client: reqwest::Client) -> Self {
        Self {
            base: base.into().trim_end_matches('/').to_string(),
            client,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let mut request = self.client.request(method, format!("{}/admin/{path}", self.base));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(Error::AdminRequest)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(Error::AdminStatus {
                status: status.as_u16(),
                body,
            });
        }
        response.json().await.map_err(Error::AdminRequest)
    }

    /// `GET /admin/health`.
    pub async fn health(&self) -> Result<()> {
        self.call::<Value>(reqwest::Method::GET, "health", None::<&()>)
            .await
            .map(drop)
    }

    /// `GET /admin/state`: the whole directory.
    pub async fn state(&self) -> Result<Value> {
        self.call(reqwest::Method::GET, "state", None::<&()>).await
    }

    /// `POST /admin/seed`; returns the state after seeding.
    pub async fn seed(&self, seed: &Seed) -> Result<Value> {
        self.call(reqwest::Method::POST, "seed", Some(seed)).await
    }

    /// `POST /admin/token`: an access token for a client of a tenant, without an assertion.
    pub async fn mint_token(&self, tenant_id: &str, client_id: &str, resource: &str) -> Result<String> {
        let request = MintRequest {
            tenant_id: tenant_id.to_string(),
            client_id: client_id.to_string(),
            resource: resource.to_string(),
        };
        let body: Value = self.call(reqwest::Method::POST, "token", Some(&request)).await?;
        body.get("access_token")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| Error::AdminStatus {
                status: 200,
                body: "token response without access_token".into(),
            })
    }

    /// `GET /admin/faults`.
    pub async fn faults(&self) -> Result<Faults> {
        self.call(reqwest::Method::GET, "faults", None::<&()>).await
    }

    /// `PUT /admin/faults`: replaces every fault.
    pub async fn set_faults(&self, faults: &Faults) -> Result<Faults> {
        self.call(reqwest::Method::PUT, "faults", Some(faults)).await
    }

    /// `GET /admin/settings`.
    pub async fn settings(&self) -> Result<Settings> {
        self.call(reqwest::Method::GET, "settings", None::<&()>).await
    }

    /// `PATCH /admin/settings`.
    pub async fn patch_settings(&self, patch: &SettingsPatch) -> Result<Settings> {
        self.call(reqwest::Method::PATCH, "settings", Some(patch)).await
    }

    /// `GET /admin/counters`.
    pub async fn counters(&self) -> Result<Counters> {
        self.call(reqwest::Method::GET, "counters", None::<&()>).await
    }

    /// `POST /admin/reset`: zero counters, restore start faults and settings.
    pub async fn reset(&self) -> Result<()> {
        self.call::<Value>(reqwest::Method::POST, "reset", None::<&()>)
            .await
            .map(drop)
    }

    /// `POST /admin/propagate`: every credential is honoured now.
    pub async fn propagate(&self) -> Result<()> {
        self.call::<Value>(reqwest::Method::POST, "propagate", None::<&()>)
            .await
            .map(drop)
    }
}
