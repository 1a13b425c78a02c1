//! The directory (tenants, applications, user-assigned identities, their federated credentials),
//! persisted as `state.json` in the state directory and rewritten atomically after each change.

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    Error, Result,
    config::{CredentialSeed, DEFAULT_AUDIENCE, Seed, Settings},
    credentials::{self, Credential, Violation},
};

const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    now_ms() / 1000
}

/// RFC 3339 in UTC with second precision, as Graph's `createdDateTime`.
pub(crate) fn rfc3339_now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Whether `s` is a GUID in its usual hyphenated form.
pub(crate) fn is_guid(s: &str) -> bool {
    s.len() == 36 && Uuid::parse_str(s).is_ok()
}

/// The whole persisted directory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct State {
    pub(crate) version: u32,
    pub(crate) tenants: Vec<Tenant>,
}

/// One tenant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Tenant {
    pub(crate) id: String,
    pub(crate) domains: Vec<String>,
    pub(crate) applications: Vec<Application>,
    pub(crate) identities: Vec<Identity>,
    /// Absent in state files written before subscriptions existed: [`State::normalize`] derives
    /// them from the identities.
    #[serde(default)]
    pub(crate) subscriptions: Vec<Subscription>,
}

/// The display name of a subscription seeded without one.
const DEFAULT_SUBSCRIPTION_NAME: &str = "wif emulator subscription";
/// The region of a resource group or identity seeded without one.
const DEFAULT_LOCATION: &str = "westeurope";

/// An Azure subscription.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Subscription {
    /// Lower-case GUID.
    pub(crate) id: String,
    pub(crate) display_name: String,
    pub(crate) resource_groups: Vec<ResourceGroup>,
}

impl Subscription {
    pub(crate) fn group(&self, name: &str) -> Option<&ResourceGroup> {
        self.resource_groups
            .iter()
            .find(|g| g.name.eq_ignore_ascii_case(name))
    }
}

/// A resource group.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ResourceGroup {
    pub(crate) name: String,
    pub(crate) location: String,
}

/// Resource group names ARM accepts: 1–90 of letters, digits, `_-.()`, not ending in `.`.
pub(crate) fn valid_group_name(name: &str) -> bool {
    (1..=90).contains(&name.chars().count())
        && !name.ends_with('.')
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')'))
}

/// An application registration and its implicit service principal.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Application {
    pub(crate) id: String,
    pub(crate) app_id: String,
    pub(crate) display_name: String,
    pub(crate) description: Option<String>,
    pub(crate) unique_name: Option<String>,
    pub(crate) service_principal_id: String,
    pub(crate) created_date_time: String,
    pub(crate) client_secrets: Vec<String>,
    pub(crate) credentials: Vec<Credential>,
}

/// A user-assigned managed identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Identity {
    pub(crate) subscription_id: String,
    pub(crate) resource_group: String,
    pub(crate) name: String,
    pub(crate) location: String,
    pub(crate) tags: serde_json::Map<String, serde_json::Value>,
    pub(crate) client_id: String,
    pub(crate) principal_id: String,
    pub(crate) credentials: Vec<Credential>,
}

impl Identity {
    /// The ARM resource id as ARM writes it in `id` (lower-case `resourcegroups`).
    pub(crate) fn resource_id(&self) -> String {
        format!(
            "/subscriptions/{}/resourcegroups/{}/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{}",
            self.subscription_id, self.resource_group, self.name
        )
    }

    pub(crate) fn is(&self, subscription: &str, group: &str, name: &str) -> bool {
        self.subscription_id.eq_ignore_ascii_case(subscription)
            && self.resource_group.eq_ignore_ascii_case(group)
            && self.name.eq_ignore_ascii_case(name)
    }
}

/// A token endpoint client: an application or a user-assigned identity.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Client<'a> {
    Application(&'a Application),
    Identity(&'a Identity),
}

impl<'a> Client<'a> {
    pub(crate) fn credentials(&self) -> &'a [Credential] {
        match self {
            Self::Application(app) => &app.credentials,
            Self::Identity(identity) => &identity.credentials,
        }
    }
}

impl Tenant {
    pub(crate) fn client(&self, client_id: &str) -> Option<Client<'_>> {
        if let Some(app) = self
            .applications
            .iter()
            .find(|a| a.app_id.eq_ignore_ascii_case(client_id))
        {
            return Some(Client::Application(app));
        }
        self.identities
            .iter()
            .find(|i| i.client_id.eq_ignore_ascii_case(client_id))
            .map(Client::Identity)
    }

    fn client_id_taken(&self, id: &str) -> bool {
        self.client(id).is_some()
            || self
                .applications
                .iter()
                .any(|a| a.id.eq_ignore_ascii_case(id) || a.service_principal_id.eq_ignore_ascii_case(id))
            || self
                .identities
                .iter()
                .any(|i| i.principal_id.eq_ignore_ascii_case(id))
    }
}

impl State {
    /// The tenant addressed by id or by one of its domains (case-insensitive).
    pub(crate) fn tenant(&self, key: &str) -> Option<&Tenant> {
        self.tenants
            .iter()
            .find(|t| t.id.eq_ignore_ascii_case(key) || t.domains.iter().any(|d| d.eq_ignore_ascii_case(key)))
    }

    pub(crate) fn tenant_mut(&mut self, key: &str) -> Option<&mut Tenant> {
        self.tenants
            .iter_mut()
            .find(|t| t.id.eq_ignore_ascii_case(key) || t.domains.iter().any(|d| d.eq_ignore_ascii_case(key)))
    }

    /// The tenant that owns a subscription.
    pub(crate) fn subscription_tenant(&self, subscription: &str) -> Option<&str> {
        self.subscription(subscription).map(|(t, _)| t.id.as_str())
    }

    /// A subscription and the tenant that owns it.
    pub(crate) fn subscription(&self, id: &str) -> Option<(&Tenant, &Subscription)> {
        self.tenants.iter().find_map(|t| {
            t.subscriptions
                .iter()
                .find(|s| s.id.eq_ignore_ascii_case(id))
                .map(|s| (t, s))
        })
    }

    /// Adds the subscription and resource group of every identity that lacks them (state files
    /// written before subscriptions existed, identities seeded without them).
    pub(crate) fn normalize(&mut self) {
        for tenant in &mut self.tenants {
            let wanted: Vec<(String, String, String)> = tenant
                .identities
                .iter()
                .map(|i| {
                    (
                        i.subscription_id.clone(),
                        i.resource_group.clone(),
                        i.location.clone(),
                    )
                })
                .collect();
            for (subscription, group, location) in wanted {
                ensure_group(tenant, &subscription, None, &group, &location);
            }
        }
    }

    /// Finds an identity: (tenant index, identity index).
    pub(crate) fn identity_position(
        &self,
        subscription: &str,
        group: &str,
        name: &str,
    ) -> Option<(usize, usize)> {
        self.tenants.iter().enumerate().find_map(|(ti, t)| {
            t.identities
                .iter()
                .position(|i| i.is(subscription, group, name))
                .map(|ii| (ti, ii))
        })
    }

    /// Applies a seed: creates what is missing, leaves what exists.
    pub(crate) fn apply_seed(&mut self, seed: &Seed, settings: &Settings) -> Result<(), String> {
        for ts in &seed.tenants {
            if !is_guid(&ts.id) {
                return Err(format!("tenant id {:?} is not a GUID", ts.id));
            }
            let tenant_id = ts.id.to_ascii_lowercase();
            if self.tenant(&tenant_id).is_none() {
                self.tenants.push(Tenant {
                    id: tenant_id.clone(),
                    ..Tenant::default()
                });
            }
            // Subscriptions belong to one tenant.
            let used = ts.subscriptions.iter().map(|s| s.id.as_str()).chain(
                ts.user_assigned_identities
                    .iter()
                    .map(|i| i.subscription_id.as_str()),
            );
            for subscription in used {
                if !is_guid(subscription) {
                    return Err(format!("subscription id {subscription:?} is not a GUID"));
                }
                if let Some(owner) = self.subscription_tenant(subscription)
                    && !owner.eq_ignore_ascii_case(&tenant_id)
                {
                    return Err(format!(
                        "subscription {subscription} already belongs to tenant {owner}"
                    ));
                }
            }
            let tenant = self
                .tenant_mut(&tenant_id)
                .ok_or_else(|| format!("tenant {tenant_id} vanished"))?;
            for domain in &ts.domains {
                if !tenant.domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
                    tenant.domains.push(domain.clone());
                }
            }
            for sub in &ts.subscriptions {
                if sub.resource_groups.is_empty() {
                    ensure_subscription(tenant, &sub.id, sub.display_name.as_deref());
                }
                for group in &sub.resource_groups {
                    if !valid_group_name(&group.name) {
                        return Err(format!(
                            "resource group name {:?} of subscription {} is invalid: 1-90 letters, digits, '_', '-', '.', '(', ')', not ending in '.'",
                            group.name, sub.id
                        ));
                    }
                    let location = group.location.as_deref().unwrap_or(DEFAULT_LOCATION);
                    ensure_group(
                        tenant,
                        &sub.id,
                        sub.display_name.as_deref(),
                        &group.name,
                        location,
                    );
                }
            }
            for app_seed in &ts.applications {
                seed_application(tenant, app_seed, settings)?;
            }
            for id_seed in &ts.user_assigned_identities {
                seed_identity(tenant, id_seed, settings)?;
            }
        }
        self.normalize();
        Ok(())
    }
}

/// The tenant's subscription `id`, created if missing.
fn ensure_subscription<'t>(tenant: &'t mut Tenant, id: &str, name: Option<&str>) -> &'t mut Subscription {
    let index = match tenant
        .subscriptions
        .iter()
        .position(|s| s.id.eq_ignore_ascii_case(id))
    {
        Some(index) => index,
        None => {
            tenant.subscriptions.push(Subscription {
                id: id.to_ascii_lowercase(),
                display_name: name.unwrap_or(DEFAULT_SUBSCRIPTION_NAME).to_string(),
                resource_groups: Vec::new(),
            });
            tenant.subscriptions.len() - 1
        }
    };
    &mut tenant.subscriptions[index]
}

/// The tenant's resource group `group` in subscription `subscription`, created if missing.
fn ensure_group(tenant: &mut Tenant, subscription: &str, name: Option<&str>, group: &str, location: &str) {
    let subscription = ensure_subscription(tenant, subscription, name);
    if subscription.group(group).is_none() {
        subscription.resource_groups.push(ResourceGroup {
            name: group.to_string(),
            location: location.to_string(),
        });
    }
}

fn optional_guid(value: &Option<String>, what: &str) -> Result<String, String> {
    match value {
        Some(v) if is_guid(v) => Ok(v.to_ascii_lowercase()),
        Some(v) => Err(format!("{what} {v:?} is not a GUID")),
        None => Ok(Uuid::new_v4().to_string()),
    }
}

fn seed_application(
    tenant: &mut Tenant,
    seed: &crate::config::ApplicationSeed,
    settings: &Settings,
) -> Result<(), String> {
    let existing = tenant.applications.iter().position(|a| match &seed.app_id {
        Some(app_id) => a.app_id.eq_ignore_ascii_case(app_id),
        None => a.display_name == seed.display_name,
    });
    let index = match existing {
        Some(index) => index,
        None => {
            let app_id = optional_guid(&seed.app_id, "appId")?;
            let id = optional_guid(&seed.id, "application id")?;
            let sp = optional_guid(&seed.service_principal_id, "servicePrincipalId")?;
            for taken in [&app_id, &id, &sp] {
                if tenant.client_id_taken(taken) {
                    return Err(format!("id {taken} is already used in tenant {}", tenant.id));
                }
            }
            tenant.applications.push(Application {
                id,
                app_id,
                display_name: seed.display_name.clone(),
                service_principal_id: sp,
                created_date_time: rfc3339_now(),
                client_secrets: seed.client_secrets.clone(),
                ..Application::default()
            });
            tenant.applications.len() - 1
        }
    };
    let app = &mut tenant.applications[index];
    for secret in &seed.client_secrets {
        if !app.client_secrets.contains(secret) {
            app.client_secrets.push(secret.clone());
        }
    }
    let label = format!("application {}", app.display_name);
    seed_credentials(
        &mut app.credentials,
        &seed.federated_identity_credentials,
        settings,
        &label,
    )
}

fn seed_identity(
    tenant: &mut Tenant,
    seed: &crate::config::IdentitySeed,
    settings: &Settings,
) -> Result<(), String> {
    if !is_guid(&seed.subscription_id) {
        return Err(format!("subscriptionId {:?} is not a GUID", seed.subscription_id));
    }
    if seed.resource_group.is_empty() || seed.name.is_empty() {
        return Err("userAssignedIdentities need a resourceGroup and a name".into());
    }
    let existing = tenant
        .identities
        .iter()
        .position(|i| i.is(&seed.subscription_id, &seed.resource_group, &seed.name));
    let index = match existing {
        Some(index) => index,
        None => {
            let client_id = optional_guid(&seed.client_id, "clientId")?;
            let principal_id = optional_guid(&seed.principal_id, "principalId")?;
            for taken in [&client_id, &principal_id] {
                if tenant.client_id_taken(taken) {
                    return Err(format!("id {taken} is already used in tenant {}", tenant.id));
                }
            }
            tenant.identities.push(Identity {
                subscription_id: seed.subscription_id.to_ascii_lowercase(),
                resource_group: seed.resource_group.clone(),
                name: seed.name.clone(),
                location: seed.location.clone().unwrap_or_else(|| DEFAULT_LOCATION.into()),
                client_id,
                principal_id,
                ..Identity::default()
            });
            tenant.identities.len() - 1
        }
    };
    let identity = &mut tenant.identities[index];
    let label = format!("identity {}", identity.name);
    seed_credentials(
        &mut identity.credentials,
        &seed.federated_identity_credentials,
        settings,
        &label,
    )
}

fn seed_credentials(
    existing: &mut Vec<Credential>,
    seeds: &[CredentialSeed],
    settings: &Settings,
    label: &str,
) -> Result<(), String> {
    for seed in seeds {
        if existing.iter().any(|c| c.name.eq_ignore_ascii_case(&seed.name)) {
            continue;
        }
        let credential = Credential {
            id: Uuid::new_v4().to_string(),
            name: seed.name.clone(),
            issuer: seed.issuer.clone(),
            subject: Some(seed.subject.clone()),
            audiences: seed
                .audiences
                .clone()
                .unwrap_or_else(|| vec![DEFAULT_AUDIENCE.to_string()]),
            description: seed.description.clone(),
            claims_matching_expression: None,
            visible_after_ms: 0,
            previous: None,
        };
        credentials::validate_name(&credential.name, settings.strict_credential_names)
            .and_then(|()| credentials::validate_values(&credential))
            .and_then(|()| {
                credentials::check_collisions(existing, &credential, settings.max_credentials_per_parent)
            })
            .map_err(|v: Violation| format!("credential {:?} of {label}: {v:?}", seed.name))?;
        existing.push(credential);
    }
    Ok(())
}

/// A write to the state file failed; the change was rolled back.
#[derive(Debug)]
pub(crate) struct PersistFailed;

/// The state behind a lock, persisted after each successful change (unless `persist` is off).
#[derive(Debug)]
pub(crate) struct Store {
    path: PathBuf,
    state: tokio::sync::Mutex<State>,
    persist: bool,
}

impl Store {
    /// Loads `state.json` from `dir`, or starts empty. With `persist` off, changes stay in memory:
    /// rewriting the whole file per change costs O(state) each, which benchmarks with ten
    /// thousand credentials cannot afford.
    pub(crate) async fn open(dir: &Path, persist: bool) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        let state = match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::ParseState {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State {
                version: STATE_VERSION,
                tenants: Vec::new(),
            },
            Err(source) => return Err(Error::ReadFile { path, source }),
        };
        let mut state = state;
        state.normalize();
        Ok(Self {
            path,
            state: tokio::sync::Mutex::new(state),
            persist,
        })
    }

    /// Reads the state.
    pub(crate) async fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&*self.state.lock().await)
    }

    /// Changes the state; on `Ok` the new state is persisted before the lock is released, and if
    /// that fails the change is rolled back.
    pub(crate) async fn update<R, E: From<PersistFailed>>(
        &self,
        f: impl FnOnce(&mut State) -> Result<R, E>,
    ) -> Result<R, E> {
        let mut guard = self.state.lock().await;
        if !self.persist {
            return f(&mut guard);
        }
        let before = guard.clone();
        let result = f(&mut guard)?;
        if *guard != before
            && let Err(e) = self.persist(&guard).await
        {
            tracing::error!(error = %e, path = %self.path.display(), "failed to persist state");
            *guard = before;
            return Err(E::from(PersistFailed));
        }
        Ok(result)
    }

    async fn persist(&self, state: &State) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| Error::WriteFile {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&self.path, &bytes, false).await
    }
}

/// Writes a file via a temporary file in the same directory, fsync and rename, so a crash leaves
/// either the old or the new content. `private` files are made readable by the owner only.
pub(crate) async fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let err = |source| Error::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", Uuid::new_v4().simple()));
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(if private { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = private;
    let result = async {
        let mut file = options.open(&tmp).await?;
        file.write_all(bytes).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, path).await
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
