//! Does a running pod carry what the webhook would inject for its ServiceAccount today? A pure
//! function: it runs the webhook's own [`wif_webhook::mutate`] on the pod and calls the pod
//! mutated when there is nothing left to add, so the rules live in one place.
//!
//! The check only asks *whether* each variable, mount and volume is present, not which value it
//! has (a variable the user set is their override, as at admission), so the tenant and
//! authority host given here do not change the verdict.

use k8s_openapi::{
    api::core::v1::{Pod, PodSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use wif_api::{CLIENT_ID_ANNOTATION, MutationConfig, USE_LABEL, USE_LABEL_VALUE};
use wif_webhook::{ContainerKind, Edit, mutate};

/// What the check found on one labelled pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do: the pod carries the token volume, mounts and variables (or is not
    /// labelled `azure.workload.identity/use: "true"`, which the reconciler never looks at).
    Mutated,
    /// The pod lacks what the webhook would inject; each string names one missing piece.
    NotMutated {
        /// e.g. `volume "azure-identity-token"`, `AZURE_CLIENT_ID in container "app"`.
        missing: Vec<String>,
    },
    /// The pod's ServiceAccount has no client-id annotation (or does not exist): no webhook can
    /// give this pod an identity, so recycling it would not help.
    NoClientId {
        /// `ns/name` of the ServiceAccount.
        service_account: String,
        /// The ServiceAccount does not exist at all.
        missing_service_account: bool,
    },
    /// The webhook would refuse this pod today (it was created without it); the message says why.
    WouldBeRefused {
        /// The webhook's refusal.
        reason: String,
    },
}

impl Verdict {
    /// The Event reason: `NotMutated` or `NoClientId`; `None` when there is nothing to report.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            Verdict::Mutated => None,
            Verdict::NotMutated { .. } | Verdict::WouldBeRefused { .. } => Some("NotMutated"),
            Verdict::NoClientId { .. } => Some("NoClientId"),
        }
    }

    /// Whether evicting the pod could give its replacement an identity.
    pub(crate) fn recyclable(&self) -> bool {
        matches!(self, Verdict::NotMutated { .. })
    }

    /// One line saying what is wrong (without the cause).
    pub fn describe(&self) -> String {
        match self {
            Verdict::Mutated => "mutated".to_owned(),
            Verdict::NotMutated { missing } => format!("missing {}", missing.join(", ")),
            Verdict::NoClientId {
                service_account,
                missing_service_account: true,
            } => format!("ServiceAccount {service_account} does not exist, so no client id can be injected"),
            Verdict::NoClientId { service_account, .. } => format!(
                "ServiceAccount {service_account} has no {CLIENT_ID_ANNOTATION} annotation, so AZURE_CLIENT_ID \
                 cannot be injected: annotate it (or bind it with a FederatedIdentityBinding)"
            ),
            Verdict::WouldBeRefused { reason } => {
                format!("created without the webhook, which would refuse it today: {reason}")
            }
        }
    }
}

/// Settings the check needs: only presence matters, see the module docs.
pub fn check_config(tenant_id: &str) -> MutationConfig {
    let tenant = if tenant_id.is_empty() { "tenant" } else { tenant_id };
    MutationConfig::new(tenant, wif_api::Cloud::Public)
}

/// Checks `pod` against what the webhook injects given its ServiceAccount's metadata `sa`
/// (`None`: the ServiceAccount does not exist).
pub fn check(pod: &Pod, sa: Option<&ObjectMeta>, cfg: &MutationConfig) -> Verdict {
    if pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(USE_LABEL))
        .map(String::as_str)
        != Some(USE_LABEL_VALUE)
    {
        return Verdict::Mutated;
    }
    let ns = pod.metadata.namespace.as_deref().unwrap_or_default();
    let sa_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or(wif_api::DEFAULT_SERVICE_ACCOUNT);
    let Some(sa) = sa else {
        return Verdict::NoClientId {
            service_account: format!("{ns}/{sa_name}"),
            missing_service_account: true,
        };
    };
    let has_client_id = sa
        .annotations
        .as_ref()
        .and_then(|a| a.get(CLIENT_ID_ANNOTATION))
        .is_some_and(|v| !v.is_empty());
    if !has_client_id {
        return Verdict::NoClientId {
            service_account: format!("{ns}/{sa_name}"),
            missing_service_account: false,
        };
    }
    match mutate(pod, sa, cfg) {
        Ok(m) if m.is_noop() => Verdict::Mutated,
        Ok(m) => Verdict::NotMutated {
            missing: m
                .edits
                .iter()
                .map(|e| describe_edit(e, pod.spec.as_ref()))
                .collect(),
        },
        Err(denial) => Verdict::WouldBeRefused {
            reason: denial.to_string(),
        },
    }
}

fn describe_edit(edit: &Edit, spec: Option<&PodSpec>) -> String {
    let container = |kind: &ContainerKind, index: usize| {
        let list = spec.map(|s| match kind {
            ContainerKind::Init => s.init_containers.as_deref().unwrap_or_default(),
            ContainerKind::Regular => s.containers.as_slice(),
        });
        let name = list
            .and_then(|l| l.get(index))
            .map(|c| c.name.as_str())
            .unwrap_or("?");
        match kind {
            ContainerKind::Init => format!("init container {name:?}"),
            ContainerKind::Regular => format!("container {name:?}"),
        }
    };
    match edit {
        Edit::AddVolume { volume, .. } => format!("volume {:?}", volume.name),
        Edit::AddMount {
            kind, index, mount, ..
        } => {
            format!("mount of {:?} in {}", mount.name, container(kind, *index))
        }
        Edit::AddEnv {
            kind, index, vars, ..
        } => format!(
            "{} in {}",
            vars.iter()
                .map(|v| v.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            container(kind, *index)
        ),
    }
}

/// What the reconciler knows about the cluster's webhooks, for the likely cause.
#[derive(Clone, Debug, Default)]
pub struct WebhookFacts {
    /// Configurations of other workload identity webhooks selecting the label (described).
    pub others: Vec<String>,
    /// wif's own configuration: when it was created (RFC 3339) and its failure policy.
    pub own: Option<OwnWebhook>,
}

/// wif's MutatingWebhookConfiguration, as far as the cause is concerned.
#[derive(Clone, Debug)]
pub struct OwnWebhook {
    /// Its name.
    pub name: String,
    /// Its creation time.
    pub created: Option<jiff::Timestamp>,
    /// `Ignore` or `Fail`.
    pub failure_policy: String,
}

/// The most likely reason a labelled pod went without the webhook.
pub fn likely_cause(verdict: &Verdict, pod_created: Option<jiff::Timestamp>, facts: &WebhookFacts) -> String {
    if let Verdict::NoClientId { .. } = verdict {
        return "the ServiceAccount has no client id: annotate it or create a FederatedIdentityBinding for it"
            .to_owned();
    }
    if !facts.others.is_empty() {
        return format!(
            "another workload identity webhook selects the same label ({}); keep one (`wif doctor` says how)",
            facts.others.join(", ")
        );
    }
    let Some(own) = &facts.own else {
        return "wif's webhook is absent: no MutatingWebhookConfiguration selects azure.workload.identity/use=true"
            .to_owned();
    };
    if let (Some(pod), Some(cfg)) = (pod_created, own.created)
        && pod < cfg
    {
        return format!(
            "the pod is older than the webhook configuration {} (created before wif was installed)",
            own.name
        );
    }
    if own.failure_policy == "Ignore" {
        return format!(
            "the webhook was down or unreachable when the pod was created, and {} has failurePolicy: Ignore",
            own.name
        );
    }
    "the webhook was down, unreachable or not yet configured when the pod was created".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, EnvVar, Volume, VolumeMount};
    use rstest::rstest;
    use std::collections::BTreeMap;

    fn sa(client_id: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some("app".into()),
            namespace: Some("ns".into()),
            annotations: client_id.map(|c| BTreeMap::from([(CLIENT_ID_ANNOTATION.to_owned(), c.to_owned())])),
            ..ObjectMeta::default()
        }
    }

    fn pod(label: Option<&str>, containers: Vec<Container>) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                labels: label.map(|v| BTreeMap::from([(USE_LABEL.to_owned(), v.to_owned())])),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                service_account_name: Some("app".into()),
                containers,
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    fn bare(name: &str) -> Container {
        Container {
            name: name.into(),
            ..Container::default()
        }
    }

    /// What the webhook would have produced: the pod, mutated by the pure function itself.
    fn mutated(mut p: Pod) -> Pod {
        let cfg = check_config("t");
        let m = mutate(&p, &sa(Some("c")), &cfg).expect("mutates");
        m.apply(&mut p);
        p
    }

    #[rstest]
    #[case::never_mutated(pod(Some("true"), vec![bare("app")]), Some("c"), Some("NotMutated"))]
    #[case::mutated(mutated(pod(Some("true"), vec![bare("app")])), Some("c"), None)]
    #[case::mutated_two_containers(mutated(pod(Some("true"), vec![bare("a"), bare("b")])), Some("c"), None)]
    #[case::not_labelled(pod(None, vec![bare("app")]), Some("c"), None)]
    #[case::label_not_exactly_true(pod(Some("True"), vec![bare("app")]), Some("c"), None)]
    #[case::no_client_id(pod(Some("true"), vec![bare("app")]), None, Some("NoClientId"))]
    #[case::no_client_id_even_if_mutated(mutated(pod(Some("true"), vec![bare("app")])), None, Some("NoClientId"))]
    fn verdicts(#[case] p: Pod, #[case] client_id: Option<&str>, #[case] reason: Option<&str>) {
        let v = check(&p, Some(&sa(client_id)), &check_config("t"));
        assert_eq!(v.reason(), reason, "{v:?}");
    }

    #[test]
    fn missing_service_account_is_no_client_id_and_not_recyclable() {
        let v = check(&pod(Some("true"), vec![bare("app")]), None, &check_config("t"));
        assert_eq!(v.reason(), Some("NoClientId"));
        assert!(!v.recyclable());
        assert!(v.describe().contains("ns/app does not exist"), "{}", v.describe());
    }

    #[test]
    fn a_container_added_without_the_webhook_is_named() {
        let mut p = mutated(pod(Some("true"), vec![bare("app")]));
        if let Some(spec) = p.spec.as_mut() {
            spec.containers.push(bare("late"));
        }
        let v = check(&p, Some(&sa(Some("c"))), &check_config("t"));
        assert!(v.recyclable());
        let d = v.describe();
        assert!(d.contains("container \"late\""), "{d}");
        assert!(!d.contains("\"app\""), "{d}");
        assert!(!d.contains("volume"), "{d}");
    }

    #[test]
    fn everything_missing_is_listed() {
        let v = check(
            &pod(Some("true"), vec![bare("app")]),
            Some(&sa(Some("c"))),
            &check_config("t"),
        );
        let d = v.describe();
        for part in [
            "volume \"azure-identity-token\"",
            "mount of",
            "AZURE_CLIENT_ID",
            "AZURE_FEDERATED_TOKEN_FILE",
        ] {
            assert!(d.contains(part), "{part} not in {d}");
        }
    }

    #[test]
    fn values_the_user_set_count_as_present() {
        // The user's own variables, mount and token volume are their override.
        let env = [
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_AUTHORITY_HOST",
        ]
        .iter()
        .map(|n| EnvVar {
            name: (*n).into(),
            value: Some("mine".into()),
            value_from: None,
        })
        .collect();
        let mut p = pod(
            Some("true"),
            vec![Container {
                name: "app".into(),
                env: Some(env),
                volume_mounts: Some(vec![VolumeMount {
                    name: wif_api::TOKEN_VOLUME_NAME.into(),
                    mount_path: "/elsewhere".into(),
                    ..VolumeMount::default()
                }]),
                ..Container::default()
            }],
        );
        let mut with_volume = mutated(p.clone());
        let vol: Vec<Volume> = with_volume
            .spec
            .as_mut()
            .and_then(|s| s.volumes.take())
            .unwrap_or_default();
        if let Some(s) = p.spec.as_mut() {
            s.volumes = Some(vol);
        }
        assert_eq!(
            check(&p, Some(&sa(Some("c"))), &check_config("t")),
            Verdict::Mutated
        );
    }

    #[test]
    fn skipped_containers_are_not_required() {
        let mut p = mutated(pod(Some("true"), vec![bare("app")]));
        if let Some(spec) = p.spec.as_mut() {
            spec.containers.push(bare("sidecar"));
        }
        p.metadata.annotations = Some(BTreeMap::from([(
            wif_api::SKIP_CONTAINERS_ANNOTATION.to_owned(),
            "sidecar".to_owned(),
        )]));
        assert_eq!(
            check(&p, Some(&sa(Some("c"))), &check_config("t")),
            Verdict::Mutated
        );
    }

    fn own(policy: &str, created: &str) -> WebhookFacts {
        WebhookFacts {
            others: Vec::new(),
            own: Some(OwnWebhook {
                name: "wif-webhook".into(),
                created: created.parse().ok(),
                failure_policy: policy.into(),
            }),
        }
    }

    #[rstest]
    #[case::absent(WebhookFacts::default(), "2026-01-02T00:00:00Z", "absent")]
    #[case::older(
        own("Fail", "2026-01-03T00:00:00Z"),
        "2026-01-02T00:00:00Z",
        "older than the webhook configuration"
    )]
    #[case::ignore(
        own("Ignore", "2026-01-01T00:00:00Z"),
        "2026-01-02T00:00:00Z",
        "failurePolicy: Ignore"
    )]
    #[case::fail(own("Fail", "2026-01-01T00:00:00Z"), "2026-01-02T00:00:00Z", "was down")]
    #[case::other(WebhookFacts { others: vec!["azure-wi-webhook-mutating-webhook-configuration".into()], own: None },
                  "2026-01-02T00:00:00Z", "another workload identity webhook")]
    fn causes(#[case] facts: WebhookFacts, #[case] pod_created: &str, #[case] expected: &str) {
        let v = Verdict::NotMutated { missing: vec![] };
        let cause = likely_cause(&v, pod_created.parse().ok(), &facts);
        assert!(cause.contains(expected), "{cause}");
    }
}
