//! `wif doctor`'s judgement, without I/O: each function takes what was read from the cluster
//! and returns one [`Check`] (✓, ✗ with a fix, or skipped with the reason). The command in
//! `cmd/doctor.rs` does the reading and prints the [`Report`].

use std::{borrow::Cow, collections::BTreeMap, fmt};

use k8s_openapi::{
    api::{admissionregistration::v1::MutatingWebhook, core::v1::Pod},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use serde_json::Value;
use wif_api::{
    CLIENT_ID_ANNOTATION, CONTAINER_IDENTITIES_ANNOTATION, ENV_AUTHORITY_HOST, ENV_CLIENT_ID,
    ENV_FEDERATED_TOKEN_FILE, ENV_TENANT_ID, NAMED_CLIENT_ID_PREFIX, NAMED_TENANT_ID_PREFIX,
    SKIP_CONTAINERS_ANNOTATION, TOKEN_VOLUME_NAME, USE_LABEL, USE_LABEL_VALUE, is_guid,
};

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// It is as it should be.
    Pass,
    /// It is not; the check carries a fix.
    Fail,
    /// It could not be checked; the detail says why.
    Skip,
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// Outcome.
    pub status: Status,
    /// What was checked, a few words (and, for a named identity, its name in parentheses).
    pub name: Cow<'static, str>,
    /// What was found.
    pub detail: String,
    /// What to do, for a failure.
    pub fix: Option<String>,
}

impl Check {
    /// A passed check.
    pub fn pass(name: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self {
            status: Status::Pass,
            name: name.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    /// A failed check and how to fix it.
    pub fn fail(
        name: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Fail,
            name: name.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A check that could not be made, and why.
    pub fn skip(name: impl Into<Cow<'static, str>>, reason: impl Into<String>) -> Self {
        Self {
            status: Status::Skip,
            name: name.into(),
            detail: reason.into(),
            fix: None,
        }
    }
}

impl Check {
    /// The same check, named for the identity `name` (`<check> (<name>)`); the default
    /// identity's checks keep their plain names.
    #[must_use]
    pub fn for_identity(mut self, name: Option<&str>) -> Self {
        if let Some(name) = name {
            self.name = format!("{} ({name})", self.name).into();
        }
        self
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = match self.status {
            Status::Pass => "✓",
            Status::Fail => "✗",
            Status::Skip => "-",
        };
        write!(f, "{mark} {}: {}", self.name, self.detail)?;
        if self.status == Status::Skip {
            write!(f, " (skipped)")?;
        }
        if let Some(fix) = &self.fix {
            write!(f, " → fix: {fix}")?;
        }
        Ok(())
    }
}

/// Every check made, in order.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// Adds a check.
    pub fn push(&mut self, check: Check) {
        self.checks.push(check);
    }

    /// True when no check failed (skipped checks say why and do not fail the run).
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    /// `N passed, N failed, N skipped`.
    pub fn summary(&self) -> String {
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        format!(
            "{} passed, {} failed, {} skipped",
            count(Status::Pass),
            count(Status::Fail),
            count(Status::Skip)
        )
    }
}

// === the pod and its ServiceAccount ===

/// The pod carries `azure.workload.identity/use: "true"`, exactly.
pub fn label(pod: &ObjectMeta) -> Check {
    const NAME: &str = "pod label";
    let name = pod.name.as_deref().unwrap_or_default();
    let ns = pod.namespace.as_deref().unwrap_or_default();
    let fix = format!(
        "set `{USE_LABEL}: \"{USE_LABEL_VALUE}\"` in the pod template's labels (for a bare pod: \
         kubectl -n {ns} label pod {name} {USE_LABEL}={USE_LABEL_VALUE} --overwrite, then recreate it)"
    );
    match pod.labels.as_ref().and_then(|l| l.get(USE_LABEL)) {
        Some(v) if v == USE_LABEL_VALUE => Check::pass(NAME, format!("{USE_LABEL}={USE_LABEL_VALUE}")),
        Some(v) if v.trim().eq_ignore_ascii_case(USE_LABEL_VALUE) => Check::fail(
            NAME,
            format!("{USE_LABEL}={v:?}: only the exact lower-case value \"true\" selects the pod"),
            fix,
        ),
        Some(v) => Check::fail(NAME, format!("{USE_LABEL}={v:?}, not \"true\""), fix),
        None => {
            let near = pod
                .labels
                .iter()
                .flatten()
                .find(|(k, _)| k.contains("workload.identity") || k.contains("workload-identity"));
            let detail = match near {
                Some((k, _)) => {
                    format!("no {USE_LABEL} label (found {k:?}; an annotation does not count either)")
                }
                None => format!("no {USE_LABEL} label"),
            };
            Check::fail(NAME, detail, fix)
        }
    }
}

/// The ServiceAccount names a client id. Returns the check and the client id, if any.
pub fn client_id(sa: &ObjectMeta) -> (Check, Option<String>) {
    const NAME: &str = "ServiceAccount client id";
    let ns = sa.namespace.as_deref().unwrap_or_default();
    let name = sa.name.as_deref().unwrap_or_default();
    let fix = format!(
        "create a FederatedIdentityBinding for it (the controller annotates it), or \
         kubectl -n {ns} annotate serviceaccount {name} {CLIENT_ID_ANNOTATION}=<client id>"
    );
    let annotations = sa.annotations.clone().unwrap_or_default();
    match annotations.get(CLIENT_ID_ANNOTATION).map(|v| v.trim()) {
        Some(id) if is_guid(id) => (
            Check::pass(NAME, format!("{CLIENT_ID_ANNOTATION}={id}")),
            Some(id.to_owned()),
        ),
        Some("") => (
            Check::fail(NAME, format!("{CLIENT_ID_ANNOTATION} is empty"), fix),
            None,
        ),
        Some(id) => (
            Check::fail(
                NAME,
                format!("{CLIENT_ID_ANNOTATION}={id:?} is not a client id (a GUID)"),
                fix,
            ),
            Some(id.to_owned()),
        ),
        None => {
            let misspelt = annotations
                .keys()
                .find(|k| k.starts_with(wif_api::PREFIX) && k.to_lowercase().contains("client"));
            let detail = match misspelt {
                Some(k) => format!("no {CLIENT_ID_ANNOTATION} annotation (found {k:?})"),
                None => format!("no {CLIENT_ID_ANNOTATION} annotation"),
            };
            (Check::fail(NAME, detail, fix), None)
        }
    }
}

/// One identity of a ServiceAccount: the default one (`client-id`) or a named one
/// (`client-id.<name>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `None` for the default identity.
    pub name: Option<String>,
    /// Its client id.
    pub client_id: String,
    /// Its own tenant (`tenant-id.<name>`), if any.
    pub tenant_id: Option<String>,
}

/// The ServiceAccount's named identities: a check (None when it has none, so a ServiceAccount
/// using only upstream's keys gets upstream's report) and the usable ones, by name.
pub fn named_identities(sa: &ObjectMeta) -> (Option<Check>, Vec<Identity>) {
    const NAME: &str = "named identities";
    let annotations = sa.annotations.clone().unwrap_or_default();
    let ns = sa.namespace.as_deref().unwrap_or_default();
    let sa_name = sa.name.as_deref().unwrap_or_default();
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for (key, value) in &annotations {
        let Some(name) = key.strip_prefix(NAMED_CLIENT_ID_PREFIX) else {
            if let Some(name) = key.strip_prefix(NAMED_TENANT_ID_PREFIX)
                && !annotations.contains_key(&format!("{NAMED_CLIENT_ID_PREFIX}{name}"))
            {
                problems.push(format!("{key} has no {NAMED_CLIENT_ID_PREFIX}{name} beside it"));
            }
            continue;
        };
        let value = value.trim();
        if !wif_api::is_identity_name(name) {
            problems.push(format!(
                "{key}: {name:?} is not a lower-case DNS label, so it is ignored"
            ));
        } else if !is_guid(value) {
            problems.push(format!("{key}={value:?} is not a client id (a GUID)"));
        } else {
            found.push(Identity {
                name: Some(name.to_owned()),
                client_id: value.to_owned(),
                tenant_id: annotations
                    .get(&format!("{NAMED_TENANT_ID_PREFIX}{name}"))
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty()),
            });
        }
    }
    if found.is_empty() && problems.is_empty() {
        return (None, found);
    }
    let listed = found
        .iter()
        .map(|i| format!("{}={}", i.name.as_deref().unwrap_or_default(), i.client_id))
        .collect::<Vec<_>>()
        .join(", ");
    let check = if problems.is_empty() {
        Check::pass(NAME, listed)
    } else {
        Check::fail(
            NAME,
            problems.join("; "),
            format!(
                "kubectl -n {ns} annotate serviceaccount {sa_name} --overwrite {NAMED_CLIENT_ID_PREFIX}<name>=<client id> \
                 (name: lower-case letters, digits and '-')"
            ),
        )
    };
    (Some(check), found)
}

/// The pod carries the token volume, and every container not skipped the variables and mount.
/// `named` are the ServiceAccount's named identities: each container must carry
/// `AZURE_CLIENT_ID_<NAME>`, and a container the pod's `container-identities` assigns one must
/// carry its client id as `AZURE_CLIENT_ID`.
pub fn injection(pod: &Pod, client_id: Option<&str>, named: &[Identity]) -> Check {
    const NAME: &str = "pod injected";
    let meta = &pod.metadata;
    let name = meta.name.as_deref().unwrap_or_default();
    let ns = meta.namespace.as_deref().unwrap_or_default();
    let recreate = format!(
        "the webhook changes pods only when they are created: recreate it (kubectl -n {ns} delete pod {name}, \
         or kubectl rollout restart its Deployment) once the checks above pass"
    );
    let Some(spec) = &pod.spec else {
        return Check::fail(NAME, "the pod has no spec", recreate);
    };
    let has_volume = spec.volumes.iter().flatten().any(|v| {
        v.name == TOKEN_VOLUME_NAME
            && v.projected
                .as_ref()
                .and_then(|p| p.sources.as_ref())
                .is_some_and(|s| s.iter().any(|s| s.service_account_token.is_some()))
    });
    if !has_volume {
        return Check::fail(
            NAME,
            format!("no projected token volume {TOKEN_VOLUME_NAME}: the webhook did not mutate this pod"),
            recreate,
        );
    }
    let skipped: Vec<&str> = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(SKIP_CONTAINERS_ANNOTATION))
        .map(|s| s.split(';').map(str::trim).filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    let assigned: Vec<(&str, &str)> = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONTAINER_IDENTITIES_ANNOTATION))
        .map(|s| {
            s.split(';')
                .filter_map(|e| e.split_once('='))
                .map(|(c, i)| (c.trim(), i.trim()))
                .collect()
        })
        .unwrap_or_default();
    let mut problems = Vec::new();
    let mut seen = 0;
    for c in spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter(|c| !skipped.contains(&c.name.as_str()))
    {
        seen += 1;
        let env = |n: &str| c.env.iter().flatten().find(|e| e.name == n);
        for var in [
            ENV_CLIENT_ID,
            ENV_TENANT_ID,
            ENV_FEDERATED_TOKEN_FILE,
            ENV_AUTHORITY_HOST,
        ] {
            match env(var) {
                None => problems.push(format!("{}: no {var}", c.name)),
                Some(e) if e.value.as_deref().unwrap_or_default().is_empty() && e.value_from.is_none() => {
                    problems.push(format!("{}: {var} is empty", c.name))
                }
                _ => {}
            }
        }
        let own = assigned.iter().find(|(name, _)| *name == c.name).map(|(_, i)| *i);
        let want = match own {
            Some(identity) => named
                .iter()
                .find(|n| n.name.as_deref() == Some(identity))
                .map(|n| n.client_id.as_str()),
            None => client_id,
        };
        if let (Some(want), Some(have)) = (want, env(ENV_CLIENT_ID).and_then(|e| e.value.as_deref()))
            && have != want
        {
            let whose = match own {
                Some(identity) => format!("its identity {identity:?} ({CONTAINER_IDENTITIES_ANNOTATION})"),
                None => "the ServiceAccount".to_owned(),
            };
            problems.push(format!(
                "{}: {ENV_CLIENT_ID}={have} but {whose} says {want}",
                c.name
            ));
        }
        for n in named {
            let var = wif_api::named_client_id_env(n.name.as_deref().unwrap_or_default());
            match env(&var).and_then(|e| e.value.as_deref()) {
                None => problems.push(format!("{}: no {var}", c.name)),
                Some(have) if have != n.client_id => problems.push(format!(
                    "{}: {var}={have} but the ServiceAccount says {}",
                    c.name, n.client_id
                )),
                Some(_) => {}
            }
        }
        if !c
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == TOKEN_VOLUME_NAME)
        {
            problems.push(format!("{}: no mount of {TOKEN_VOLUME_NAME}", c.name));
        }
    }
    if problems.is_empty() {
        Check::pass(
            NAME,
            format!("token volume, AZURE_* variables and mount in {seen} container(s)"),
        )
    } else {
        Check::fail(NAME, problems.join("; "), recreate)
    }
}

// === the webhook configuration ===

/// Whether `labels` satisfy `selector` (Kubernetes semantics: every matchLabels entry and every
/// expression must hold; an empty selector matches everything).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// The webhook would be called for a labelled pod in a namespace with `ns_labels`.
pub fn webhook_selects(
    config: &str,
    hook: &MutatingWebhook,
    namespace: &str,
    ns_labels: &BTreeMap<String, String>,
) -> Check {
    const NAME: &str = "webhook selects the namespace";
    let labelled = BTreeMap::from([(USE_LABEL.to_owned(), USE_LABEL_VALUE.to_owned())]);
    if let Some(sel) = &hook.object_selector
        && !selector_matches(sel, &labelled)
    {
        return Check::fail(
            NAME,
            format!("the objectSelector of {config} does not select pods labelled {USE_LABEL}=true"),
            format!(
                "restore the objectSelector (helm upgrade the wif release, or kubectl edit mutatingwebhookconfiguration {config})"
            ),
        );
    }
    match &hook.namespace_selector {
        Some(sel) if !selector_matches(sel, ns_labels) => Check::fail(
            NAME,
            format!(
                "the namespaceSelector of {config} excludes namespace {namespace} (kube-system and wif's own namespace are always excluded)"
            ),
            "run the workload in another namespace, or change webhook.excludeNamespaces / webhook.namespaceSelector in the Helm values",
        ),
        _ => Check::pass(
            NAME,
            format!("{config} ({}) selects labelled pods in {namespace}", hook.name),
        ),
    }
}

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

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use rstest::rstest;
    use serde_json::json;

    use super::*;

    fn meta(labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |kv: &[(&str, &str)]| Some(kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect());
        ObjectMeta {
            name: Some("api".into()),
            namespace: Some("team".into()),
            labels: map(labels),
            annotations: map(annotations),
            ..ObjectMeta::default()
        }
    }

    const ID: &str = "11111111-2222-3333-4444-555555555555";

    #[rstest]
    #[case(&[("azure.workload.identity/use", "true")], Status::Pass, "")]
    #[case(&[("azure.workload.identity/use", "True")], Status::Fail, "exact lower-case")]
    #[case(&[("azure.workload.identity/use", "false")], Status::Fail, "not \"true\"")]
    #[case(&[("azure.workload.identity/used", "true")], Status::Fail, "found")]
    #[case(&[], Status::Fail, "no azure.workload.identity/use")]
    fn label_is_exactly_true(#[case] labels: &[(&str, &str)], #[case] status: Status, #[case] says: &str) {
        let check = label(&meta(labels, &[]));
        assert_eq!(check.status, status, "{check}");
        assert!(check.detail.contains(says), "{check}");
        assert_eq!(check.fix.is_some(), status == Status::Fail);
    }

    #[rstest]
    #[case(&[("azure.workload.identity/client-id", ID)], Status::Pass)]
    #[case(&[("azure.workload.identity/client-id", "")], Status::Fail)]
    #[case(&[("azure.workload.identity/client-id", "my-app")], Status::Fail)]
    #[case(&[("azure.workload.identity/client_id", ID)], Status::Fail)]
    fn client_id_must_be_a_guid(#[case] annotations: &[(&str, &str)], #[case] status: Status) {
        let (check, _) = client_id(&meta(&[], annotations));
        assert_eq!(check.status, status, "{check}");
    }

    #[test]
    fn misspelt_client_id_annotation_is_named() {
        let (check, id) = client_id(&meta(&[], &[("azure.workload.identity/client_id", ID)]));
        assert!(check.detail.contains("client_id"), "{check}");
        assert_eq!(id, None);
    }

    fn injected_pod(client: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "team"},
            "spec": {
                "volumes": [{"name": "azure-identity-token", "projected": {"sources": [
                    {"serviceAccountToken": {"path": "azure-identity-token", "audience": "api://AzureADTokenExchange"}}]}}],
                "containers": [{"name": "app", "image": "x",
                    "env": [{"name": "AZURE_CLIENT_ID", "value": client}, {"name": "AZURE_TENANT_ID", "value": "t"},
                            {"name": "AZURE_FEDERATED_TOKEN_FILE", "value": "/f"}, {"name": "AZURE_AUTHORITY_HOST", "value": "https://h/"}],
                    "volumeMounts": [{"name": "azure-identity-token", "mountPath": "/var/run/secrets/azure/tokens"}]}]
            }
        }))
        .unwrap()
    }

    #[test]
    fn injected_pod_passes_and_a_stale_client_id_fails() {
        assert_eq!(injection(&injected_pod(ID), Some(ID), &[]).status, Status::Pass);
        let stale = injection(
            &injected_pod("00000000-0000-0000-0000-000000000000"),
            Some(ID),
            &[],
        );
        assert_eq!(stale.status, Status::Fail);
        assert!(stale.detail.contains("ServiceAccount says"), "{stale}");
        assert!(stale.fix.unwrap().contains("recreate"));
    }

    #[test]
    fn unmutated_pod_fails_with_recreate_fix() {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "x"}]}}))
        .unwrap();
        let check = injection(&pod, Some(ID), &[]);
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("did not mutate"), "{check}");
    }

    #[test]
    fn skipped_containers_are_not_required_to_be_injected() {
        let mut pod = injected_pod(ID);
        let spec = pod.spec.as_mut().unwrap();
        spec.containers
            .push(serde_json::from_value(json!({"name": "proxy", "image": "x"})).unwrap());
        assert_eq!(injection(&pod, Some(ID), &[]).status, Status::Fail);
        pod.metadata.annotations = Some([(SKIP_CONTAINERS_ANNOTATION.to_owned(), "proxy".to_owned())].into());
        assert_eq!(injection(&pod, Some(ID), &[]).status, Status::Pass);
    }

    const READER: &str = "22222222-2222-2222-2222-222222222222";

    #[test]
    fn named_identities_are_listed_and_bad_ones_named() {
        let (check, found) = named_identities(&meta(&[], &[("azure.workload.identity/client-id", ID)]));
        assert_eq!(check, None, "no named keys: no line, as upstream");
        assert!(found.is_empty());

        let (check, found) = named_identities(&meta(
            &[],
            &[
                ("azure.workload.identity/client-id.reader", READER),
                ("azure.workload.identity/tenant-id.reader", "t2"),
            ],
        ));
        let check = check.unwrap();
        assert_eq!(check.status, Status::Pass, "{check}");
        assert!(check.detail.contains(&format!("reader={READER}")), "{check}");
        assert_eq!(
            found,
            vec![Identity {
                name: Some("reader".into()),
                client_id: READER.into(),
                tenant_id: Some("t2".into())
            }]
        );

        for (key, value, says) in [
            (
                "azure.workload.identity/client-id.Reader",
                READER,
                "lower-case DNS label",
            ),
            (
                "azure.workload.identity/client-id.reader",
                "my-app",
                "not a client id",
            ),
            (
                "azure.workload.identity/tenant-id.writer",
                "t",
                "client-id.writer",
            ),
        ] {
            let (check, _) = named_identities(&meta(&[], &[(key, value)]));
            let check = check.unwrap();
            assert_eq!(check.status, Status::Fail, "{check}");
            assert!(check.detail.contains(says), "{check}");
        }
    }

    #[test]
    fn injection_checks_named_variables_and_container_identities() {
        let reader = Identity {
            name: Some("reader".into()),
            client_id: READER.into(),
            tenant_id: None,
        };
        let mut pod = injected_pod(ID);
        let check = injection(&pod, Some(ID), std::slice::from_ref(&reader));
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("no AZURE_CLIENT_ID_READER"), "{check}");
        let env = pod.spec.as_mut().unwrap().containers[0].env.as_mut().unwrap();
        env.push(serde_json::from_value(json!({"name": "AZURE_CLIENT_ID_READER", "value": READER})).unwrap());
        assert_eq!(
            injection(&pod, Some(ID), std::slice::from_ref(&reader)).status,
            Status::Pass
        );
        // The pod assigns the container the reader identity: AZURE_CLIENT_ID must be reader's.
        pod.metadata.annotations = Some(
            [(
                CONTAINER_IDENTITIES_ANNOTATION.to_owned(),
                "app=reader".to_owned(),
            )]
            .into(),
        );
        let check = injection(&pod, Some(ID), std::slice::from_ref(&reader));
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("its identity \"reader\""), "{check}");
        pod.spec.as_mut().unwrap().containers[0].env.as_mut().unwrap()[0].value = Some(READER.into());
        assert_eq!(injection(&pod, Some(ID), &[reader]).status, Status::Pass);
    }

    #[test]
    fn bindings_are_found_per_identity() {
        let view = |name: &str, client: &str, identity: Option<&str>| BindingView {
            name: name.into(),
            ready: None,
            credential: None,
            tenant_id: None,
            client_id: Some(client.into()),
            identity_name: identity.map(Into::into),
        };
        let all = [
            view("named", "x", Some("reader")),
            view("by-client", READER, None),
            view("default", ID, None),
        ];
        let default = Identity {
            name: None,
            client_id: ID.into(),
            tenant_id: None,
        };
        let reader = Identity {
            name: Some("reader".into()),
            client_id: READER.into(),
            tenant_id: None,
        };
        assert_eq!(BindingView::find(&all, &default).unwrap().name, "default");
        assert_eq!(BindingView::find(&all, &reader).unwrap().name, "named");
        assert_eq!(BindingView::find(&all[1..], &reader).unwrap().name, "by-client");
        assert_eq!(
            Check::pass("token exchange", "ok")
                .for_identity(Some("reader"))
                .to_string(),
            "✓ token exchange (reader): ok"
        );
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| (*v).into()).collect()),
        }
    }

    #[rstest]
    #[case(LabelSelector::default(), &[], true)]
    #[case(LabelSelector { match_expressions: Some(vec![expr("kubernetes.io/metadata.name", "NotIn", &["kube-system", "wif"])]), ..Default::default() }, &[("kubernetes.io/metadata.name", "team")], true)]
    #[case(LabelSelector { match_expressions: Some(vec![expr("kubernetes.io/metadata.name", "NotIn", &["kube-system", "wif"])]), ..Default::default() }, &[("kubernetes.io/metadata.name", "wif")], false)]
    #[case(LabelSelector { match_expressions: Some(vec![expr("env", "In", &["prod"])]), ..Default::default() }, &[], false)]
    #[case(LabelSelector { match_expressions: Some(vec![expr("env", "Exists", &[])]), ..Default::default() }, &[("env", "x")], true)]
    #[case(LabelSelector { match_expressions: Some(vec![expr("env", "DoesNotExist", &[])]), ..Default::default() }, &[("env", "x")], false)]
    #[case(LabelSelector { match_labels: Some([("a".to_owned(), "b".to_owned())].into()), ..Default::default() }, &[("a", "c")], false)]
    fn selectors_follow_kubernetes_semantics(
        #[case] selector: LabelSelector,
        #[case] labels: &[(&str, &str)],
        #[case] matches: bool,
    ) {
        let labels = labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        assert_eq!(selector_matches(&selector, &labels), matches);
    }

    #[rstest]
    #[case("https://issuer.example/x", "https://issuer.example/x", None)]
    #[case(
        "https://issuer.example/x",
        "https://issuer.example/x/",
        Some("has a trailing slash")
    )]
    #[case(
        "https://issuer.example/x/",
        "https://issuer.example/x",
        Some("lacks the trailing slash")
    )]
    #[case(
        "https://issuer.example/X",
        "https://issuer.example/x",
        Some("upper/lower case")
    )]
    #[case(
        "system:serviceaccount:a:b",
        "system:serviceaccount:a:c",
        Some("different value")
    )]
    fn differences_are_explained(#[case] expected: &str, #[case] actual: &str, #[case] says: Option<&str>) {
        let got = difference(expected, actual);
        match says {
            None => assert_eq!(got, None),
            Some(s) => assert!(got.as_deref().unwrap_or_default().contains(s), "{got:?}"),
        }
    }

    fn expected() -> Expected {
        Expected {
            issuer: "https://127.0.0.1:6443".into(),
            subject: "system:serviceaccount:team:api".into(),
            audience: "api://AzureADTokenExchange".into(),
        }
    }

    fn binding(ready: &str, issuer: &str) -> Value {
        json!({
            "metadata": {"name": "api"},
            "spec": {"serviceAccountName": "api"},
            "status": {
                "conditions": [{"type": "Ready", "status": ready, "reason": "Propagated", "message": "m"}],
                "credential": {"issuer": issuer, "subject": "system:serviceaccount:team:api",
                               "audiences": ["api://AzureADTokenExchange"]}
            }
        })
    }

    #[test]
    fn ready_binding_with_exact_credential_passes() {
        let view = BindingView::from_json(&binding("True", "https://127.0.0.1:6443"), "api").unwrap();
        assert_eq!(
            binding_ready("team", "api", std::slice::from_ref(&view)).status,
            Status::Pass
        );
        assert_eq!(credential_matches(&expected(), &view).status, Status::Pass);
    }

    #[test]
    fn trailing_slash_in_the_credential_issuer_is_flagged() {
        let view = BindingView::from_json(&binding("True", "https://127.0.0.1:6443/"), "api").unwrap();
        let check = credential_matches(&expected(), &view);
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("trailing slash"), "{check}");
    }

    #[test]
    fn binding_for_another_service_account_is_ignored_and_missing_binding_fails() {
        assert_eq!(BindingView::from_json(&binding("True", "x"), "other"), None);
        let check = binding_ready("team", "other", &[]);
        assert_eq!(check.status, Status::Fail);
        assert!(check.fix.unwrap().contains("FederatedIdentityBinding"));
    }

    #[test]
    fn not_ready_binding_reports_reason() {
        let view = BindingView::from_json(&binding("False", "x"), "api").unwrap();
        let check = binding_ready("team", "api", &[view]);
        assert_eq!(check.status, Status::Fail);
        assert!(check.detail.contains("Propagated"), "{check}");
    }

    #[test]
    fn token_claims_must_match_discovery() {
        let good = json!({"iss": "https://127.0.0.1:6443", "sub": "system:serviceaccount:team:api",
                          "aud": ["api://AzureADTokenExchange"]});
        assert_eq!(token_claims(&expected(), &good).status, Status::Pass);
        let bad =
            json!({"iss": "https://127.0.0.1:6443/", "sub": "system:serviceaccount:team:api", "aud": "x"});
        let check = token_claims(&expected(), &bad);
        assert_eq!(check.status, Status::Fail);
        assert!(
            check.detail.contains("trailing slash") && check.detail.contains("lacks"),
            "{check}"
        );
    }

    #[test]
    fn report_lines_and_exit_status() {
        let mut report = Report::default();
        report.push(Check::pass("a", "fine"));
        report.push(Check::skip("b", "no pod given"));
        assert!(report.ok());
        report.push(Check::fail("c", "broken", "do this"));
        assert!(!report.ok());
        assert_eq!(report.checks[2].to_string(), "✗ c: broken → fix: do this");
        assert_eq!(report.checks[1].to_string(), "- b: no pod given (skipped)");
        assert_eq!(report.summary(), "1 passed, 1 failed, 1 skipped");
    }
}
