//! The state every handler shares, and token issuance (used by the token endpoint and the admin
//! API).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, RwLock},
};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    config::Settings,
    faults::{FaultInjector, Faults},
    jwt::SigningKey,
    oidc::IssuerKeys,
    state::{Client, Store, Tenant, now_secs},
};

/// Audiences Graph accepts in a bearer token.
pub(crate) const GRAPH_AUDIENCES: &[&str] = &[
    "https://graph.microsoft.com",
    "https://graph.microsoft.com/",
    "00000003-0000-0000-c000-000000000000",
];

/// Audiences ARM accepts in a bearer token.
pub(crate) const ARM_AUDIENCES: &[&str] = &[
    "https://management.core.windows.net/",
    "https://management.core.windows.net",
    "https://management.azure.com/",
    "https://management.azure.com",
];

pub(crate) type AppState = Arc<App>;

fn own_audiences(public: &[&str], own: &str) -> Vec<String> {
    public
        .iter()
        .map(|a| (*a).to_string())
        .chain([own.to_string(), format!("{own}/")])
        .collect()
}

/// Shared emulator state.
#[derive(Debug)]
pub(crate) struct App {
    /// `https://host:port` (or `--issuer-url`), no trailing slash.
    pub(crate) base_url: String,
    pub(crate) store: Store,
    pub(crate) signing: SigningKey,
    pub(crate) issuers: IssuerKeys,
    pub(crate) faults: FaultInjector,
    settings: RwLock<Settings>,
    pub(crate) initial_settings: Settings,
    pub(crate) initial_faults: Faults,
    arm_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// How the client authenticated, for `azpacr`/`appidacr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientAuth {
    Secret,
    Assertion,
}

impl App {
    pub(crate) fn new(
        base_url: String,
        store: Store,
        signing: SigningKey,
        issuers: IssuerKeys,
        settings: Settings,
        faults: Faults,
    ) -> Self {
        Self {
            base_url,
            store,
            signing,
            issuers,
            faults: FaultInjector::new(faults.clone()),
            settings: RwLock::new(settings.clone()),
            initial_settings: settings,
            initial_faults: faults,
            arm_locks: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn settings(&self) -> Settings {
        self.settings
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn update_settings(&self, f: impl FnOnce(&mut Settings)) -> Settings {
        let mut settings = self
            .settings
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut settings);
        settings.clone()
    }

    /// Audiences Graph accepts: Microsoft Graph's, and the emulator's own Graph URL (the
    /// `microsoftGraphResourceId` of its cloud metadata, which `az` asks tokens for).
    pub(crate) fn graph_audiences(&self) -> Vec<String> {
        own_audiences(GRAPH_AUDIENCES, &format!("{}/graph", self.base_url))
    }

    /// Audiences ARM accepts: Azure Resource Manager's, and the emulator's own ARM URL.
    pub(crate) fn arm_audiences(&self) -> Vec<String> {
        own_audiences(ARM_AUDIENCES, &format!("{}/arm", self.base_url))
    }

    /// The issuer of tokens for a tenant: `{base}/{tenant}/v2.0`.
    pub(crate) fn issuer(&self, tenant_id: &str) -> String {
        format!("{}/{tenant_id}/v2.0", self.base_url)
    }

    /// The write lock of one ARM identity (keyed by its lower-cased resource id).
    pub(crate) fn arm_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .arm_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        locks.entry(key.to_string()).or_default().clone()
    }

    /// Issues an access token for `client` of `tenant` to `resource`, as the body of a token
    /// response.
    pub(crate) fn issue_token(
        &self,
        tenant: &Tenant,
        client: Client<'_>,
        resource: &str,
        auth: ClientAuth,
    ) -> crate::Result<Value> {
        let settings = self.settings();
        let now = now_secs();
        let lifetime = settings.token_lifetime_seconds.max(1);
        let issuer = self.issuer(&tenant.id);
        let acr = match auth {
            ClientAuth::Secret => "1",
            ClientAuth::Assertion => "2",
        };
        let (client_id, object_id) = match client {
            Client::Application(app) => (app.app_id.as_str(), app.service_principal_id.as_str()),
            Client::Identity(identity) => (identity.client_id.as_str(), identity.principal_id.as_str()),
        };
        let mut claims = json!({
            "aud": resource,
            "iss": issuer,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(lifetime),
            "aio": Uuid::new_v4().simple().to_string(),
            "appid": client_id,
            "appidacr": acr,
            "azp": client_id,
            "azpacr": acr,
            "idp": issuer,
            "idtyp": "app",
            "oid": object_id,
            "rh": Uuid::new_v4().simple().to_string(),
            "sub": object_id,
            "tid": tenant.id,
            "uti": Uuid::new_v4().simple().to_string(),
            "ver": "2.0",
        });
        if let Client::Identity(identity) = client {
            claims["xms_mirid"] = Value::from(identity.resource_id());
        }
        let access_token = self.signing.sign(&claims)?;
        let mut body = json!({
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access_token,
        });
        if lifetime >= 7200 {
            body["refresh_in"] = Value::from(lifetime / 2);
        }
        Ok(body)
    }
}
