//! The Entra side of `wif doctor`'s judgement, without I/O: the FederatedIdentityBinding, its
//! federated credential and the API server's token against what Entra compares byte for byte.

use serde_json::Value;
use wif_api::CLIENT_ID_ANNOTATION;

use super::{checks::Identity, report::Check};

// === issuer, subject, audience ===

/// How `actual` differs from `expected`, when it does, in the terms that explain an AADSTS
/// error: Entra compares issuer, subject and audience byte for byte.
pub fn difference(expected: &str, actual: &str) -> Option<String> {
    if expected == actual {
        return None;
    }
    let why = if expected.trim_end_matches('/') == actual.trim_end_matches('/') {
        if actual.ends_with('/') {
            "it has a trailing slash the API server's does not"
        } else {
            "it lacks the trailing slash the API server's has"
        }
    } else if expected.eq_ignore_ascii_case(actual) {
        "it differs in upper/lower case"
    } else if expected.trim() == actual.trim() {
        "it differs in surrounding whitespace"
    } else {
        "it is a different value"
    };
    Some(format!("{actual:?} ≠ {expected:?}: {why}"))
}

/// What the API server issues for the ServiceAccount: the credential must carry exactly this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Issuer, from `/.well-known/openid-configuration`.
    pub issuer: String,
    /// `system:serviceaccount:<ns>:<sa>`.
    pub subject: String,
    /// Audience of the projected token.
    pub audience: String,
}

/// The claims of a token the API server issued agree with its discovery document.
pub fn token_claims(expected: &Expected, claims: &Value) -> Check {
    const NAME: &str = "API server token";
    let iss = claims["iss"].as_str().unwrap_or_default();
    let sub = claims["sub"].as_str().unwrap_or_default();
    let aud: Vec<&str> = match &claims["aud"] {
        Value::String(s) => vec![s.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let mut problems = Vec::new();
    if let Some(d) = difference(&expected.issuer, iss) {
        problems.push(format!("iss {d} (the discovery document's issuer)"));
    }
    if let Some(d) = difference(&expected.subject, sub) {
        problems.push(format!("sub {d}"));
    }
    if !aud.contains(&expected.audience.as_str()) {
        problems.push(format!("aud {aud:?} lacks {:?}", expected.audience));
    }
    if problems.is_empty() {
        Check::pass(NAME, format!("iss={iss} sub={sub} aud={}", expected.audience))
    } else {
        Check::fail(
            NAME,
            problems.join("; "),
            "the API server's --service-account-issuer and its discovery document disagree: \
             set --service-account-issuer to the URL Entra should read, and --service-account-jwks-uri to match",
        )
    }
}

/// A binding's status, as much as doctor needs (read through the dynamic API).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingView {
    /// Name.
    pub name: String,
    /// `status.conditions[Ready]`: status, reason, message.
    pub ready: Option<(String, String, String)>,
    /// `status.credential`: issuer, subject, audiences.
    pub credential: Option<(String, String, Vec<String>)>,
    /// `status.tenantId`.
    pub tenant_id: Option<String>,
    /// `status.clientId`.
    pub client_id: Option<String>,
    /// `spec.identityName`: the named identity it binds (None: the default one).
    pub identity_name: Option<String>,
    /// `spec.identity.pool.name`: the pool it names.
    pub pool: Option<String>,
    /// `status.placement.identity`: where its pool placed it.
    pub placement: Option<String>,
}

impl BindingView {
    /// Reads a FederatedIdentityBinding as JSON; None if it is not for `service_account`.
    pub fn from_json(binding: &Value, service_account: &str) -> Option<Self> {
        if binding["spec"]["serviceAccountName"].as_str() != Some(service_account) {
            return None;
        }
        let status = &binding["status"];
        let ready = status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .map(|c| {
                let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
                (s("status"), s("reason"), s("message"))
            });
        let credential = status.get("credential").filter(|c| c.is_object()).map(|c| {
            (
                c["issuer"].as_str().unwrap_or_default().to_owned(),
                c["subject"].as_str().unwrap_or_default().to_owned(),
                c["audiences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect(),
            )
        });
        Some(Self {
            name: binding["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            ready,
            credential,
            tenant_id: status["tenantId"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
            client_id: status["clientId"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
            identity_name: binding["spec"]["identityName"]
                .as_str()
                .filter(|t| !t.is_empty())
                .map(str::to_owned),
            pool: binding["spec"]["identity"]["pool"]["name"]
                .as_str()
                .map(str::to_owned),
            placement: status["placement"]["identity"].as_str().map(str::to_owned),
        })
    }

    /// The binding of `bindings` that serves `identity`: the one naming it, else the one whose
    /// reported client id is the identity's; for the default identity, else the first binding
    /// that names no identity.
    pub fn find<'a>(bindings: &'a [BindingView], identity: &Identity) -> Option<&'a BindingView> {
        bindings
            .iter()
            .find(|b| identity.name.is_some() && b.identity_name == identity.name)
            .or_else(|| {
                bindings
                    .iter()
                    .find(|b| b.client_id.as_deref() == Some(identity.client_id.as_str()))
            })
            .or_else(|| {
                bindings
                    .iter()
                    .find(|b| identity.name.is_none() && b.identity_name.is_none())
            })
    }
}

/// A FederatedIdentityBinding exists for the ServiceAccount and is Ready.
pub fn binding_ready(namespace: &str, service_account: &str, bindings: &[BindingView]) -> Check {
    const NAME: &str = "FederatedIdentityBinding";
    // The first one that is not Ready, else the first (one per identity of the ServiceAccount).
    let not_ready = bindings
        .iter()
        .find(|b| b.ready.as_ref().is_none_or(|(s, _, _)| s != "True"));
    let Some(b) = not_ready.or(bindings.first()) else {
        return Check::fail(
            NAME,
            format!("none in {namespace} for ServiceAccount {service_account}"),
            format!(
                "kubectl apply a FederatedIdentityBinding with spec.serviceAccountName: {service_account} \
                 (README: \"Bind\"), or, without the controller, create the federated credential yourself \
                 with the issuer, subject and audience printed below"
            ),
        );
    };
    let others = if bindings.len() > 1 {
        format!(" (and {} more)", bindings.len() - 1)
    } else {
        String::new()
    };
    match &b.ready {
        Some((s, reason, _)) if s == "True" => {
            Check::pass(NAME, format!("{}{others} is Ready ({reason})", b.name))
        }
        Some((s, reason, message)) => Check::fail(
            NAME,
            format!("{}{others} is not Ready: Ready={s} {reason}: {message}", b.name),
            format!(
                "kubectl -n {namespace} describe federatedidentitybinding {} (its conditions and Events say what the controller needs)",
                b.name
            ),
        ),
        None => Check::fail(
            NAME,
            format!(
                "{}{others} has no Ready condition: the controller has not reconciled it",
                b.name
            ),
            "check that the wif controller is running: kubectl -n <wif namespace> logs deploy/<release>-controller",
        ),
    }
}

/// The binding's credential carries exactly the issuer, subject and audience the API server
/// issues.
pub fn credential_matches(expected: &Expected, binding: &BindingView) -> Check {
    const NAME: &str = "credential issuer/subject/audience";
    let Some((issuer, subject, audiences)) = &binding.credential else {
        return Check::skip(
            NAME,
            format!(
                "binding {} reports no credential yet; Entra needs issuer={} subject={} audience={}",
                binding.name, expected.issuer, expected.subject, expected.audience
            ),
        );
    };
    let mut problems = Vec::new();
    if let Some(d) = difference(&expected.issuer, issuer) {
        problems.push(format!("issuer {d}"));
    }
    if let Some(d) = difference(&expected.subject, subject) {
        problems.push(format!("subject {d}"));
    }
    match audiences.as_slice() {
        [one] => {
            if let Some(d) = difference(&expected.audience, one) {
                problems.push(format!("audience {d}"));
            }
        }
        other => problems.push(format!(
            "audiences {other:?}: Entra expects exactly one, {:?}",
            expected.audience
        )),
    }
    if problems.is_empty() {
        Check::pass(
            NAME,
            format!("issuer={issuer} subject={subject} audience={}", expected.audience),
        )
    } else {
        Check::fail(
            NAME,
            problems.join("; "),
            format!(
                "the credential must say issuer={} subject={} audience={} byte for byte: remove spec.audience \
                 or fix it, and unset the controller's --issuer override (it is discovered exactly by default)",
                expected.issuer, expected.subject, expected.audience
            ),
        )
    }
}

/// The federated credential of `binding` against what the API server issues; skipped, with what
/// Entra's credential must say, when there is no binding.
pub(crate) fn credential(expected: &Expected, binding: Option<&BindingView>) -> Check {
    match binding {
        Some(b) => credential_matches(expected, b),
        None => Check::skip(
            "credential issuer/subject/audience",
            format!(
                "no binding to compare; Entra's federated credential must say issuer={} subject={} audience={}",
                expected.issuer, expected.subject, expected.audience
            ),
        ),
    }
}

/// What a token exchange needs (the ServiceAccount token, the client id, the tenant), or the
/// check that says which is missing. `has_named`: the ServiceAccount names identities, so a
/// missing default client id is not a failure.
pub(crate) fn exchange_inputs<'a>(
    token: Option<&'a str>,
    client_id: Option<&'a str>,
    tenant: Option<&'a str>,
    has_named: bool,
) -> Result<(&'a str, &'a str, &'a str), Check> {
    const NAME: &str = "token exchange";
    match (token, client_id, tenant) {
        (None, _, _) => Err(Check::skip(
            NAME,
            "no ServiceAccount token to exchange (see above)",
        )),
        (_, None, _) if has_named => Err(Check::skip(
            NAME,
            "no default identity; the named ones are exchanged below",
        )),
        (_, None, _) => Err(Check::fail(
            NAME,
            "no client id to exchange for",
            format!("annotate the ServiceAccount with {CLIENT_ID_ANNOTATION}"),
        )),
        (_, _, None) => Err(Check::fail(
            NAME,
            "no tenant known",
            "pass --tenant-id, or annotate the ServiceAccount with azure.workload.identity/tenant-id",
        )),
        (Some(token), Some(client_id), Some(tenant)) => Ok((token, client_id, tenant)),
    }
}

// === small readers ===

/// The claims of a JWT, unverified (the API server just issued it).
pub(crate) fn jwt_claims(jwt: &str) -> Value {
    use base64::Engine;
    jwt.split('.')
        .nth(1)
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}
