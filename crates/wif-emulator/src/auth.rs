//! Bearer token checks for Graph and ARM: the token must be one the emulator issued (its key,
//! its issuer for the token's tenant), unexpired, for the API's audience.

use axum::http::{HeaderMap, header};

use crate::{app::App, jwt::Jwt, state::now_secs};

/// Who called, from a verified bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller {
    pub(crate) tenant_id: String,
    pub(crate) client_id: String,
    pub(crate) issuer: String,
}

/// Why a bearer token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BearerError {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// Not a JWS.
    Malformed,
    /// Not signed by the emulator's key.
    Signature,
    /// `exp` is past (seconds).
    Expired { exp: i64, now: i64 },
    /// `nbf` is in the future.
    NotYetValid,
    /// `aud` is not one the API accepts.
    Audience(String),
    /// `iss` is not the emulator's issuer for the token's `tid`.
    Issuer(String),
}

/// Verifies the request's bearer token for an API accepting `audiences`.
pub(crate) fn verify_bearer(
    app: &App,
    headers: &HeaderMap,
    audiences: &[&str],
) -> Result<Caller, BearerError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(BearerError::Missing)?;
    let (scheme, token) = value.trim().split_once(' ').ok_or(BearerError::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::Missing);
    }
    let token = token.trim();
    if token.is_empty() {
        return Err(BearerError::Missing);
    }
    let jwt = Jwt::parse(token).ok_or(BearerError::Malformed)?;
    if jwt.alg() != Some("RS256")
        || jwt.kid() != Some(app.signing.kid())
        || !jwt.verify(&app.signing.public_key())
    {
        return Err(BearerError::Signature);
    }
    let now = now_secs() as i64;
    let skew = i64::try_from(app.settings().clock_skew_seconds).unwrap_or(i64::MAX);
    let exp = jwt.claim_time("exp").ok_or(BearerError::Malformed)?;
    if now > exp.saturating_add(skew) {
        return Err(BearerError::Expired { exp, now });
    }
    if jwt
        .claim_time("nbf")
        .is_some_and(|nbf| now.saturating_add(skew) < nbf)
    {
        return Err(BearerError::NotYetValid);
    }
    let aud = jwt.claim_str("aud").unwrap_or_default().to_string();
    if !audiences.contains(&aud.as_str()) {
        return Err(BearerError::Audience(aud));
    }
    let tenant_id = jwt.claim_str("tid").unwrap_or_default().to_string();
    let issuer = jwt.claim_str("iss").unwrap_or_default().to_string();
    if tenant_id.is_empty() || issuer != app.issuer(&tenant_id) {
        return Err(BearerError::Issuer(issuer));
    }
    let client_id = jwt.claim_str("appid").unwrap_or_default().to_string();
    Ok(Caller {
        tenant_id,
        client_id,
        issuer,
    })
}

/// RFC 3339 for ARM's expiry message.
pub(crate) fn utc(secs: i64) -> String {
    jiff::Timestamp::from_second(secs)
        .map(|t| t.strftime("%m/%d/%Y %H:%M:%S").to_string())
        .unwrap_or_else(|_| secs.to_string())
}
