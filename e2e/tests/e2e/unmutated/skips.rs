//! The webhook explains every skip with a warning and counts it.

use super::*;

/// `kubectl create --dry-run=server` of `pod`: (stderr with the warnings, success).
fn kubectl_dry_run(ns: &TestNs, pod: &Value) -> (String, bool) {
    let out = ns.cp.kubectl_stdin(
        &[
            "-n",
            &ns.name,
            "create",
            "--dry-run=server",
            "-o",
            "name",
            "-f",
            "-",
        ],
        &pod.to_string(),
    );
    (
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn every_skip_reason_is_a_warning_and_counted() {
    let ns = TestNs::new("unmutated-skips").await;
    ns.service_account("app", &[(CLIENT_ID_ANNOTATION, CLIENT_ID)])
        .await;
    let labelled_sa = ns.service_account("labelled", &[]).await;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = ns.api();
    sas.patch(
        &labelled_sa.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {USE_LABEL: "true"}}})),
    )
    .await
    .unwrap();
    let hook = WebhookProcess::start(&ns, WebhookOptions::default()).await;
    // The chart's `explainSkips: all` webhook: every pod not labelled exactly "true".
    let api: Api<MutatingWebhookConfiguration> = Api::all(ns.client.clone());
    let explain_name = format!("wif-e2e-{}-explain", ns.name);
    let mut explain = wif_e2e::webhook::mutating_configuration(
        &explain_name,
        "explain.wif.azure.workload.identity",
        &format!("https://127.0.0.1:{}{}", hook.port, wif_api::MUTATE_PATH),
        &hook.ca_pem,
        &ns.name,
        Some(
            serde_json::from_value(json!({"matchExpressions": [
            {"key": USE_LABEL, "operator": "NotIn", "values": ["true"]}]}))
            .unwrap(),
        ),
    );
    for w in explain.webhooks.iter_mut().flatten() {
        w.failure_policy = Some("Ignore".into());
    }
    api.create(&PostParams::default(), &explain).await.unwrap();
    let _cleanup = scopeguard(ns.cp.kubeconfig.clone(), explain_name.clone());

    let pod = |name: &str, sa: &str, labels: Value, annotations: Value| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "labels": labels, "annotations": annotations},
               "spec": {"serviceAccountName": sa, "containers": [{"name": "c", "image": "busybox"}]}})
    };
    let cases = [
        (
            "label_value",
            pod("capital", "app", json!({USE_LABEL: "True"}), json!({})),
            "only the exact value",
        ),
        (
            "label_value",
            pod("yes", "app", json!({USE_LABEL: "yes"}), json!({})),
            "only the exact value",
        ),
        (
            "label_on_service_account",
            pod("sa-label", "labelled", json!({}), json!({})),
            "selects pods",
        ),
        (
            "client_id_on_pod",
            pod(
                "cid-pod",
                "app",
                json!({}),
                json!({CLIENT_ID_ANNOTATION: CLIENT_ID}),
            ),
            "move it there",
        ),
        (
            "misspelt_key",
            pod(
                "typo",
                "app",
                json!({"azure.workload.identity/usee": "true"}),
                json!({}),
            ),
            "did you mean azure.workload.identity/use",
        ),
    ];
    // The API server picks the new configuration up eventually.
    let (first_reason, first_pod, first_text) = &cases[0];
    eventually(
        "the explain webhook is called",
        Duration::from_secs(20),
        || async {
            let (stderr, ok) = kubectl_dry_run(&ns, first_pod);
            (ok && stderr.contains(first_text)).then_some(())
        },
    )
    .await;
    let _ = first_reason;
    for (reason, pod, text) in &cases {
        let (stderr, ok) = kubectl_dry_run(&ns, pod);
        assert!(ok, "{reason}: {stderr}");
        assert!(
            stderr.contains("Warning:") && stderr.contains(text),
            "{reason}: {text} not in {stderr}"
        );
    }
    // A labelled pod whose ServiceAccount does not exist: refused, saying which (the API
    // server's ServiceAccount admission answers before any webhook; wif's own refusal, counted
    // as refused/service_account_missing, is for API servers without that plugin).
    let (stderr, ok) = kubectl_dry_run(&ns, &pod("ghost", "ghost", json!({USE_LABEL: "true"}), json!({})));
    assert!(!ok && stderr.contains("ghost"), "{stderr}");

    let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", hook.admin_port))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |result: &str, reason: &str| {
        wif_e2e::controller::metric_sum(
            &text,
            "wif_admission_total",
            &[("result", result), ("reason", reason)],
        )
    };
    assert!(count("skipped", "label_value") >= 2.0, "{text}");
    for reason in ["label_on_service_account", "client_id_on_pod", "misspelt_key"] {
        assert!(count("skipped", reason) >= 1.0, "{reason}:\n{text}");
    }
    // Labelled pods are counted too (the probe pods the harness sends).
    assert!(
        wif_e2e::controller::metric_sum(&text, "wif_admission_total", &[("result", "mutated")]) >= 1.0,
        "{text}"
    );
}
