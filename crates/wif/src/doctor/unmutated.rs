//! `wif doctor --namespace NS` / `--all-namespaces` (no pod, no ServiceAccount): every labelled
//! pod that lacks what the webhook injects, with the likely cause; and, in every mode, another
//! workload identity webhook selecting the same label. The judgement is the controller's own
//! pure check ([`wif_controller::unmutated::check`]).

use std::collections::BTreeMap;

use anyhow::Context;
use k8s_openapi::{
    api::core::v1::{Pod, ServiceAccount},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, PartialObjectMeta},
};
use wif_api::{MutationConfig, USE_LABEL, USE_LABEL_VALUE};
use wif_controller::unmutated::{
    check::{Verdict, check, check_config, likely_cause},
    facts,
};
use wif_webhook::coexist;

use super::{Check, Report};

/// Another workload identity webhook (AKS add-on, upstream, a second wif) selecting the label,
/// in a namespace with these labels (`None`: anywhere).
pub async fn other_webhooks(client: &Client, ns_labels: Option<&BTreeMap<String, String>>) -> Check {
    const NAME: &str = "one workload identity webhook";
    match coexist::detect(client).await {
        Ok(mut all) => {
            if let Some(labels) = ns_labels {
                all.retain(|c| c.selects_namespace(labels));
            }
            other_webhooks_check(&all)
        }
        Err(error) => Check::skip(
            NAME,
            format!("cannot list MutatingWebhookConfigurations: {error}"),
        ),
    }
}

/// [`other_webhooks`] on what was listed.
pub fn other_webhooks_check(all: &[coexist::Claimant]) -> Check {
    const NAME: &str = "one workload identity webhook";
    let conflicts = coexist::conflicts(all, None);
    if conflicts.is_empty() {
        return Check::pass(
            NAME,
            format!("no other webhook selects pods labelled {USE_LABEL}={USE_LABEL_VALUE}"),
        );
    }
    let found: Vec<String> = conflicts.iter().map(|c| c.describe()).collect();
    let fixes: Vec<String> = conflicts.iter().map(|c| c.fix()).collect();
    Check::fail(
        NAME,
        format!(
            "{} also select pods labelled {USE_LABEL}={USE_LABEL_VALUE}: two webhooks mutate the same pods",
            found.join(", ")
        ),
        fixes.join("; "),
    )
}

/// Lists labelled pods in `namespace` (or all namespaces) and reports those not mutated.
pub async fn scan(client: &Client, namespace: Option<&str>) -> anyhow::Result<Report> {
    let mut report = Report::default();
    let add = |report: &mut Report, c: Check| {
        println!("{c}");
        report.push(c);
    };
    let claimants = coexist::detect(client).await.unwrap_or_default();
    let in_namespace: Vec<coexist::Claimant> = match namespace {
        Some(ns) => {
            let labels = BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), ns.to_owned())]);
            claimants
                .iter()
                .filter(|c| c.selects_namespace(&labels))
                .cloned()
                .collect()
        }
        None => claimants.clone(),
    };
    add(&mut report, other_webhooks_check(&in_namespace));
    let (pods, sas): (Api<Pod>, Api<PartialObjectMeta<ServiceAccount>>) = match namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let selector = format!("{USE_LABEL}={USE_LABEL_VALUE}");
    let pods = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .context("failed to list labelled pods")?
        .items;
    let sas: BTreeMap<(String, String), _> = sas
        .list_metadata(&ListParams::default())
        .await
        .context("failed to list ServiceAccounts")?
        .items
        .into_iter()
        .map(|sa| ((sa.namespace().unwrap_or_default(), sa.name_any()), sa.metadata))
        .collect();
    let cfg = check_config("");
    let where_ = namespace.map_or_else(|| "any namespace".to_owned(), |ns| format!("namespace {ns}"));
    let mut bad = 0;
    for pod in &pods {
        if let Some(check) = unmutated_pod(pod, &sas, &claimants, &cfg) {
            bad += 1;
            add(&mut report, check);
        }
    }
    if bad == 0 {
        add(
            &mut report,
            Check::pass(
                "labelled pods mutated",
                format!(
                    "all {} pods labelled {selector} in {where_} carry their identity",
                    pods.len()
                ),
            ),
        );
    }
    Ok(report)
}

/// The failed check of a labelled pod that lacks what the webhook injects, with the likely
/// cause and the fix; None for a mutated pod.
fn unmutated_pod(
    pod: &Pod,
    sas: &BTreeMap<(String, String), ObjectMeta>,
    claimants: &[coexist::Claimant],
    cfg: &MutationConfig,
) -> Option<Check> {
    let sa_name = super::checks::service_account_name(Some(pod), None);
    let ns = pod.namespace().unwrap_or_default();
    let verdict = check(pod, sas.get(&(ns.clone(), sa_name)), cfg);
    if verdict == Verdict::Mutated {
        return None;
    }
    let facts = facts(claimants, Some(&ns));
    let cause = likely_cause(
        &verdict,
        pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
        &facts,
    );
    let fix = match &verdict {
        Verdict::NoClientId { .. } => {
            "annotate the ServiceAccount with azure.workload.identity/client-id (or bind it with a \
             FederatedIdentityBinding), then recreate the pod"
                .to_owned()
        }
        _ => format!(
            "recreate the pod once the webhook serves (kubectl -n {ns} delete pod {}), or run the controller \
             with --recycle-unmutated",
            pod.name_any()
        ),
    };
    Some(Check::fail(
        "labelled pod mutated",
        format!(
            "pod {ns}/{} ({}): {}; likely cause: {cause}",
            pod.name_any(),
            verdict.reason().unwrap_or("NotMutated"),
            verdict.describe()
        ),
        fix,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::report::Status;

    #[test]
    fn the_add_on_is_named_with_its_fix() {
        let all = [coexist::Claimant {
            configuration: coexist::UPSTREAM_CONFIGURATION.to_owned(),
            webhook: coexist::UPSTREAM_WEBHOOK.to_owned(),
            owner: coexist::Owner::AksAddOn,
            failure_policy: "Fail".to_owned(),
            created: None,
            namespace_selector: None,
        }];
        let c = other_webhooks_check(&all);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains(coexist::UPSTREAM_CONFIGURATION), "{}", c.detail);
        assert!(
            c.fix.as_deref().unwrap_or_default().contains("az aks update"),
            "{c:?}"
        );
        assert_eq!(other_webhooks_check(&[]).status, Status::Pass);
    }
}
