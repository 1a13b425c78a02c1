//! `wif doctor`'s judgement, without I/O: each function takes what was read from the cluster
//! and returns one [`Check`] (✓, ✗ with a fix, or skipped with the reason), or the value the
//! next probe needs. [`super::probes`] does the reading.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration},
        core::v1::{Container, Pod},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use wif_api::{
    CLIENT_ID_ANNOTATION, CONTAINER_IDENTITIES_ANNOTATION, DEFAULT_SERVICE_ACCOUNT, ENV_AUTHORITY_HOST,
    ENV_CLIENT_ID, ENV_FEDERATED_TOKEN_FILE, ENV_TENANT_ID, MUTATE_PATH, NAMED_CLIENT_ID_PREFIX,
    NAMED_TENANT_ID_PREFIX, SKIP_CONTAINERS_ANNOTATION, TOKEN_VOLUME_NAME, USE_LABEL, USE_LABEL_VALUE,
    is_guid,
};

use super::report::{Check, Status};

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
        let own = assigned.iter().find(|(name, _)| *name == c.name).map(|(_, i)| *i);
        container_problems(c, own, client_id, named, &mut problems);
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

/// What container `c` lacks or carries wrong, appended to `problems`; `own` is the identity
/// the pod's `container-identities` assigns it.
fn container_problems(
    c: &Container,
    own: Option<&str>,
    client_id: Option<&str>,
    named: &[Identity],
    problems: &mut Vec<String>,
) {
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

// === what the probes need ===

/// The namespace and pod name of `--pod [NAMESPACE/]NAME`, else `--namespace`, else `default_ns`.
pub(crate) fn target(
    pod: Option<String>,
    namespace: Option<String>,
    default_ns: &str,
) -> (String, Option<String>) {
    let namespace = || namespace.clone().unwrap_or_else(|| default_ns.to_owned());
    match pod {
        Some(pod) => match pod.split_once('/') {
            Some((ns, name)) => (ns.to_owned(), Some(name.to_owned())),
            None => (namespace(), Some(pod)),
        },
        None => (namespace(), None),
    }
}

/// The pod's ServiceAccount, else `--service-account`, else `default`.
pub(crate) fn service_account_name(pod: Option<&Pod>, service_account: Option<String>) -> String {
    match (pod, service_account) {
        (Some(p), _) => p
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned()),
        (None, Some(sa)) => sa,
        (None, None) => DEFAULT_SERVICE_ACCOUNT.to_owned(),
    }
}

/// The webhooks of `configs` served at wif's mutating path, with their configuration's name.
pub(crate) fn wif_webhooks(configs: Vec<MutatingWebhookConfiguration>) -> Vec<(String, MutatingWebhook)> {
    configs
        .into_iter()
        .flat_map(|c| {
            let config = c.metadata.name.clone().unwrap_or_default();
            c.webhooks
                .into_iter()
                .flatten()
                .filter(|h| webhook_path(h).as_deref() == Some(MUTATE_PATH))
                .map(move |h| (config.clone(), h))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The path the webhook is called at (its Service's, or its url's).
fn webhook_path(hook: &MutatingWebhook) -> Option<String> {
    hook.client_config
        .service
        .as_ref()
        .and_then(|s| s.path.clone())
        .or_else(|| {
            hook.client_config
                .url
                .as_deref()
                .and_then(|u| url::Url::parse(u).ok())
                .map(|u| u.path().to_owned())
        })
}

/// Which of wif's webhooks (`candidates`) serves the namespace, and the one check that says so:
/// one that selects it is preferred; two that do are a failure (the first is still checked).
pub(crate) fn choose_webhook(
    candidates: Vec<(String, MutatingWebhook)>,
    ns: &str,
    ns_labels: &BTreeMap<String, String>,
) -> (Check, Option<(String, MutatingWebhook)>) {
    if candidates.is_empty() {
        let check = Check::fail(
            "webhook configuration",
            format!("no MutatingWebhookConfiguration has a webhook at {MUTATE_PATH}"),
            "install wif: helm install wif charts/wif -n wif-system --create-namespace --set azure.tenantId=<tenant>",
        );
        return (check, None);
    }
    let mut checks: Vec<(String, MutatingWebhook, Check)> = candidates
        .into_iter()
        .map(|(config, hook)| {
            let check = webhook_selects(&config, &hook, ns, ns_labels);
            (config, hook, check)
        })
        .collect();
    let selecting: Vec<usize> = (0..checks.len())
        .filter(|&i| checks[i].2.status == Status::Pass)
        .collect();
    match selecting.as_slice() {
        // None selects this namespace: say why the first one passes it by.
        [] => (checks.swap_remove(0).2, None),
        [one] => {
            let (config, hook, check) = checks.swap_remove(*one);
            (check, Some((config, hook)))
        }
        [first, rest @ ..] => {
            let others: Vec<&str> = rest.iter().map(|&i| checks[i].0.as_str()).collect();
            let check = Check::fail(
                "webhook selects the namespace",
                format!(
                    "{} and {} all mutate labelled pods in {ns} (two installations, or wif next to upstream's webhook)",
                    checks[*first].0,
                    others.join(", ")
                ),
                "uninstall one of them, or narrow its namespaceSelector",
            );
            let (config, hook, _) = checks.swap_remove(*first);
            (check, Some((config, hook)))
        }
    }
}

// === small readers ===

/// Whether the object carries the annotation `key` (even empty).
pub(crate) fn annotation_present(meta: &ObjectMeta, key: &str) -> bool {
    meta.annotations.as_ref().is_some_and(|a| a.contains_key(key))
}

/// The annotation `key`, trimmed; None when absent or blank.
pub(crate) fn annotation(meta: &ObjectMeta, key: &str) -> Option<String> {
    meta.annotations
        .as_ref()?
        .get(key)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// A literal value of `name` in the pod's first container that has it.
pub(crate) fn pod_env(pod: &Pod, name: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
        .filter(|v| !v.is_empty())
}

/// Audience of the pod's projected token volume.
pub(crate) fn pod_audience(pod: &Pod) -> Option<String> {
    pod.spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == TOKEN_VOLUME_NAME)?
        .projected
        .as_ref()?
        .sources
        .iter()
        .flatten()
        .find_map(|s| s.service_account_token.as_ref()?.audience.clone())
}

/// How many PEM certificates the bundle holds.
pub(crate) fn certs_len(bundle: &[u8]) -> usize {
    rustls_pemfile::certs(&mut &bundle[..])
        .filter(Result::is_ok)
        .count()
}

/// Why a certificate did not verify, in words.
pub(crate) fn describe_cert_error(e: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    match e {
        E::UnknownIssuer | E::BadSignature => "it is not signed by a CA in the caBundle".into(),
        E::Expired | E::ExpiredContext { .. } => "it has expired".into(),
        E::NotValidYet | E::NotValidYetContext { .. } => "it is not valid yet (clock skew?)".into(),
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            "it is not valid for the host name in the url".into()
        }
        other => format!("{other:?}"),
    }
}
