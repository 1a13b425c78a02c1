//! `WorkloadIdentityCredential`, its builder, and the exchange at the token endpoint.

use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use base64::Engine as _;
use futures::FutureExt;
use serde_json::Value;
use tracing::Instrument;

use crate::{
    assertion::{AssertionCallback, AssertionSource, TokenFile},
    cache::{CacheKey, Fresh, TokenCache},
    env,
    error::{Error, Result, TransportErrorKind, is_retryable_status},
    response,
    retry::RetryPolicy,
    tls,
    token::{AccessToken, Lifetime, Secret, TokenRequestOptions},
};

mod builder;
pub use builder::WorkloadIdentityCredentialBuilder;

/// The authority used when none is configured.
pub const DEFAULT_AUTHORITY_HOST: &str = "https://login.microsoftonline.com/";

/// `client_assertion_type` of the exchange.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The claims merged in for continuous access evaluation (client capability `CP1`).
const CAE_CAPABILITY: &str = "CP1";

/// Largest response body read (Entra's are a few KiB; anything bigger is not Entra).
const MAX_BODY: usize = 1 << 20;

/// Default per-attempt timeout (connect, send, and read the whole response).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default TCP+TLS connect timeout of the built-in HTTP client.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Entra workload identity: exchanges the Kubernetes projected ServiceAccount token (or another
/// client assertion) for an Entra access token, and caches it.
///
/// Cheap to clone (clones share the cache); create one per identity and reuse it.
#[derive(Clone)]
pub struct WorkloadIdentityCredential {
    inner: Arc<Inner>,
}

struct Inner {
    tenant_id: String,
    client_id: String,
    /// Authority URL without the trailing slash.
    authority: String,
    allowed_tenants: Vec<String>,
    multitenant_disabled: bool,
    assertion: AssertionSource,
    http: reqwest::Client,
    timeout: Duration,
    retry: RetryPolicy,
    cache: TokenCache,
}

impl fmt::Debug for WorkloadIdentityCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("WorkloadIdentityCredential")
            .field("tenant_id", &i.tenant_id)
            .field("client_id", &i.client_id)
            .field("authority", &i.authority)
            .field("additionally_allowed_tenants", &i.allowed_tenants)
            .field("assertion", &i.assertion)
            .field("timeout", &i.timeout)
            .field("retry", &i.retry)
            .finish_non_exhaustive()
    }
}

impl WorkloadIdentityCredential {
    /// Configures the credential from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`,
    /// `AZURE_FEDERATED_TOKEN_FILE` and `AZURE_AUTHORITY_HOST` (default
    /// `https://login.microsoftonline.com/`), as azure-identity does; also
    /// `AZURE_ADDITIONALLY_ALLOWED_TENANTS` (`;`-separated) and
    /// `AZURE_IDENTITY_DISABLE_MULTITENANTAUTH`.
    ///
    /// The token file is read when a token is first needed, not here.
    pub fn from_env() -> Result<Self> {
        WorkloadIdentityCredentialBuilder::from_env().build()
    }

    /// Like [`from_env`](Self::from_env), for the ServiceAccount's identity named `name`
    /// (annotation `azure.workload.identity/client-id.<name>`): the client id comes from
    /// `AZURE_CLIENT_ID_<NAME>` (upper-cased, `-` → `_`), the tenant from `AZURE_TENANT_ID_<NAME>`
    /// if set, else `AZURE_TENANT_ID`; the token file and authority are shared.
    pub fn from_env_named(name: &str) -> Result<Self> {
        WorkloadIdentityCredentialBuilder::from_env_named(name).build()
    }

    /// A builder with nothing set (see [`WorkloadIdentityCredentialBuilder::from_env`] to start
    /// from the environment).
    pub fn builder() -> WorkloadIdentityCredentialBuilder {
        WorkloadIdentityCredentialBuilder::default()
    }

    /// The configured tenant.
    pub fn tenant_id(&self) -> &str {
        &self.inner.tenant_id
    }

    /// The client (application) id of the app registration or user-assigned managed identity.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The authority, without trailing slash (e.g. `https://login.microsoftonline.com`).
    pub fn authority_host(&self) -> &str {
        &self.inner.authority
    }

    /// Returns an access token for `scopes`: exactly one scope of the form `<resource>/.default`.
    ///
    /// Served from the cache when possible. A cached token past its refresh point is still
    /// returned at once while one background request renews it; concurrent callers that need a
    /// new token share one request.
    pub async fn get_token(&self, scopes: &[&str], options: &TokenRequestOptions) -> Result<AccessToken> {
        let scope = validate_scopes(scopes)?;
        let tenant = self.inner.resolve_tenant(options.tenant_id.as_deref())?;
        let key = CacheKey {
            tenant: tenant.to_owned(),
            scope: scope.to_owned(),
            claims: options
                .claims
                .as_deref()
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned),
            cae: options.enable_cae,
        };
        self.inner
            .cache
            .get_or_fetch(&key, || {
                let (inner, key) = (self.inner.clone(), key.clone());
                async move { inner.fetch(key).await }.boxed()
            })
            .await
    }
}

/// Exactly one scope ending in `/.default`, with the characters the SDKs allow.
fn validate_scopes<'a>(scopes: &[&'a str]) -> Result<&'a str> {
    let invalid = |reason| Error::InvalidScope {
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        reason,
    };
    let [scope] = scopes else {
        return Err(invalid(if scopes.is_empty() {
            "no scope given"
        } else {
            "exactly one scope is allowed: an app-only token is for one resource"
        }));
    };
    let Some(resource) = scope.strip_suffix("/.default") else {
        return Err(invalid(
            "the scope must be <resource>/.default for an app-only (client credentials) token",
        ));
    };
    if resource.is_empty() {
        return Err(invalid("the scope names no resource before /.default"));
    }
    if !scope
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-_:/".contains(c))
    {
        return Err(invalid(
            "the scope may contain only letters, digits and . - _ : /",
        ));
    }
    Ok(scope)
}

/// Tenant ids and domains: `[A-Za-z0-9.-]+`.
fn validate_tenant(tenant: &str, setting: &'static str) -> Result<()> {
    if tenant.is_empty()
        || !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(Error::InvalidSetting {
            setting,
            value: tenant.to_owned(),
            reason: "a tenant is a GUID or a domain name: only letters, digits, '.' and '-'".into(),
        });
    }
    Ok(())
}

/// `https://host[/path]` without trailing slash; `https://` is assumed when no scheme is given.
pub(crate) fn normalize_authority(raw: &str) -> Result<String> {
    let raw = raw.trim();
    let invalid = |reason: String| Error::InvalidSetting {
        setting: env::AZURE_AUTHORITY_HOST,
        value: raw.to_owned(),
        reason,
    };
    let full = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("https://{raw}")
    };
    let url = url::Url::parse(&full).map_err(|e| invalid(e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" => {
            return Err(Error::InsecureAuthority {
                authority: raw.to_owned(),
            });
        }
        other => return Err(invalid(format!("scheme {other:?} is not https"))),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("no host".into()));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(invalid("an authority has no query, fragment or user info".into()));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Merges the `CP1` capability into the caller's claims (JSON or base64 JSON) when CAE is on.
pub(crate) fn merge_claims(claims: Option<&str>, cae: bool) -> Result<Option<String>> {
    let invalid = |reason: &str| Error::InvalidClaims {
        reason: reason.to_owned(),
    };
    let mut value = match claims {
        None if !cae => return Ok(None),
        None => Value::Object(serde_json::Map::new()),
        Some(raw) => {
            let raw = raw.trim();
            let decoded = if raw.starts_with('{') {
                raw.as_bytes().to_vec()
            } else {
                let engines = [
                    &base64::engine::general_purpose::STANDARD,
                    &base64::engine::general_purpose::STANDARD_NO_PAD,
                    &base64::engine::general_purpose::URL_SAFE,
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                ];
                engines
                    .iter()
                    .find_map(|e| e.decode(raw).ok())
                    .ok_or_else(|| invalid("neither JSON nor base64-encoded JSON"))?
            };
            let value: Value = serde_json::from_slice(&decoded).map_err(|_| invalid("not valid JSON"))?;
            if !value.is_object() {
                return Err(invalid("not a JSON object"));
            }
            value
        }
    };
    if cae {
        let Value::Object(root) = &mut value else {
            return Err(invalid("not a JSON object"));
        };
        let access = root
            .entry("access_token")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        let Value::Object(access) = access else {
            return Err(invalid("\"access_token\" is not a JSON object"));
        };
        access.insert("xms_cc".into(), serde_json::json!({ "values": [CAE_CAPABILITY] }));
    }
    Ok(Some(value.to_string()))
}

/// A failed attempt: the error, whether another attempt may help, and the server's wish.
struct AttemptError {
    error: Error,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Inner {
    fn resolve_tenant<'a>(&'a self, requested: Option<&'a str>) -> Result<&'a str> {
        let Some(requested) = requested.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(&self.tenant_id);
        };
        if requested.eq_ignore_ascii_case(&self.tenant_id) {
            return Ok(&self.tenant_id);
        }
        validate_tenant(requested, "requested tenant id")?;
        if self.multitenant_disabled {
            tracing::info!(
                configured = %self.tenant_id, requested,
                "multi-tenant authentication is disabled (AZURE_IDENTITY_DISABLE_MULTITENANTAUTH): using the configured tenant"
            );
            return Ok(&self.tenant_id);
        }
        if self
            .allowed_tenants
            .iter()
            .any(|t| t == "*" || t.eq_ignore_ascii_case(requested))
        {
            return Ok(requested);
        }
        Err(Error::TenantNotAllowed {
            requested: requested.to_owned(),
            configured: self.tenant_id.clone(),
        })
    }

    /// One exchange, with retries. Runs in the cache's fetch task.
    async fn fetch(self: Arc<Self>, key: CacheKey) -> Result<Fresh> {
        let span = tracing::info_span!(
            "token_exchange",
            tenant = %key.tenant, client_id = %self.client_id, scope = %key.scope, cae = key.cae
        );
        async move {
            let claims = merge_claims(key.claims.as_deref(), key.cae)?;
            let assertion = self.assertion.get().await?;
            let endpoint = format!("{}/{}/oauth2/v2.0/token", self.authority, key.tenant);
            let mut form = vec![
                ("client_assertion", assertion.expose_secret()),
                ("client_assertion_type", JWT_BEARER),
                ("client_id", self.client_id.as_str()),
                ("grant_type", "client_credentials"),
                ("scope", key.scope.as_str()),
            ];
            if let Some(c) = &claims {
                form.push(("claims", c));
            }
            let mut attempt = 1;
            loop {
                let failure = match self.attempt(&endpoint, &form, &assertion).await {
                    Ok(fresh) => {
                        tracing::debug!(attempt, "token acquired");
                        return Ok(fresh);
                    }
                    Err(f) => f,
                };
                let (status, aadsts) = (failure.error.status(), failure.error.aadsts());
                if !failure.retryable || attempt > self.retry.max_retries {
                    tracing::debug!(attempt, status, aadsts, error = %failure.error, "token request failed");
                    return Err(with_attempts(failure.error, attempt));
                }
                let delay = self.retry.delay(attempt - 1, failure.retry_after);
                tracing::warn!(
                    attempt, status, aadsts, delay_ms = delay.as_millis(), error = %failure.error,
                    "token request failed; retrying"
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
        .instrument(span)
        .await
    }

    async fn attempt(
        &self,
        endpoint: &str,
        form: &[(&str, &str)],
        assertion: &Secret,
    ) -> Result<Fresh, AttemptError> {
        let transport = |source: reqwest::Error| {
            let kind = TransportErrorKind::classify(&source);
            AttemptError {
                error: Error::Transport {
                    endpoint: endpoint.to_owned(),
                    kind,
                    attempts: 1,
                    source: Arc::new(source),
                },
                // An untrusted certificate does not fix itself.
                retryable: kind != TransportErrorKind::Tls,
                retry_after: None,
            }
        };
        let sent_at = Instant::now();
        let sent_wall = SystemTime::now();
        let mut resp = self
            .http
            .post(endpoint)
            .timeout(self.timeout)
            .header("client-request-id", request_id())
            .header("return-client-request-id", "true")
            .form(form)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        let retry_after = crate::retry::retry_after(resp.headers(), SystemTime::now());
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return Err(AttemptError {
                    error: Error::InvalidResponse {
                        status,
                        reason: format!("body larger than {MAX_BODY} bytes"),
                    },
                    retryable: false,
                    retry_after: None,
                });
            }
        }
        if (200..300).contains(&status) {
            let parsed = response::parse_success(status, &body).map_err(|error| AttemptError {
                error,
                retryable: false,
                retry_after: None,
            })?;
            let life = Lifetime::new(parsed.expires_in, parsed.refresh_in);
            tracing::debug!(
                status,
                expires_in = parsed.expires_in.as_secs(),
                refresh_in = life.refresh_in.as_secs(),
                "token endpoint answered"
            );
            return Ok(Fresh {
                token: AccessToken::new(
                    parsed.access_token,
                    parsed.token_type,
                    sent_wall + life.expires_in,
                    sent_wall + life.refresh_in,
                ),
                refresh_at: sent_at + life.refresh_in,
                stale_at: sent_at + life.usable_for,
            });
        }
        let err = response::parse_error(status, retry_after, &body, &[assertion.expose_secret()]);
        Err(AttemptError {
            error: Error::Entra(Box::new(err)),
            retryable: is_retryable_status(status),
            retry_after,
        })
    }
}

fn with_attempts(error: Error, attempts: u32) -> Error {
    match error {
        Error::Entra(mut e) => {
            e.attempts = attempts;
            Error::Entra(e)
        }
        Error::Transport {
            endpoint,
            kind,
            source,
            ..
        } => Error::Transport {
            endpoint,
            kind,
            attempts,
            source,
        },
        other => other,
    }
}

/// A random (v4) UUID request id (Entra echoes it as the correlation id).
fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests;
