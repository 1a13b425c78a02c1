//! Client assertions: parsed and checked without keys ([`Assertion::check`]), then the signature against the issuer's keys and the match against the client's federated credentials, in Entra's order (see the table in [`super`]).

use super::*;

/// The claims of a client assertion that passed the checks needing no key and no directory:
/// well-formed, a supported algorithm, issuer, subject, audiences, lifetime and time range.
pub(crate) struct Assertion {
    jwt: Jwt,
    alg: String,
    iss: String,
    sub: String,
    audiences: Vec<String>,
}

impl Assertion {
    /// Parses and checks `assertion` at `now` (seconds) with `skew` seconds of clock skew.
    pub(crate) fn check(assertion: &str, skew_seconds: u64, now: i64) -> Result<Self, AadError> {
        let malformed = || AadError::invalid_request(50027, "JWT token is invalid or malformed.");
        let jwt = Jwt::parse(assertion).ok_or_else(malformed)?;
        let alg = jwt.alg().ok_or_else(malformed)?.to_string();
        if !matches!(alg.as_str(), "RS256" | "ES256") {
            return Err(AadError::invalid_request(
                50027,
                format!("JWT token is invalid or malformed. The signing algorithm '{alg}' is not supported."),
            ));
        }
        let (Some(iss), Some(sub)) = (jwt.claim_str("iss"), jwt.claim_str("sub")) else {
            return Err(malformed());
        };
        let (iss, sub) = (iss.to_owned(), sub.to_owned());
        let audiences = jwt.audiences();
        let exp = jwt.claim_time("exp").ok_or_else(malformed)?;
        if audiences.is_empty() {
            return Err(malformed());
        }
        check_lifetime(&jwt, exp, skew_seconds, now)?;
        Ok(Self {
            jwt,
            alg,
            iss,
            sub,
            audiences,
        })
    }
}

/// The assertion lives at most [`MAX_ASSERTION_LIFETIME`] and is valid at `now`.
pub(super) fn check_lifetime(jwt: &Jwt, exp: i64, skew_seconds: u64, now: i64) -> Result<(), AadError> {
    let iat = jwt.claim_time("iat");
    if iat.is_none_or(|iat| exp.saturating_sub(iat) > MAX_ASSERTION_LIFETIME) {
        return Err(AadError::invalid_client(
            70023,
            format!(
                "External OIDC Provider token must have a lifetime of less than or equal to 1.01:00:00. Token issued at {}. Token expires on {exp}.",
                iat.unwrap_or(0)
            ),
        ));
    }
    let skew = i64::try_from(skew_seconds).unwrap_or(i64::MAX);
    let nbf = jwt.claim_time("nbf");
    if now > exp.saturating_add(skew) || nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf) {
        return Err(AadError::invalid_client(
            700024,
            format!(
                "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                entra_time(now),
                entra_time(nbf.or(iat).unwrap_or(0)),
                entra_time(exp)
            ),
        ));
    }
    Ok(())
}

pub(super) async fn validate_assertion(
    app: &AppState,
    client: Client<'_>,
    client_id: &str,
    assertion: &str,
) -> Result<(), AadError> {
    let settings = app.settings();
    let credentials = client.credentials();
    if credentials.is_empty() {
        return Err(AadError::invalid_client(
            70025,
            format!("The client '{client_id}' has no configured federated identity credentials."),
        ));
    }
    let now_ms = now_ms();
    let assertion = Assertion::check(assertion, settings.clock_skew_seconds, (now_ms / 1000) as i64)?;
    // Credentials honoured now, and those still propagating.
    let matching = Matching {
        assertion: &assertion,
        honoured: credentials.iter().filter_map(|c| c.honoured(now_ms)).collect(),
        pending: credentials.iter().filter_map(|c| c.pending(now_ms)).collect(),
    };
    matching.known_issuer()?;
    verify_signature(app, &assertion, &settings).await?;
    matching.verdict()
}

/// The assertion's signature against its issuer's published keys.
pub(super) async fn verify_signature(
    app: &AppState,
    assertion: &Assertion,
    settings: &Settings,
) -> Result<(), AadError> {
    let Assertion { jwt, alg, iss, .. } = assertion;
    let keys = app
        .issuers
        .candidates(
            iss,
            jwt.kid(),
            alg,
            Duration::from_secs(settings.jwks_cache_ttl_seconds),
            Duration::from_millis(settings.outbound_timeout_ms.max(1)),
        )
        .await;
    match keys {
        Err(KeyError::Unreachable(reason)) => {
            tracing::warn!(
                issuer = %iss,
                reason,
                "failed to fetch the assertion issuer's keys"
            );
            Err(AadError::invalid_request(
                90061,
                "Request to External OIDC endpoint failed.",
            ))
        }
        Err(KeyError::NotFound) => Err(AadError::invalid_client(
            7000272,
            format!(
                "The certificate with identifier {} used to sign the federated credential could not be found in the metadata of identity provider {iss}. Please validate that your Identity Provider's metadata exposes the key used to sign the incoming token.",
                jwt.kid().unwrap_or_default()
            ),
        )),
        Ok(keys) if keys.iter().any(|key| jwt.verify(key)) => Ok(()),
        Ok(_) => Err(AadError::invalid_client(
            700027,
            "Client assertion failed signature validation.",
        )),
    }
}

/// A checked assertion against the client's federated credentials: those honoured now and
/// those still propagating.
pub(super) struct Matching<'a> {
    pub(super) assertion: &'a Assertion,
    pub(super) honoured: Vec<Matcher>,
    pub(super) pending: Vec<Matcher>,
}

impl Matching<'_> {
    /// Some credential (honoured or propagating) names the issuer, byte for byte.
    pub(super) fn known_issuer(&self) -> Result<(), AadError> {
        let iss = &self.assertion.iss;
        if self
            .honoured
            .iter()
            .chain(&self.pending)
            .any(|m| &m.issuer == iss)
        {
            return Ok(());
        }
        Err(no_match(
            format!(
                "No matching federated identity record found for presented assertion issuer '{iss}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {WIF_DOC}"
            ),
            700211,
        ))
    }

    pub(super) fn matches_fully(&self, m: &Matcher) -> bool {
        let Assertion {
            iss, sub, audiences, ..
        } = self.assertion;
        &m.issuer == iss
            && m.subject.as_ref() == Some(sub)
            && m.audiences.iter().any(|a| audiences.contains(a))
    }

    /// 400 invalid_request, as recorded (see the module table), unlike the 7002xx mismatches.
    pub(super) fn not_yet_propagated(&self) -> AadError {
        let Assertion {
            iss, sub, audiences, ..
        } = self.assertion;
        AadError::invalid_request(
            70021,
            format!(
                "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. Assertion Subject: '{sub}'. Assertion Audience: '{}'. {WIF_DOC}",
                audiences.join(", ")
            ),
        )
    }

    /// The honoured credential that matches issuer, audience and subject, or the error Entra
    /// gives for the first that differs.
    pub(super) fn verdict(&self) -> Result<(), AadError> {
        let Assertion {
            iss, sub, audiences, ..
        } = self.assertion;
        let propagating = self.pending.iter().any(|m| self.matches_fully(m));
        let by_issuer: Vec<&Matcher> = self.honoured.iter().filter(|m| &m.issuer == iss).collect();
        if by_issuer.is_empty() {
            return Err(self.not_yet_propagated());
        }
        let by_audience: Vec<&Matcher> = by_issuer
            .into_iter()
            .filter(|m| m.audiences.iter().any(|a| audiences.contains(a)))
            .collect();
        if by_audience.is_empty() {
            if propagating {
                return Err(self.not_yet_propagated());
            }
            return Err(no_match(
                format!(
                    "No matching federated identity record found for presented assertion audience '{}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. {WIF_DOC}",
                    audiences.join(", ")
                ),
                700212,
            ));
        }
        if by_audience.iter().any(|m| m.subject.as_ref() == Some(sub)) {
            return Ok(());
        }
        if propagating {
            return Err(self.not_yet_propagated());
        }
        let case_only = by_audience
            .iter()
            .any(|m| m.subject.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(sub)));
        let message = if case_only {
            format!(
                "No matching federated identity record found for presented assertion subject '{sub}'. The subject matches with case-insensitive comparison, but not with case-sensitive comparison. Check your federated identity credential Subject, Audience and Issuer against the presented assertion. See documentation at: {WIF_DOC}."
            )
        } else {
            format!(
                "No matching federated identity record found for presented assertion subject '{sub}'. Check your federated identity credential Subject, Audience and Issuer against the presented assertion. {WIF_DOC}"
            )
        };
        Err(no_match(message, if case_only { 7002138 } else { 700213 }))
    }
}
