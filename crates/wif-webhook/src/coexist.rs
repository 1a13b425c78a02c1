//! Another workload identity webhook in the cluster: the AKS add-on's, an upstream Helm install,
//! or a second wif. Two webhooks mutating the same pods fight (each adds its own variables and
//! volume, or one refuses what the other added), so `wif webhook`, `wif controller` and
//! `wif doctor` all report it. [`claimants`] is pure; [`detect`] lists the configurations.

use k8s_openapi::{
    api::admissionregistration::v1::{MutatingWebhook, MutatingWebhookConfiguration},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{Api, Client, api::ListParams};
use wif_api::{USE_LABEL, USE_LABEL_VALUE};

/// Name of the MutatingWebhookConfiguration of upstream's Helm chart and of the AKS add-on
/// (which deploys the same chart into `kube-system`).
pub const UPSTREAM_CONFIGURATION: &str = "azure-wi-webhook-mutating-webhook-configuration";
/// Name of upstream's (and the add-on's) webhook inside that configuration.
pub const UPSTREAM_WEBHOOK: &str = "mutation.azure-workload-identity.io";
/// Suffix of wif's own webhook names.
pub(crate) const WIF_WEBHOOK_SUFFIX: &str = ".wif.azure.workload.identity";

/// Whose webhook it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A wif install.
    Wif,
    /// The AKS workload identity add-on (upstream's webhook served from `kube-system`).
    AksAddOn,
    /// Upstream azure-workload-identity installed with Helm or manifests.
    Upstream,
    /// Some other webhook that selects the label.
    Other,
}

impl Owner {
    /// For messages.
    pub fn describe(self) -> &'static str {
        match self {
            Owner::Wif => "wif",
            Owner::AksAddOn => "the AKS workload identity add-on",
            Owner::Upstream => "upstream azure-workload-identity",
            Owner::Other => "another webhook",
        }
    }
}

/// One webhook that mutates pods labelled `azure.workload.identity/use: "true"`.
#[derive(Clone, Debug, PartialEq)]
pub struct Claimant {
    /// The MutatingWebhookConfiguration's name.
    pub configuration: String,
    /// The webhook's name inside it.
    pub webhook: String,
    /// Whose it is.
    pub owner: Owner,
    /// `Fail` or `Ignore` (`Fail` when unset, the API default).
    pub failure_policy: String,
    /// Creation time of the configuration.
    pub created: Option<jiff::Timestamp>,
    /// The webhook's namespaceSelector (`None` selects every namespace).
    pub namespace_selector: Option<LabelSelector>,
}

impl Claimant {
    /// `MutatingWebhookConfiguration <name> (<owner>)`.
    pub fn describe(&self) -> String {
        format!(
            "MutatingWebhookConfiguration {} (webhook {}, {})",
            self.configuration,
            self.webhook,
            self.owner.describe()
        )
    }

    /// Whether it applies to a namespace with these labels (the API server sets
    /// `kubernetes.io/metadata.name` on every namespace).
    pub fn selects_namespace(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.namespace_selector
            .as_ref()
            .is_none_or(|sel| selector_matches(sel, labels))
    }

    /// How to remove this one, keeping the other.
    pub fn fix(&self) -> String {
        match self.owner {
            Owner::AksAddOn => "keep one webhook: to keep wif, disable the add-on's webhook \
                 (`az aks update --disable-workload-identity` keeps the OIDC issuer) — or uninstall wif to keep the add-on"
                .to_owned(),
            Owner::Upstream => format!(
                "keep one webhook: to keep wif, uninstall upstream (`helm uninstall workload-identity-webhook -n \
                 azure-workload-identity-system`, or `kubectl delete mutatingwebhookconfiguration {}`) — \
                 or uninstall wif to keep upstream",
                self.configuration
            ),
            Owner::Wif => format!(
                "keep one wif install: `helm uninstall` the release that owns {} (or delete it if left over)",
                self.configuration
            ),
            Owner::Other => format!(
                "keep one webhook: remove {} or narrow its objectSelector so it no longer selects {USE_LABEL}",
                self.configuration
            ),
        }
    }
}

/// Every webhook in `configs` that would mutate a pod labelled `azure.workload.identity/use: "true"`.
pub fn claimants(configs: &[MutatingWebhookConfiguration]) -> Vec<Claimant> {
    let mut out = Vec::new();
    for cfg in configs {
        let configuration = cfg.metadata.name.clone().unwrap_or_default();
        for hook in cfg.webhooks.iter().flatten() {
            let known = hook.name == UPSTREAM_WEBHOOK
                || configuration == UPSTREAM_CONFIGURATION
                || hook.name.ends_with(WIF_WEBHOOK_SUFFIX);
            if !mutates_pod_creation(hook) || !(known || selects_label(hook.object_selector.as_ref())) {
                continue;
            }
            // wif's skip-explaining webhook selects pods whose label is *not* "true".
            if hook.name.ends_with(WIF_WEBHOOK_SUFFIX) && !hook.name.starts_with("mutation.") {
                continue;
            }
            let owner = if hook.name.ends_with(WIF_WEBHOOK_SUFFIX) {
                Owner::Wif
            } else if hook.name == UPSTREAM_WEBHOOK || configuration == UPSTREAM_CONFIGURATION {
                let ns = hook.client_config.service.as_ref().map(|s| s.namespace.as_str());
                if ns == Some("kube-system") {
                    Owner::AksAddOn
                } else {
                    Owner::Upstream
                }
            } else {
                Owner::Other
            };
            out.push(Claimant {
                configuration: configuration.clone(),
                webhook: hook.name.clone(),
                owner,
                failure_policy: hook.failure_policy.clone().unwrap_or_else(|| "Fail".to_owned()),
                created: cfg.metadata.creation_timestamp.as_ref().map(|t| t.0),
                namespace_selector: hook.namespace_selector.clone(),
            });
        }
    }
    out
}

/// The claimants that conflict with wif: everything not wif, and every wif configuration but
/// `own` when there is more than one (`own`: this install's configuration name, when known).
pub fn conflicts<'a>(all: &'a [Claimant], own: Option<&str>) -> Vec<&'a Claimant> {
    let wif = all.iter().filter(|c| c.owner == Owner::Wif).count();
    all.iter()
        .filter(|c| match c.owner {
            Owner::Wif => wif > 1 && own.is_some_and(|o| o != c.configuration),
            _ => true,
        })
        .collect()
}

fn mutates_pod_creation(hook: &MutatingWebhook) -> bool {
    hook.rules.iter().flatten().any(|r| {
        let any =
            |list: &Option<Vec<String>>, want: &str| list.iter().flatten().any(|v| v == "*" || v == want);
        any(&r.api_groups, "")
            && any(&r.resources, "pods")
            && r.operations.iter().flatten().any(|o| o == "*" || o == "CREATE")
    })
}

/// Whether a pod carrying only `azure.workload.identity/use: "true"` among wif keys is
/// selected because of that label (a selector that ignores the label is not a claim on it).
fn selects_label(selector: Option<&LabelSelector>) -> bool {
    let Some(sel) = selector else { return false };
    let by_labels = sel
        .match_labels
        .as_ref()
        .and_then(|m| m.get(USE_LABEL))
        .is_some_and(|v| v == USE_LABEL_VALUE);
    let by_expr = sel.match_expressions.iter().flatten().any(|e| {
        e.key == USE_LABEL
            && match e.operator.as_str() {
                "Exists" => true,
                "In" => e.values.iter().flatten().any(|v| v == USE_LABEL_VALUE),
                _ => false,
            }
    });
    by_labels || by_expr
}

/// Whether `labels` satisfy `selector` (an empty selector matches everything).
pub fn selector_matches(
    selector: &LabelSelector,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expr
}

/// Lists the MutatingWebhookConfigurations and returns the webhooks claiming the label.
pub async fn detect(client: &Client) -> Result<Vec<Claimant>, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let list = api.list(&ListParams::default()).await?;
    Ok(claimants(&list.items))
}

/// Logs each conflict (at start of `wif webhook` and `wif controller`) and returns how many.
pub fn log_conflicts(all: &[Claimant], own: Option<&str>) -> usize {
    let found = conflicts(all, own);
    for c in &found {
        tracing::warn!(
            configuration = %c.configuration,
            webhook = %c.webhook,
            owner = c.owner.describe(),
            fix = %c.fix(),
            "another workload identity webhook selects pods labelled {USE_LABEL}=true; pods get mutated twice or by the wrong one"
        );
    }
    found.len()
}

/// Registers `wif_other_webhook_configurations` (the webhook's copy of the controller's gauge).
pub(crate) fn register_gauge(registry: &mut prometheus_client::registry::Registry) -> Gauge {
    let g = Gauge::default();
    registry.register(
        "wif_other_webhook_configurations",
        "Other workload identity webhooks (AKS add-on, upstream, a second wif) selecting the same pod label",
        g.clone(),
    );
    g
}

/// The gauge type of [`register_gauge`].
pub type Gauge = prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64>;

/// Lists the configurations once (at start), logs each conflict and sets `gauge`. A failure to
/// list (RBAC) is logged, never fatal.
pub(crate) async fn report_at_start(client: Client, gauge: Gauge) {
    match detect(&client).await {
        Ok(all) => {
            let n = log_conflicts(&all, None);
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Err(error) => {
            tracing::warn!(%error, "cannot list MutatingWebhookConfigurations to look for another workload identity webhook")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::admissionregistration::v1::{
        RuleWithOperations, ServiceReference, WebhookClientConfig,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};
    use std::collections::BTreeMap;

    fn config(
        name: &str,
        hook: &str,
        ns: &str,
        selector: Option<LabelSelector>,
    ) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            webhooks: Some(vec![MutatingWebhook {
                name: hook.into(),
                admission_review_versions: vec!["v1".into()],
                side_effects: "None".into(),
                client_config: WebhookClientConfig {
                    service: Some(ServiceReference {
                        name: "svc".into(),
                        namespace: ns.into(),
                        ..ServiceReference::default()
                    }),
                    ..WebhookClientConfig::default()
                },
                rules: Some(vec![RuleWithOperations {
                    api_groups: Some(vec!["".into()]),
                    api_versions: Some(vec!["v1".into()]),
                    operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                    resources: Some(vec!["pods".into()]),
                    scope: None,
                }]),
                object_selector: selector,
                failure_policy: Some("Ignore".into()),
                ..MutatingWebhook::default()
            }]),
        }
    }

    fn label() -> Option<LabelSelector> {
        Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(USE_LABEL.to_owned(), "true".to_owned())])),
            match_expressions: None,
        })
    }

    #[test]
    fn aks_add_on_upstream_wif_and_others_are_told_apart() {
        let configs = vec![
            config(UPSTREAM_CONFIGURATION, UPSTREAM_WEBHOOK, "kube-system", label()),
            config(
                UPSTREAM_CONFIGURATION,
                UPSTREAM_WEBHOOK,
                "azure-workload-identity-system",
                label(),
            ),
            config(
                "wif-webhook",
                "mutation.wif.azure.workload.identity",
                "wif-system",
                label(),
            ),
            config(
                "homegrown",
                "inject.example.com",
                "x",
                Some(LabelSelector {
                    match_labels: None,
                    match_expressions: Some(vec![LabelSelectorRequirement {
                        key: USE_LABEL.into(),
                        operator: "In".into(),
                        values: Some(vec!["true".into()]),
                    }]),
                }),
            ),
            // Selects every pod but not because of the label: not a claim (e.g. a sidecar injector).
            config(
                "istio-sidecar-injector",
                "sidecar-injector.istio.io",
                "istio-system",
                None,
            ),
        ];
        let found: Vec<Owner> = claimants(&configs).iter().map(|c| c.owner).collect();
        assert_eq!(
            found,
            [Owner::AksAddOn, Owner::Upstream, Owner::Wif, Owner::Other]
        );
        let all = claimants(&configs);
        let conflicting: Vec<&str> = conflicts(&all, Some("wif-webhook"))
            .iter()
            .map(|c| c.configuration.as_str())
            .collect();
        assert_eq!(
            conflicting,
            [UPSTREAM_CONFIGURATION, UPSTREAM_CONFIGURATION, "homegrown"]
        );
        assert!(all[0].fix().contains("az aks update"), "{}", all[0].fix());
    }

    #[test]
    fn wif_alone_is_no_conflict_but_two_wifs_are() {
        let one = claimants(&[config(
            "a-webhook",
            "mutation.wif.azure.workload.identity",
            "a",
            label(),
        )]);
        assert!(conflicts(&one, None).is_empty());
        let two = claimants(&[
            config("a-webhook", "mutation.wif.azure.workload.identity", "a", label()),
            config("b-webhook", "mutation.wif.azure.workload.identity", "b", label()),
        ]);
        let c = conflicts(&two, Some("a-webhook"));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].configuration, "b-webhook");
    }

    #[test]
    fn namespace_selectors_are_evaluated() {
        let mut cfg = config("a-webhook", "mutation.wif.azure.workload.identity", "a", label());
        for w in cfg.webhooks.iter_mut().flatten() {
            w.namespace_selector = Some(LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "kubernetes.io/metadata.name".into(),
                    operator: "NotIn".into(),
                    values: Some(vec!["kube-system".into()]),
                }]),
            });
        }
        let c = &claimants(&[cfg])[0];
        let ns = |n: &str| BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), n.to_owned())]);
        assert!(c.selects_namespace(&ns("payments")));
        assert!(!c.selects_namespace(&ns("kube-system")));
    }

    #[test]
    fn wifs_own_explain_webhook_is_no_claim() {
        let c = claimants(&[config(
            "a-webhook",
            "explain.wif.azure.workload.identity",
            "a",
            label(),
        )]);
        assert!(c.is_empty());
    }
}
