//! [`WorkloadIdentityCredentialBuilder`]: explicit settings, else the environment (the variables the webhook injects), checked once in [`WorkloadIdentityCredentialBuilder::build`].

use super::*;

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
pub(super) fn env_var(name: &str) -> Option<String> {
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
        let tenant_id = tenant_id(self.tenant_id)?;
        let client_id = client_id(self.client_id, self.identity)?;
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

/// The tenant id, trimmed, present and well-formed.
fn tenant_id(tenant_id: Option<String>) -> Result<String> {
    let tenant_id = tenant_id
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or(Error::MissingSetting {
            setting: "tenant id",
            env_var: env::AZURE_TENANT_ID,
            method: "tenant_id",
        })?;
    validate_tenant(&tenant_id, env::AZURE_TENANT_ID)?;
    Ok(tenant_id)
}

/// The client id, trimmed and present (for a named identity, the error names its variable).
fn client_id(client_id: Option<String>, identity: Option<String>) -> Result<String> {
    if let Some(name) = identity.as_deref().filter(|n| !env::is_identity_name(n)) {
        return Err(Error::InvalidSetting {
            setting: "identity name",
            value: name.to_owned(),
            reason: "not a lower-case DNS label (a-z, 0-9 and '-', at most 63 characters), as in \
                     azure.workload.identity/client-id.<name>"
                .into(),
        });
    }
    let client_id = match client_id.map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()) {
        Some(c) => c,
        None => {
            return Err(match identity {
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
    Ok(client_id)
}
