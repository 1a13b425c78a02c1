//! Typed errors. None of them ever carries the access token or the client assertion.

use std::{error::Error as StdError, fmt, io, path::PathBuf, sync::Arc, time::Duration};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while configuring the credential or getting a token.
///
/// Errors are cheap to clone (callers waiting on the same in-flight request all receive it).
/// [`Error::hint`] gives a one-line suggestion for the common causes.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A required setting was given neither to the builder nor in the environment.
    #[error(
        "missing {setting}: set the {env_var} environment variable or call WorkloadIdentityCredentialBuilder::{method}"
    )]
    MissingSetting {
        /// What is missing, e.g. `tenant id`.
        setting: &'static str,
        /// The environment variable that provides it.
        env_var: &'static str,
        /// The builder method that provides it.
        method: &'static str,
    },

    /// A named identity's client id is not in the environment.
    #[error(
        "missing client id of the identity {name:?}: set the {env_var} environment variable (the webhook sets it \
         from the ServiceAccount annotation azure.workload.identity/client-id.{name})"
    )]
    MissingNamedIdentity {
        /// The identity's name.
        name: String,
        /// The variable that was read.
        env_var: String,
    },

    /// A setting (from the builder or an environment variable) has an invalid value.
    #[error("invalid {setting} {value:?}: {reason}")]
    InvalidSetting {
        /// The setting, named after its environment variable where there is one.
        setting: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The authority host is not HTTPS. The client assertion is a credential; it is never sent
    /// in clear text.
    #[error(
        "refusing authority host {authority:?}: only https:// authorities are allowed (AZURE_AUTHORITY_HOST)"
    )]
    InsecureAuthority {
        /// The rejected authority.
        authority: String,
    },

    /// The scopes are not exactly one `<resource>/.default` scope.
    #[error("invalid scopes {scopes:?}: {reason}")]
    InvalidScope {
        /// The scopes that were passed.
        scopes: Vec<String>,
        /// What is wrong with them.
        reason: &'static str,
    },

    /// A token was requested for a tenant the credential may not use.
    #[error(
        "the credential is not configured to acquire tokens for tenant {requested:?} (configured tenant {configured:?}): \
         add it, or \"*\", to the additionally allowed tenants (AZURE_ADDITIONALLY_ALLOWED_TENANTS)"
    )]
    TenantNotAllowed {
        /// The tenant the caller asked for.
        requested: String,
        /// The credential's tenant.
        configured: String,
    },

    /// The claims challenge is neither JSON nor base64-encoded JSON.
    #[error("invalid claims challenge: {reason}")]
    InvalidClaims {
        /// Why it could not be used.
        reason: String,
    },

    /// The federated token file could not be read.
    #[error("failed to read the federated token file {} (AZURE_FEDERATED_TOKEN_FILE): {source}", path.display())]
    TokenFileUnreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: Arc<io::Error>,
    },

    /// The federated token file is empty or not text.
    #[error("the federated token file {} (AZURE_FEDERATED_TOKEN_FILE) {problem}", path.display())]
    TokenFileInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, e.g. `is empty`.
        problem: &'static str,
    },

    /// The client assertion callback failed or returned an empty assertion.
    #[error("the client assertion callback failed: {source}")]
    AssertionCallback {
        /// The callback's error.
        #[source]
        source: Arc<dyn StdError + Send + Sync>,
    },

    /// Trusted CA certificates could not be loaded.
    #[error("failed to load trusted CA certificates from {origin}: {reason}")]
    TrustStore {
        /// Where they came from, e.g. `SSL_CERT_FILE=/etc/ca.pem`.
        origin: String,
        /// What went wrong.
        reason: String,
    },

    /// The HTTP client could not be built.
    #[error("failed to build the HTTP client: {source}")]
    HttpClient {
        /// reqwest's error.
        #[source]
        source: Arc<reqwest::Error>,
    },

    /// Entra (or whatever answered at the authority) returned an error status.
    #[error("{0}")]
    Entra(Box<EntraError>),

    /// The token endpoint could not be reached, did not answer in time, or its response could
    /// not be read in full. Retried before being returned.
    #[error("failed to get a response from the token endpoint {endpoint} after {attempts} attempt(s): {kind}: {}", chain(source.as_ref()))]
    Transport {
        /// The token endpoint URL.
        endpoint: String,
        /// The kind of failure.
        kind: TransportErrorKind,
        /// Attempts made.
        attempts: u32,
        /// reqwest's error (its chain has the details).
        #[source]
        source: Arc<reqwest::Error>,
    },

    /// A success status whose body is not a usable token response.
    #[error("the token endpoint answered HTTP {status} with an invalid token response: {reason}")]
    InvalidResponse {
        /// HTTP status.
        status: u16,
        /// What is wrong with the body.
        reason: String,
    },

    /// The task fetching the token ended unexpectedly (a panic or runtime shutdown).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Kinds of [`Error::Transport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportErrorKind {
    /// TCP connection failed (refused, unreachable, DNS).
    Connect,
    /// The TLS handshake failed, e.g. an untrusted certificate.
    Tls,
    /// The attempt timed out.
    Timeout,
    /// The response body was cut short or could not be read.
    Body,
    /// Anything else reqwest reports.
    Other,
}

impl fmt::Display for TransportErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "connection failed",
            Self::Tls => "TLS handshake failed",
            Self::Timeout => "timed out",
            Self::Body => "response could not be read",
            Self::Other => "request failed",
        })
    }
}

impl TransportErrorKind {
    pub(crate) fn classify(err: &reqwest::Error) -> Self {
        let text = chain(err);
        if err.is_timeout() {
            Self::Timeout
        } else if ["certificate", "handshake", "fatal alert"]
            .iter()
            .any(|w| text.contains(w))
        {
            Self::Tls
        } else if err.is_connect() {
            Self::Connect
        } else if err.is_body() || err.is_decode() {
            Self::Body
        } else {
            Self::Other
        }
    }
}

/// The error chain on one line (`a: b: c`), skipping repeats.
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

impl Error {
    /// The AADSTS code of an Entra error.
    pub fn aadsts(&self) -> Option<u32> {
        match self {
            Self::Entra(e) => e.aadsts(),
            _ => None,
        }
    }

    /// The HTTP status of an Entra error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Entra(e) => Some(e.status),
            Self::InvalidResponse { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A one-line suggestion for the likely cause, if this is a common failure.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            Self::Entra(e) => e.hint(),
            Self::Transport {
                kind: TransportErrorKind::Tls,
                ..
            } => Some(
                "the authority's TLS certificate is not trusted: add its CA certificate to the PEM file named by SSL_CERT_FILE",
            ),
            Self::Transport {
                kind: TransportErrorKind::Timeout | TransportErrorKind::Connect,
                ..
            } => Some(
                "check egress from the pod to the authority host (AZURE_AUTHORITY_HOST): DNS, proxy, NetworkPolicy, firewall",
            ),
            Self::TokenFileUnreadable { .. } | Self::TokenFileInvalid { .. } => Some(
                "the pod needs the projected ServiceAccount token volume: label it azure.workload.identity/use=\"true\" so the webhook mounts it",
            ),
            Self::MissingNamedIdentity { .. } => Some(
                "annotate the pod's ServiceAccount with azure.workload.identity/client-id.<name> and recreate the pod; \
                 the names it has are the AZURE_CLIENT_ID_<NAME> variables in the container",
            ),
            Self::MissingSetting { .. } => Some(
                "the webhook injects AZURE_* variables only into pods labelled azure.workload.identity/use=\"true\" whose ServiceAccount has the azure.workload.identity/client-id annotation",
            ),
            Self::InvalidScope { .. } => Some(
                "use exactly one scope of the form <resource>/.default, e.g. https://vault.azure.net/.default",
            ),
            _ => None,
        }
    }

    /// Whether retrying later may succeed (throttling, service or network trouble).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Entra(e) => is_retryable_status(e.status),
            Self::Transport { .. } => true,
            _ => false,
        }
    }
}

/// Statuses worth another attempt: throttling, timeouts and server faults (not 501/505, which
/// will not change).
pub(crate) fn is_retryable_status(status: u16) -> bool {
    matches!(status, 408 | 429) || (500..600).contains(&status) && !matches!(status, 501 | 505)
}

/// An error answer from the token endpoint, with Entra's fields where the body had them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntraError {
    /// HTTP status.
    pub status: u16,
    /// OAuth2 error class (`invalid_client`, `invalid_request`, …).
    pub error: Option<String>,
    /// Entra's description; starts with `AADSTSnnnn:` and carries trace/correlation ids.
    pub error_description: Option<String>,
    /// Entra's numeric error codes (`error_codes`).
    pub error_codes: Vec<u32>,
    /// Trace id, for Microsoft support.
    pub trace_id: Option<String>,
    /// Correlation id, for Microsoft support.
    pub correlation_id: Option<String>,
    /// Entra's timestamp of the failure.
    pub timestamp: Option<String>,
    /// Link to the error code's documentation.
    pub error_uri: Option<String>,
    /// Sub-error (interaction/claims-challenge errors).
    pub suberror: Option<String>,
    /// Claims challenge returned with the error.
    pub claims: Option<String>,
    /// `Retry-After` (or `retry-after-ms`) of the last answer.
    pub retry_after: Option<Duration>,
    /// For bodies that are not Entra JSON (a proxy's HTML page, text): a short excerpt.
    pub body_excerpt: Option<String>,
    /// Attempts made before giving up.
    pub attempts: u32,
}

impl EntraError {
    /// An error with only a status (the body adds the rest).
    pub(crate) fn with_status(status: u16) -> Self {
        Self {
            status,
            error: None,
            error_description: None,
            error_codes: Vec::new(),
            trace_id: None,
            correlation_id: None,
            timestamp: None,
            error_uri: None,
            suberror: None,
            claims: None,
            retry_after: None,
            body_excerpt: None,
            attempts: 1,
        }
    }

    /// The AADSTS code: the first of `error_codes`, else the number after `AADSTS` in the
    /// description.
    pub fn aadsts(&self) -> Option<u32> {
        self.error_codes.first().copied().or_else(|| {
            let d = self.error_description.as_deref()?;
            let rest = &d[d.find("AADSTS")? + 6..];
            let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
    }

    /// The first line of Entra's message, without its `AADSTSnnnn:` prefix; for non-JSON
    /// bodies, the excerpt.
    pub fn message(&self) -> Option<&str> {
        if let Some(d) = self.error_description.as_deref() {
            let line = d.split(['\r', '\n']).next().unwrap_or("").trim();
            let line = match line.strip_prefix("AADSTS") {
                Some(rest) => rest
                    .trim_start_matches(|c: char| c.is_ascii_digit())
                    .trim_start_matches(':')
                    .trim(),
                None => line,
            };
            return Some(line);
        }
        self.body_excerpt.as_deref()
    }

    /// A one-line suggestion for the common AADSTS codes and statuses.
    pub fn hint(&self) -> Option<&'static str> {
        self.aadsts().and_then(hint_for_code).or(match self.status {
            429 => Some("throttled by Entra: cache tokens (reuse one credential) and back off"),
            502..=504 => Some(
                "the authority or a proxy in front of it is unavailable: retry later, check egress proxies",
            ),
            _ => None,
        })
    }
}

impl fmt::Display for EntraError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token request rejected: HTTP {}", self.status)?;
        if let Some(e) = &self.error {
            write!(f, " {e}")?;
        }
        if let Some(code) = self.aadsts() {
            write!(f, " AADSTS{code}")?;
        }
        if let Some(m) = self.message() {
            write!(f, ": {m}")?;
        }
        if let Some(h) = self.hint() {
            write!(f, " (hint: {h})")?;
        }
        if let Some(t) = &self.trace_id {
            write!(f, " [trace_id {t}")?;
            if let Some(c) = &self.correlation_id {
                write!(f, ", correlation_id {c}")?;
            }
            f.write_str("]")?;
        }
        if self.attempts > 1 {
            write!(f, " after {} attempts", self.attempts)?;
        }
        Ok(())
    }
}

impl StdError for EntraError {}

/// Hints for the AADSTS codes seen with workload identity. Codes may change (Entra says so);
/// they steer hints only, never control flow.
pub fn hint_for_code(code: u32) -> Option<&'static str> {
    Some(match code {
        70021 => {
            "no federated identity credential matches the token's issuer, subject and audience; a credential created moments ago may still be propagating (minutes): retry later"
        }
        700211 => {
            "issuer mismatch: the federated credential's issuer must equal the token's `iss` (the cluster's OIDC issuer URL) exactly, trailing slash included"
        }
        700212 => {
            "audience mismatch: the projected token's `aud` must equal the federated credential's audience (api://AzureADTokenExchange by default)"
        }
        700213 => {
            "subject mismatch: the federated credential's subject must be exactly system:serviceaccount:<namespace>:<serviceaccount> (case-sensitive)"
        }
        700024 => {
            "the ServiceAccount token presented is expired or not yet valid: check that kubelet rotates the token file and that the node clock is right"
        }
        50027 => {
            "the token file does not hold a valid JWT (empty, wrong file, extra bytes) or the issuer's keys cannot validate it"
        }
        90061 => {
            "Entra could not fetch the issuer's OIDC discovery document or JWKS: the cluster's OIDC issuer URL must be publicly reachable over HTTPS"
        }
        7000272 => {
            "the key that signed the ServiceAccount token is not in the issuer's published JWKS (key rotation, re-created cluster); Entra may also cache the old JWKS for a while"
        }
        50012 | 700027 => {
            "the token's signature does not verify against the issuer's JWKS: check the keys the OIDC issuer publishes"
        }
        700016 => {
            "application not found in the tenant: AZURE_CLIENT_ID must be the application (client) id, not the object id, of an app or managed identity in AZURE_TENANT_ID"
        }
        90002 => {
            "tenant not found: check AZURE_TENANT_ID, and AZURE_AUTHORITY_HOST if the tenant lives in a national cloud"
        }
        900023 => "the tenant id is neither a GUID nor a verified domain: check AZURE_TENANT_ID",
        9001023 => {
            "client credentials need a tenant id or domain, not common/consumers: check AZURE_TENANT_ID"
        }
        7000215 => {
            "an invalid client secret was sent; workload identity sends none, so a stray AZURE_CLIENT_SECRET is being used by another credential: remove or fix it"
        }
        7000218 => "the request carried no client assertion: the federated token file is empty",
        50049 => "unknown or invalid authority instance: check AZURE_AUTHORITY_HOST",
        900144 => {
            "a required request parameter is missing (the message names it): check AZURE_CLIENT_ID and that the token file is not empty"
        }
        1002012 | 70011 => "the scope must be <resource>/.default for an app-only token",
        700022 => "request one resource per token (a single <resource>/.default scope)",
        500011 => "the resource was not found in the tenant: check the scope's resource URI and the tenant",
        53003 => {
            "blocked by Conditional Access for workload identities: an administrator must change the policy"
        }
        90055 | 50196 => "throttled: reuse one credential so tokens are cached, and back off",
        50033 | 90006 | 90024 | 90033 => "transient Entra error: retry later",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aadsts_from_codes_or_description() {
        let mut e = EntraError::with_status(400);
        e.error_description = Some("AADSTS700213: No matching federated identity record found for presented assertion subject 'x'.\r\nTrace ID: t".into());
        assert_eq!(e.aadsts(), Some(700213));
        assert_eq!(
            e.message(),
            Some("No matching federated identity record found for presented assertion subject 'x'.")
        );
        e.error_codes = vec![70021];
        assert_eq!(e.aadsts(), Some(70021));
        assert!(e.hint().is_some_and(|h| h.contains("propagating")));
    }

    #[test]
    fn every_listed_code_has_a_hint() {
        for code in [
            700211, 700212, 700213, 70021, 700024, 90061, 7000272, 700016, 90002, 7000215, 50049, 900144,
            50027, 50012, 700027, 7000218, 1002012, 700022, 500011, 9001023, 900023, 53003, 90055, 50196,
            50033,
        ] {
            assert!(hint_for_code(code).is_some(), "{code}");
        }
        assert!(hint_for_code(1).is_none());
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(is_retryable_status(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 501, 505] {
            assert!(!is_retryable_status(s), "{s}");
        }
    }

    #[test]
    fn display_is_one_line_with_code_message_hint_and_ids() {
        let mut e = EntraError::with_status(401);
        e.error = Some("invalid_client".into());
        e.error_codes = vec![700024];
        e.error_description = Some("AADSTS700024: Client assertion is not within its valid time range.\r\nTrace ID: abc\r\nCorrelation ID: def".into());
        e.trace_id = Some("abc".into());
        e.correlation_id = Some("def".into());
        let s = Error::Entra(Box::new(e)).to_string();
        assert!(!s.contains('\n'), "{s}");
        assert!(
            s.contains(
                "HTTP 401 invalid_client AADSTS700024: Client assertion is not within its valid time range."
            ),
            "{s}"
        );
        assert!(
            s.contains("hint: the ServiceAccount token presented is expired"),
            "{s}"
        );
        assert!(s.contains("trace_id abc, correlation_id def"), "{s}");
    }
}
