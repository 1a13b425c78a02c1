//! Another workload identity webhook is reported by `wif doctor` and refused by the chart.

use super::*;

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn another_workload_identity_webhook_is_reported_by_doctor_and_refused_by_helm() {
    // Cluster-wide: on a control plane of its own, so no other test's install sees it.
    let cp = wif_e2e::cluster::private_control_plane(&[]);
    let ns = TestNs::on(cp.clone(), "unmutated-coexist").await;
    // Shaped like the AKS add-on's: upstream's names, served from kube-system.
    let addon: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "azure-wi-webhook-mutating-webhook-configuration",
                     "labels": {"azure-workload-identity.io/system": "true"}},
        "webhooks": [{
            "name": "mutation.azure-workload-identity.io",
            "admissionReviewVersions": ["v1", "v1beta1"],
            "clientConfig": {"service": {"name": "azure-wi-webhook-webhook-service",
                                         "namespace": "kube-system", "path": "/mutate-v1-pod"}},
            "failurePolicy": "Fail", "matchPolicy": "Equivalent", "sideEffects": "None",
            "objectSelector": {"matchLabels": {USE_LABEL: "true"}},
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "nowhere"}},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["pods"]}]
        }]
    }))
    .unwrap();
    Api::<MutatingWebhookConfiguration>::all(ns.client.clone())
        .create(&PostParams::default(), &addon)
        .await
        .unwrap();

    let (out, text) = doctor(&ns, &["--all-namespaces"]).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("azure-wi-webhook-mutating-webhook-configuration")
            && text.contains("AKS workload identity add-on")
            && text.contains("az aks update"),
        "{text}"
    );

    let helm = helm::on(&cp);
    let chart = chart();
    let base = [
        "install",
        "wif",
        chart.to_str().unwrap(),
        "-n",
        &ns.name,
        "--dry-run=server",
        "--set",
        "azure.tenantId=72f988bf-86f1-41af-91ab-2d7cd011db47",
        "--set",
        "controller.enabled=false",
    ];
    let refused = helm.run(base);
    assert!(!refused.ok, "helm install must refuse:\n{}", refused.stdout);
    assert!(
        refused
            .stderr
            .contains("azure-wi-webhook-mutating-webhook-configuration")
            && refused.stderr.contains("AKS workload identity add-on"),
        "{}",
        refused.stderr
    );
    let mut allowed: Vec<&str> = base.to_vec();
    allowed.extend(["--set", "webhook.allowOtherWorkloadIdentityWebhook=true"]);
    let run = helm.run(allowed);
    assert!(run.ok, "the override must install:\n{}", run.stderr);
}
