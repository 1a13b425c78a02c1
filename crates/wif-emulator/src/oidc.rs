//! Fetching an assertion issuer's signing keys: `{iss}/.well-known/openid-configuration` →
//! `jwks_uri` → keys (first 100, as Entra stores), cached per issuer for a short TTL and refetched
//! once when a `kid` is not in the cached set (key rotation).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::jwt::PublicKey;

/// Entra keeps only this many keys of an issuer's JWKS.
const MAX_KEYS: usize = 100;

/// Why no key could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// Discovery or JWKS could not be fetched or parsed (AADSTS90061).
    Unreachable(String),
    /// The JWKS holds no key for the token's `kid`/`alg` (AADSTS7000272).
    NotFound,
}

#[derive(Debug, Clone)]
struct Cached {
    keys: Vec<(Option<String>, PublicKey)>,
    fetched: Instant,
}

/// The issuer key cache.
#[derive(Debug)]
pub(crate) struct IssuerKeys {
    client: reqwest::Client,
    cache: Mutex<HashMap<String, Cached>>,
}

impl IssuerKeys {
    pub(crate) fn new(client: reqwest::Client) -> Self {
        Self {
            client,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, issuer: &str) -> Option<Cached> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.get(issuer).cloned()
    }

    fn store(&self, issuer: &str, cached: Cached) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache.insert(issuer.to_string(), cached);
    }

    /// The keys of `issuer` that may have signed a token with this `kid` and `alg`.
    pub(crate) async fn candidates(
        &self,
        issuer: &str,
        kid: Option<&str>,
        alg: &str,
        ttl: Duration,
        timeout: Duration,
    ) -> Result<Vec<PublicKey>, KeyError> {
        let select = |cached: &Cached| -> Vec<PublicKey> {
            cached
                .keys
                .iter()
                .filter(|(key_kid, key)| key.supports(alg) && (kid.is_none() || key_kid.as_deref() == kid))
                .map(|(_, key)| key.clone())
                .collect()
        };
        if let Some(cached) = self.cached(issuer).filter(|c| c.fetched.elapsed() < ttl) {
            let keys = select(&cached);
            if !keys.is_empty() {
                return Ok(keys);
            }
        }
        let fetched = self.fetch(issuer, timeout).await?;
        let keys = select(&fetched);
        self.store(issuer, fetched);
        if keys.is_empty() {
            Err(KeyError::NotFound)
        } else {
            Ok(keys)
        }
    }

    async fn fetch(&self, issuer: &str, timeout: Duration) -> Result<Cached, KeyError> {
        let unreachable = |message: String| KeyError::Unreachable(message);
        let issuer_url =
            url::Url::parse(issuer).map_err(|e| unreachable(format!("issuer is not a URL: {e}")))?;
        if issuer_url.scheme() != "https" {
            return Err(unreachable("issuer is not an https URL".into()));
        }
        let discovery_url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let discovery = self.get_json(&discovery_url, timeout).await?;
        let jwks_uri = discovery
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| unreachable(format!("{discovery_url} has no jwks_uri")))?;
        let jwks_url =
            url::Url::parse(jwks_uri).map_err(|e| unreachable(format!("jwks_uri is not a URL: {e}")))?;
        if jwks_url.scheme() != "https" {
            return Err(unreachable("jwks_uri is not an https URL".into()));
        }
        let jwks = self.get_json(jwks_uri, timeout).await?;
        let keys = jwks
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| unreachable(format!("{jwks_uri} has no keys array")))?;
        let keys = keys
            .iter()
            .take(MAX_KEYS)
            .filter(|jwk| jwk.get("use").and_then(Value::as_str).is_none_or(|u| u == "sig"))
            .filter_map(|jwk| {
                let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_string);
                PublicKey::from_jwk(jwk).map(|key| (kid, key))
            })
            .collect();
        tracing::debug!(issuer, "fetched issuer signing keys");
        Ok(Cached {
            keys,
            fetched: Instant::now(),
        })
    }

    async fn get_json(&self, url: &str, timeout: Duration) -> Result<Value, KeyError> {
        let response = self
            .client
            .get(url)
            // Kubernetes serves its JWKS as application/jwk-set+json and answers 406 to a
            // plain application/json Accept header.
            .header("accept", "application/json, application/jwk-set+json")
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| KeyError::Unreachable(format!("GET {url}: {}", error_chain(&e))))?;
        let status = response.status();
        if !status.is_success() {
            return Err(KeyError::Unreachable(format!("GET {url}: HTTP {status}")));
        }
        response
            .json()
            .await
            .map_err(|e| KeyError::Unreachable(format!("GET {url}: invalid JSON: {e}")))
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
