//! The config file (`--config`, YAML or JSON), which seeds the directory and sets the initial
//! settings and faults. The admin API's `/admin/seed`, `/admin/settings` and `/admin/faults` take
//! the same shapes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Error, Result, faults::Faults};

/// The audience Kubernetes workload identity tokens carry, the default of a seeded credential.
pub const DEFAULT_AUDIENCE: &str = "api://AzureADTokenExchange";

/// The whole config file.
///
/// ```yaml
/// tenants:
///   - id: 72f988bf-86f1-41af-91ab-2d7cd011db47
///     domains: [contoso.onmicrosoft.com]
///     applications:
///       - displayName: wif-controller
///         appId: 5e3ce6c0-2b1f-4285-8d4b-75ee78787346
///         federatedIdentityCredentials:
///           - name: kind-wif-controller
///             issuer: https://127.0.0.1:6443
///             subject: system:serviceaccount:wif-system:wif-controller
///     subscriptions:
///       - id: 0b1f6471-1bf0-4dda-aec3-cb9272f09590
///         displayName: demo
///         resourceGroups:
///           - name: demo
///             location: westeurope
///     userAssignedIdentities:
///       - subscriptionId: 0b1f6471-1bf0-4dda-aec3-cb9272f09590
///         resourceGroup: demo
///         name: api
/// settings:
///   propagationDelayMs: 2000
/// faults:
///   graph: { throttle: { everyNth: 5, retryAfterSeconds: 1 } }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Tenants to create (or complete) at start.
    #[serde(default)]
    pub tenants: Vec<TenantSeed>,
    /// Behaviour knobs; runtime-changeable through `PATCH /admin/settings`.
    #[serde(default)]
    pub settings: Settings,
    /// Initial fault injection; runtime-changeable through `PUT /admin/faults`.
    #[serde(default)]
    pub faults: Faults,
}

impl Config {
    /// Reads a config file: JSON if it ends in `.json`, YAML otherwise.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            path: path.to_path_buf(),
            source,
        })?;
        let is_json = path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
        let parsed = if is_json {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        } else {
            serde_saphyr::from_str(&text).map_err(|e| e.to_string())
        };
        parsed.map_err(|message| Error::ParseConfig {
            path: path.to_path_buf(),
            message,
        })
    }
}

/// The directory part of a config: what `/admin/seed` accepts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Seed {
    /// Tenants to create (or complete).
    #[serde(default)]
    pub tenants: Vec<TenantSeed>,
}

/// A tenant and what lives in it. Seeding is create-if-missing: a tenant, application, identity or
/// credential that already exists (same id / appId / display name / resource id / credential
/// name) is left as it is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantSeed {
    /// Tenant id (a GUID).
    pub id: String,
    /// Verified domain names the token endpoint also accepts in place of the id.
    #[serde(default)]
    pub domains: Vec<String>,
    /// App registrations.
    #[serde(default)]
    pub applications: Vec<ApplicationSeed>,
    /// Azure subscriptions of the tenant and their resource groups (ARM answers
    /// `SubscriptionNotFound` / `ResourceGroupNotFound` for any other). An identity's
    /// subscription and resource group are created with it when not listed here.
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionSeed>,
    /// User-assigned managed identities.
    #[serde(default)]
    pub user_assigned_identities: Vec<IdentitySeed>,
}

/// An Azure subscription (it belongs to one tenant).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionSeed {
    /// Subscription id (a GUID).
    pub id: String,
    /// Display name; `wif emulator subscription` if absent.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Resource groups.
    #[serde(default)]
    pub resource_groups: Vec<ResourceGroupSeed>,
}

/// A resource group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceGroupSeed {
    /// Name (1–90 characters: letters, digits, `_`, `-`, `.`, `(`, `)`; not ending in `.`).
    pub name: String,
    /// Azure region; `westeurope` if absent.
    #[serde(default)]
    pub location: Option<String>,
}

/// An application registration (with an implicit service principal).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationSeed {
    /// Display name; also the key that makes seeding idempotent when no `appId` is given.
    pub display_name: String,
    /// Client id; generated if absent.
    #[serde(default)]
    pub app_id: Option<String>,
    /// Object id; generated if absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Object id of the service principal (the `oid`/`sub` of its tokens); generated if absent.
    #[serde(default)]
    pub service_principal_id: Option<String>,
    /// Client secrets accepted by the token endpoint (`client_secret`), for bootstrapping a
    /// caller that has no federated token. Stored in the state file in clear: test use only.
    #[serde(default)]
    pub client_secrets: Vec<String>,
    /// Federated identity credentials.
    #[serde(default)]
    pub federated_identity_credentials: Vec<CredentialSeed>,
}

/// A user-assigned managed identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentitySeed {
    /// Subscription id (a GUID).
    pub subscription_id: String,
    /// Resource group name.
    pub resource_group: String,
    /// Identity name.
    pub name: String,
    /// Azure region; `westeurope` if absent.
    #[serde(default)]
    pub location: Option<String>,
    /// Client id; generated if absent.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Principal (service principal object) id; generated if absent.
    #[serde(default)]
    pub principal_id: Option<String>,
    /// Federated identity credentials.
    #[serde(default)]
    pub federated_identity_credentials: Vec<CredentialSeed>,
}

/// A federated identity credential. Seeded credentials are honoured at once (no propagation delay).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialSeed {
    /// Name (unique per parent).
    pub name: String,
    /// Issuer, compared byte for byte with the assertion's `iss`.
    pub issuer: String,
    /// Subject, compared byte for byte with the assertion's `sub`.
    pub subject: String,
    /// Audiences (exactly one); `[api://AzureADTokenExchange]` if absent.
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    /// Description (applications only).
    #[serde(default)]
    pub description: Option<String>,
}

/// Behaviour knobs. Every field has a default, so a partial object is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    /// Lifetime of issued access tokens; `refresh_in` (half of it) is added from 7200 s on.
    pub token_lifetime_seconds: u64,
    /// Tolerance when checking assertion `nbf`/`exp` and bearer token `exp`.
    pub clock_skew_seconds: u64,
    /// Time after a credential is created or updated during which the token endpoint does not
    /// honour it yet (an update keeps the previous values honoured until then).
    pub propagation_delay_ms: u64,
    /// How long an ARM credential write holds the identity's write lock; a concurrent write to
    /// the same identity in that window gets `409 ConcurrentFederatedIdentityCredentialsWritesForSingleManagedIdentity`.
    pub arm_write_hold_ms: u64,
    /// Maximum federated credentials per application / identity.
    pub max_credentials_per_parent: usize,
    /// Enforce `^[a-zA-Z0-9][a-zA-Z0-9-_]{2,119}$` for credential names (else 1–120 URL-safe
    /// characters `[A-Za-z0-9-_.~=]`).
    pub strict_credential_names: bool,
    /// How long a fetched issuer JWKS is reused.
    pub jwks_cache_ttl_seconds: u64,
    /// Timeout of the discovery/JWKS fetches to an assertion issuer.
    pub outbound_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            token_lifetime_seconds: 3599,
            clock_skew_seconds: 300,
            propagation_delay_ms: 0,
            arm_write_hold_ms: 100,
            max_credentials_per_parent: 20,
            strict_credential_names: true,
            jwks_cache_ttl_seconds: 60,
            outbound_timeout_ms: 5000,
        }
    }
}

/// A partial [`Settings`], as `PATCH /admin/settings` takes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SettingsPatch {
    /// See [`Settings::token_lifetime_seconds`].
    pub token_lifetime_seconds: Option<u64>,
    /// See [`Settings::clock_skew_seconds`].
    pub clock_skew_seconds: Option<u64>,
    /// See [`Settings::propagation_delay_ms`].
    pub propagation_delay_ms: Option<u64>,
    /// See [`Settings::arm_write_hold_ms`].
    pub arm_write_hold_ms: Option<u64>,
    /// See [`Settings::max_credentials_per_parent`].
    pub max_credentials_per_parent: Option<usize>,
    /// See [`Settings::strict_credential_names`].
    pub strict_credential_names: Option<bool>,
    /// See [`Settings::jwks_cache_ttl_seconds`].
    pub jwks_cache_ttl_seconds: Option<u64>,
    /// See [`Settings::outbound_timeout_ms`].
    pub outbound_timeout_ms: Option<u64>,
}

impl Settings {
    /// Applies the fields a patch sets.
    pub fn apply(&mut self, patch: &SettingsPatch) {
        let SettingsPatch {
            token_lifetime_seconds,
            clock_skew_seconds,
            propagation_delay_ms,
            arm_write_hold_ms,
            max_credentials_per_parent,
            strict_credential_names,
            jwks_cache_ttl_seconds,
            outbound_timeout_ms,
        } = patch;
        if let Some(v) = token_lifetime_seconds {
            self.token_lifetime_seconds = *v;
        }
        if let Some(v) = clock_skew_seconds {
            self.clock_skew_seconds = *v;
        }
        if let Some(v) = propagation_delay_ms {
            self.propagation_delay_ms = *v;
        }
        if let Some(v) = arm_write_hold_ms {
            self.arm_write_hold_ms = *v;
        }
        if let Some(v) = max_credentials_per_parent {
            self.max_credentials_per_parent = *v;
        }
        if let Some(v) = strict_credential_names {
            self.strict_credential_names = *v;
        }
        if let Some(v) = jwks_cache_ttl_seconds {
            self.jwks_cache_ttl_seconds = *v;
        }
        if let Some(v) = outbound_timeout_ms {
            self.outbound_timeout_ms = *v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_example_parses() {
        let yaml = r#"
tenants:
  - id: 72f988bf-86f1-41af-91ab-2d7cd011db47
    domains: [contoso.onmicrosoft.com]
    applications:
      - displayName: wif-controller
        appId: 5e3ce6c0-2b1f-4285-8d4b-75ee78787346
        federatedIdentityCredentials:
          - name: kind-wif-controller
            issuer: https://127.0.0.1:6443
            subject: system:serviceaccount:wif-system:wif-controller
    userAssignedIdentities:
      - subscriptionId: 0b1f6471-1bf0-4dda-aec3-cb9272f09590
        resourceGroup: demo
        name: api
settings:
  propagationDelayMs: 2000
faults:
  graph: { throttle: { everyNth: 5, retryAfterSeconds: 1 } }
"#;
        let config: Config = serde_saphyr::from_str(yaml).expect("parses");
        assert_eq!(
            config.tenants[0].applications[0]
                .federated_identity_credentials
                .len(),
            1
        );
        assert_eq!(config.settings.propagation_delay_ms, 2000);
        assert_eq!(config.settings.max_credentials_per_parent, 20);
        assert_eq!(
            config.faults.graph.throttle.as_ref().and_then(|t| t.every_nth),
            Some(5)
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<Config>(r#"{"tenant": []}"#).expect_err("refused");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
