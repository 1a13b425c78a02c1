//! The access token handed to callers, the secret wrapper it lives in, and per-request options.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, SystemTime},
};

/// A secret string (an access token or a client assertion).
///
/// `Debug` and `Display` print `[REDACTED]`; the value is only reachable through
/// [`Secret::expose_secret`]. Cloning is cheap (the string is shared, not copied).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// Returns the secret value. Do not log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// An Entra access token with its lifetime.
///
/// Cloning is cheap: the fields are shared. `Debug` never prints the token.
#[derive(Clone)]
pub struct AccessToken(Arc<TokenInner>);

struct TokenInner {
    token: Secret,
    token_type: String,
    expires_on: SystemTime,
    refresh_on: SystemTime,
}

impl AccessToken {
    /// Builds a token (useful for tests and for adapters).
    pub fn new(
        token: impl Into<Secret>,
        token_type: impl Into<String>,
        expires_on: SystemTime,
        refresh_on: SystemTime,
    ) -> Self {
        Self(Arc::new(TokenInner {
            token: token.into(),
            token_type: token_type.into(),
            expires_on,
            refresh_on,
        }))
    }

    /// The bearer token (redacted when printed; use [`Secret::expose_secret`] to send it).
    pub fn token(&self) -> &Secret {
        &self.0.token
    }

    /// The token type Entra returned, normally `Bearer`.
    pub fn token_type(&self) -> &str {
        &self.0.token_type
    }

    /// When the token expires (computed from the time the request was sent, so slightly early).
    pub fn expires_on(&self) -> SystemTime {
        self.0.expires_on
    }

    /// When the cache starts refreshing this token in the background: Entra's `refresh_in`,
    /// else half of the lifetime.
    pub fn refresh_on(&self) -> SystemTime {
        self.0.refresh_on
    }
}

/// RFC 3339, to the second, for `Debug` output.
fn rfc3339(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        Err(_) => format!("{t:?}"),
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &self.0.token)
            .field("token_type", &self.0.token_type)
            .field("expires_on", &rfc3339(self.0.expires_on))
            .field("refresh_on", &rfc3339(self.0.refresh_on))
            .finish()
    }
}

/// Per-request options of [`get_token`](crate::WorkloadIdentityCredential::get_token).
///
/// ```
/// use wif_exchange::TokenRequestOptions;
/// let opts = TokenRequestOptions::new().with_cae(true).with_claims(r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#);
/// assert!(opts.enable_cae);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenRequestOptions {
    /// Request the token from this tenant instead of the configured one. Allowed only if it is
    /// the configured tenant or listed in the additionally allowed tenants (`*` allows any).
    pub tenant_id: Option<String>,
    /// A claims challenge (JSON, or the base64 form found in `WWW-Authenticate`) from a resource
    /// that rejected the previous token.
    pub claims: Option<String>,
    /// Continuous access evaluation: advertise the `CP1` client capability so Entra may issue a
    /// long-lived, revocable token.
    pub enable_cae: bool,
}

impl TokenRequestOptions {
    /// Default options: configured tenant, no claims, no CAE.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the per-request tenant.
    #[must_use]
    pub fn with_tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant_id.into());
        self
    }

    /// Sets the claims challenge.
    #[must_use]
    pub fn with_claims(mut self, claims: impl Into<String>) -> Self {
        self.claims = Some(claims.into());
        self
    }

    /// Enables or disables continuous access evaluation (CAE).
    #[must_use]
    pub fn with_cae(mut self, enable: bool) -> Self {
        self.enable_cae = enable;
        self
    }
}

/// Lifetime bookkeeping of a freshly issued token.
pub(crate) struct Lifetime {
    pub expires_in: Duration,
    pub refresh_in: Duration,
    /// Before the token's real expiry, the point after which callers must wait for a new one.
    pub usable_for: Duration,
}

/// Margin before expiry after which a cached token is no longer handed out.
const MAX_EXPIRY_MARGIN: Duration = Duration::from_secs(300);

impl Lifetime {
    /// `refresh_in` from Entra if it is sensible, else half the lifetime; a token is not served
    /// during the last 5 minutes of its life (or its last quarter, for short-lived tokens).
    pub(crate) fn new(expires_in: Duration, refresh_in: Option<Duration>) -> Self {
        let margin = MAX_EXPIRY_MARGIN.min(expires_in / 4);
        let usable_for = expires_in.saturating_sub(margin);
        let refresh_in = refresh_in
            .filter(|r| !r.is_zero() && *r < expires_in)
            .unwrap_or(expires_in / 2)
            .min(usable_for);
        Self {
            expires_in,
            refresh_in,
            usable_for,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_redacted_everywhere() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "[REDACTED]");
        assert_eq!(format!("{s}"), "[REDACTED]");
        assert_eq!(s.expose_secret(), "hunter2");
        let t = AccessToken::new("eyJ.secret.token", "Bearer", SystemTime::now(), SystemTime::now());
        let dbg = format!("{t:?} {t:#?}");
        assert!(!dbg.contains("eyJ.secret.token"), "{dbg}");
        assert!(dbg.contains("Bearer"));
    }

    #[test]
    fn lifetime_uses_refresh_in_or_half() {
        let l = Lifetime::new(Duration::from_secs(3600), Some(Duration::from_secs(600)));
        assert_eq!(l.refresh_in, Duration::from_secs(600));
        assert_eq!(l.usable_for, Duration::from_secs(3300));
        let l = Lifetime::new(Duration::from_secs(3600), None);
        assert_eq!(l.refresh_in, Duration::from_secs(1800));
        // refresh_in longer than the lifetime is ignored
        let l = Lifetime::new(Duration::from_secs(3600), Some(Duration::from_secs(7200)));
        assert_eq!(l.refresh_in, Duration::from_secs(1800));
        // short-lived token: margin is a quarter of the lifetime
        let l = Lifetime::new(Duration::from_secs(8), None);
        assert_eq!(l.usable_for, Duration::from_secs(6));
        assert_eq!(l.refresh_in, Duration::from_secs(4));
        let l = Lifetime::new(Duration::from_secs(8), Some(Duration::from_secs(7)));
        assert_eq!(l.refresh_in, Duration::from_secs(6));
    }
}
