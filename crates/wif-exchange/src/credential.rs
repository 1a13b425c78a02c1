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

/// Builds a [`WorkloadIdentityCredential`]. Explicit settings win over the environment.
///
/// ```no_run
/// # async fn demo() -> Result<(), wif_exchange::Error> {
/// use std::time::Duration;
/// use wif_exchange::{RetryPolicy, WorkloadIdentityCredential};
///
/// let credential = WorkloadIdentityCredential::builder()
///     .tenant_id("72f988bf-86f1-41af-91ab-2d7cd011db47")
///     .client_id("00000000-0000-0000-0000-000000000001")
///     .token_file("/var/run/secrets/azure/tokens/azure-identity-token")
///     .additionally_allowed_tenants(["*"])
///     .timeout(Duration::from_secs(10))
///     .retry_policy(RetryPolicy::default().with_max_retries(5))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Default)]
pub struct WorkloadIdentityCredentialBuilder {
    tenant_id: Option<String>,
    client_id: Option<String>,
    token_file: Option<PathBuf>,
    assertion: Option<AssertionSource>,
    authority_host: Option<String>,
    allowed_tenants: Vec<String>,
    multitenant_disabled: bool,
    http_client: Option<reqwest::Client>,
    timeout: Option<Duration>,
    connect_timeout: Option<Duration>,
    retry: Option<RetryPolicy>,
    root_pems: Vec<Vec<u8>>,
    /// The identity name given to [`WorkloadIdentityCredentialBuilder::from_env_named`].
    identity: Option<String>,
}

impl fmt::Debug for WorkloadIdentityCredentialBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadIdentityCredentialBuilder")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("token_file", &self.token_file)
            .field("assertion", &self.assertion)
            .field("authority_host", &self.authority_host)
            .field("identity", &self.identity)
            .field("additionally_allowed_tenants", &self.allowed_tenants)
            .field("custom_http_client", &self.http_client.is_some())
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

/// A set, non-empty environment variable.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

impl WorkloadIdentityCredentialBuilder {
    /// A builder pre-filled from the environment variables that are set (see
    /// [`WorkloadIdentityCredential::from_env`]); missing ones are reported by [`build`](Self::build).
    pub fn from_env() -> Self {
        let mut b = Self {
            tenant_id: env_var(env::AZURE_TENANT_ID),
            client_id: env_var(env::AZURE_CLIENT_ID),
            token_file: env_var(env::AZURE_FEDERATED_TOKEN_FILE).map(PathBuf::from),
            authority_host: env_var(env::AZURE_AUTHORITY_HOST),
            ..Self::default()
        };
        if let Some(list) = env_var(env::AZURE_ADDITIONALLY_ALLOWED_TENANTS) {
            b.allowed_tenants = list
                .split([';', ','])
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
        }
        b.multitenant_disabled = env_var(env::AZURE_IDENTITY_DISABLE_MULTITENANTAUTH)
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        b
    }

    /// A builder pre-filled from the environment for the ServiceAccount's identity named `name`
    /// (see [`WorkloadIdentityCredential::from_env_named`]). A missing `AZURE_CLIENT_ID_<NAME>`
    /// or an invalid name is reported by [`build`](Self::build), unless
    /// [`client_id`](Self::client_id) sets one.
    pub fn from_env_named(name: &str) -> Self {
        let mut b = Self::from_env();
        b.client_id = env_var(&env::named_client_id(name));
        if let Some(tenant) = env_var(&env::named_tenant_id(name)) {
            b.tenant_id = Some(tenant);
        }
        b.identity = Some(name.to_owned());
        b
    }

    /// The Entra tenant (GUID or domain).
    #[must_use]
    pub fn tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// The client id of the app registration or user-assigned managed identity.
    #[must_use]
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Reads the assertion from this file (the projected ServiceAccount token), again whenever
    /// it changes.
    #[must_use]
    pub fn token_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.token_file = Some(path.into());
        self.assertion = None;
        self
    }

    /// Uses this fixed client assertion instead of a file (a token that expires stops working;
    /// prefer a file or a callback for long-running processes).
    #[must_use]
    pub fn assertion(mut self, assertion: impl Into<String>) -> Self {
        self.assertion = Some(AssertionSource::Fixed(Secret::from(assertion.into())));
        self
    }

    /// Gets the client assertion from `callback` before each exchange (e.g. a token from another
    /// identity provider).
    #[must_use]
    pub fn assertion_callback<F, Fut, E>(mut self, callback: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<String, E>> + Send + 'static,
        E: Into<Box<dyn StdError + Send + Sync>> + 'static,
    {
        let cb: AssertionCallback = Arc::new(move || callback().map(|r| r.map_err(Into::into)).boxed());
        self.assertion = Some(AssertionSource::Callback(cb));
        self
    }

    /// The authority, e.g. `https://login.microsoftonline.us/`. Must be HTTPS; `https://` is
    /// assumed if no scheme is given.
    #[must_use]
    pub fn authority_host(mut self, authority: impl Into<String>) -> Self {
        self.authority_host = Some(authority.into());
        self
    }

    /// Tenants that [`TokenRequestOptions::tenant_id`] may name besides the configured one;
    /// `"*"` allows any.
    #[must_use]
    pub fn additionally_allowed_tenants<I, S>(mut self, tenants: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.allowed_tenants = tenants.into_iter().map(Into::into).collect();
        self
    }

    /// Ignore per-request tenants and always use the configured one
    /// (`AZURE_IDENTITY_DISABLE_MULTITENANTAUTH`).
    #[must_use]
    pub fn disable_multitenant(mut self, disable: bool) -> Self {
        self.multitenant_disabled = disable;
        self
    }

    /// Uses this HTTP client instead of the built-in one (then [`Self::add_root_certificates_pem`]
    /// and [`Self::connect_timeout`] do not apply; keep redirects off: they would carry the
    /// assertion along).
    #[must_use]
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.http_client = Some(client);
        self
    }

    /// Per-attempt timeout: connect, send, and read the whole answer. Default 30 s.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Connect timeout of the built-in HTTP client. Default 10 s.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// Retry policy (default: [`RetryPolicy::default`]).
    #[must_use]
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Also trusts the CA certificates of this PEM bundle (in addition to the system store and
    /// `SSL_CERT_FILE`). Parsed by [`build`](Self::build).
    #[must_use]
    pub fn add_root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_pems.push(pem.into());
        self
    }

    /// Validates the settings and builds the credential (no network, no file access but the
    /// trust store).
    pub fn build(self) -> Result<WorkloadIdentityCredential> {
        let tenant_id = self
            .tenant_id
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or(Error::MissingSetting {
                setting: "tenant id",
                env_var: env::AZURE_TENANT_ID,
                method: "tenant_id",
            })?;
        validate_tenant(&tenant_id, env::AZURE_TENANT_ID)?;
        if let Some(name) = self.identity.as_deref().filter(|n| !env::is_identity_name(n)) {
            return Err(Error::InvalidSetting {
                setting: "identity name",
                value: name.to_owned(),
                reason: "not a lower-case DNS label (a-z, 0-9 and '-', at most 63 characters), as in \
                         azure.workload.identity/client-id.<name>"
                    .into(),
            });
        }
        let client_id = match self
            .client_id
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
        {
            Some(c) => c,
            None => {
                return Err(match self.identity {
                    Some(name) => Error::MissingNamedIdentity {
                        env_var: env::named_client_id(&name),
                        name,
                    },
                    None => Error::MissingSetting {
                        setting: "client id",
                        env_var: env::AZURE_CLIENT_ID,
                        method: "client_id",
                    },
                });
            }
        };
        if client_id.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::InvalidSetting {
                setting: env::AZURE_CLIENT_ID,
                value: client_id,
                reason: "contains whitespace".into(),
            });
        }
        let assertion = match (self.assertion, self.token_file) {
            (Some(source), _) => source,
            (None, Some(path)) => AssertionSource::File(TokenFile::new(path)),
            (None, None) => {
                return Err(Error::MissingSetting {
                    setting: "federated token file",
                    env_var: env::AZURE_FEDERATED_TOKEN_FILE,
                    method: "token_file",
                });
            }
        };
        let authority =
            normalize_authority(self.authority_host.as_deref().unwrap_or(DEFAULT_AUTHORITY_HOST))?;
        for t in self.allowed_tenants.iter().filter(|t| *t != "*") {
            validate_tenant(t, env::AZURE_ADDITIONALLY_ALLOWED_TENANTS)?;
        }
        let http = match self.http_client {
            Some(client) => client,
            None => {
                let mut extra = Vec::new();
                for pem in &self.root_pems {
                    extra.extend(tls::parse_pem(pem, "the builder's CA certificates")?);
                }
                tls::http_client(&extra, self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT))?
            }
        };
        if let AssertionSource::File(f) = &assertion {
            tracing::debug!(tenant = %tenant_id, client_id = %client_id, token_file = %f.path().display(), %authority, "workload identity credential configured");
        }
        Ok(WorkloadIdentityCredential {
            inner: Arc::new(Inner {
                tenant_id,
                client_id,
                authority,
                allowed_tenants: self.allowed_tenants,
                multitenant_disabled: self.multitenant_disabled,
                assertion,
                http,
                timeout: self.timeout.unwrap_or(DEFAULT_TIMEOUT),
                retry: self.retry.unwrap_or_default(),
                cache: TokenCache::default(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builder() -> WorkloadIdentityCredentialBuilder {
        WorkloadIdentityCredential::builder()
            .tenant_id("tenant-a")
            .client_id("client")
            .assertion("a.b.c")
    }

    #[test]
    fn scopes_are_validated() {
        assert_eq!(
            validate_scopes(&["https://vault.azure.net/.default"]).ok(),
            Some("https://vault.azure.net/.default")
        );
        assert_eq!(
            validate_scopes(&["api://a-b_c:1/.default"]).ok(),
            Some("api://a-b_c:1/.default")
        );
        for (scopes, reason) in [
            (&[][..], "no scope"),
            (&["https://a/.default", "https://b/.default"][..], "exactly one"),
            (&["https://graph.microsoft.com/User.Read"][..], "/.default"),
            (&["/.default"][..], "no resource"),
            (&["https://a b/.default"][..], "only letters"),
        ] {
            let e = validate_scopes(scopes).expect_err("invalid");
            assert!(matches!(e, Error::InvalidScope { .. }));
            assert!(e.to_string().contains(reason), "{e}");
            assert!(e.hint().is_some());
        }
    }

    #[test]
    fn authority_is_normalised_and_must_be_https() {
        assert_eq!(
            normalize_authority("https://login.microsoftonline.com/")
                .ok()
                .as_deref(),
            Some("https://login.microsoftonline.com")
        );
        assert_eq!(
            normalize_authority("login.microsoftonline.us").ok().as_deref(),
            Some("https://login.microsoftonline.us")
        );
        assert_eq!(
            normalize_authority("https://adfs.contoso.com/adfs/")
                .ok()
                .as_deref(),
            Some("https://adfs.contoso.com/adfs")
        );
        assert!(matches!(
            normalize_authority("http://login.microsoftonline.com/"),
            Err(Error::InsecureAuthority { .. })
        ));
        let e = normalize_authority("http://127.0.0.1:8443").expect_err("http");
        assert!(e.to_string().contains("only https://"), "{e}");
        for bad in ["ftp://x", "https://", "https://x/?a=b", "https://u:p@x/"] {
            assert!(
                matches!(
                    normalize_authority(bad),
                    Err(Error::InvalidSetting {
                        setting: "AZURE_AUTHORITY_HOST",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn claims_merge_with_cae() {
        assert_eq!(merge_claims(None, false).expect("ok"), None);
        let cp1: Value = serde_json::json!({"access_token": {"xms_cc": {"values": ["CP1"]}}});
        let merged = merge_claims(None, true).expect("ok").expect("some");
        assert_eq!(serde_json::from_str::<Value>(&merged).expect("json"), cp1);
        let challenge = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
        let merged = merge_claims(Some(challenge), true).expect("ok").expect("some");
        assert_eq!(
            serde_json::from_str::<Value>(&merged).expect("json"),
            serde_json::json!({"access_token": {"nbf": {"essential": true, "value": "1700000000"}, "xms_cc": {"values": ["CP1"]}}})
        );
        // base64 form, as found in WWW-Authenticate
        let b64 = base64::engine::general_purpose::STANDARD.encode(challenge);
        let merged = merge_claims(Some(&b64), false).expect("ok").expect("some");
        assert_eq!(
            serde_json::from_str::<Value>(&merged).expect("json"),
            serde_json::from_str::<Value>(challenge).expect("json")
        );
        for bad in ["not json", "[1]", r#"{"access_token": 5}"#] {
            assert!(
                matches!(merge_claims(Some(bad), true), Err(Error::InvalidClaims { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn tenants_resolve_like_azure_identity() {
        let c = builder().build().expect("build");
        assert_eq!(c.inner.resolve_tenant(None).ok(), Some("tenant-a"));
        assert_eq!(c.inner.resolve_tenant(Some("TENANT-A")).ok(), Some("tenant-a"));
        let e = c.inner.resolve_tenant(Some("tenant-b")).expect_err("not allowed");
        assert!(matches!(e, Error::TenantNotAllowed { .. }), "{e}");
        assert!(matches!(
            c.inner.resolve_tenant(Some("bad/tenant")),
            Err(Error::InvalidSetting { .. })
        ));

        let c = builder()
            .additionally_allowed_tenants(["tenant-b"])
            .build()
            .expect("build");
        assert_eq!(c.inner.resolve_tenant(Some("tenant-b")).ok(), Some("tenant-b"));
        assert!(c.inner.resolve_tenant(Some("tenant-c")).is_err());
        let c = builder()
            .additionally_allowed_tenants(["*"])
            .build()
            .expect("build");
        assert_eq!(c.inner.resolve_tenant(Some("tenant-c")).ok(), Some("tenant-c"));
        let c = builder()
            .additionally_allowed_tenants(["*"])
            .disable_multitenant(true)
            .build()
            .expect("build");
        assert_eq!(c.inner.resolve_tenant(Some("tenant-c")).ok(), Some("tenant-a"));
    }

    #[test]
    fn missing_settings_name_the_variable() {
        let e = WorkloadIdentityCredential::builder()
            .build()
            .expect_err("missing");
        assert!(e.to_string().contains("AZURE_TENANT_ID"), "{e}");
        let e = WorkloadIdentityCredential::builder()
            .tenant_id("t")
            .build()
            .expect_err("missing");
        assert!(e.to_string().contains("AZURE_CLIENT_ID"), "{e}");
        let e = WorkloadIdentityCredential::builder()
            .tenant_id("t")
            .client_id("c")
            .build()
            .expect_err("missing");
        assert!(e.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"), "{e}");
        let e = builder().tenant_id("not a tenant").build().expect_err("invalid");
        assert!(
            matches!(
                e,
                Error::InvalidSetting {
                    setting: "AZURE_TENANT_ID",
                    ..
                }
            ),
            "{e}"
        );
        let e = builder()
            .add_root_certificates_pem("garbage")
            .build()
            .expect_err("bad pem");
        assert!(matches!(e, Error::TrustStore { .. }), "{e}");
    }

    #[test]
    fn debug_shows_configuration_but_not_the_assertion() {
        let b = builder().assertion("SECRET-ASSERTION");
        let shown = format!("{b:?}");
        assert!(!shown.contains("SECRET-ASSERTION"), "{shown}");
        let c = b.build().expect("build");
        let shown = format!("{c:?}");
        assert!(!shown.contains("SECRET-ASSERTION"), "{shown}");
        assert!(shown.contains("tenant-a") && shown.contains("client"), "{shown}");
    }

    #[test]
    fn request_ids_look_like_uuid_v4() {
        let id = request_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        assert_ne!(id, request_id());
    }
}
