//! The chart's RBAC is enough for the controller to make a binding Ready.

use super::*;

/// The controller, run with the chart's arguments and authenticated as the chart's controller
/// ServiceAccount, turns a binding into a federated credential: the chart's RBAC is enough
/// (leader Lease, issuer discovery, bindings, status, ServiceAccount annotations, Events).
#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn chart_rbac_lets_the_controller_make_a_binding_ready() {
    const CONTROLLER_APP: &str = "3c9e1f4a-7b2d-4e8f-9a6c-1d5b7e3f2a90";
    let release_ns = TestNs::new("helm-ctl").await;
    let app = TestNs::new("helm-ctl-app").await;
    let name = release_name();
    // Entra: the controller's application trusts the chart's controller ServiceAccount; the
    // workload's application has no credential yet.
    let entra = wif_e2e::entra::Entra::start(
        &release_ns,
        serde_json::json!({"tenants": [{"id": TENANT, "applications": [
            {"displayName": "wif-controller", "appId": CONTROLLER_APP, "federatedIdentityCredentials": [{
                "name": "wif-controller", "issuer": release_ns.cp.issuer,
                "subject": format!("system:serviceaccount:{}:{name}-controller", release_ns.name),
                "audiences": ["api://AzureADTokenExchange"]}]},
            {"displayName": "workload", "appId": CLIENT}]}]}),
    )
    .await;
    let release = Release::install_named(
        &name,
        &release_ns,
        &app.name,
        &[
            &tenant(),
            &format!("controller.clientId={CONTROLLER_APP}"),
            &format!("controller.graphUrl={}", entra.handle.graph_url()),
            &format!("controller.authorityHost={}", entra.handle.authority_host()),
        ],
        &[],
    );
    // What the kubelet would project into the controller pod, and the emulator's CA.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = wif_e2e::entra::service_account_token(
        &release_ns,
        &format!("{name}-controller"),
        Duration::from_secs(3600),
    )
    .await;
    std::fs::write(&token_file, token).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, entra.handle.ca_pem()).unwrap();
    let controller = LocalComponent::start(
        &release_ns,
        &format!("{name}-controller"),
        &[
            &format!("--token-file={}", token_file.display()),
            &format!("--trust-ca={}", ca_file.display()),
            // Only this test's bindings: the control plane is shared.
            &format!("--watch-namespace={}", app.name),
            "--readback-interval=200ms",
        ],
        None,
    )
    .await;

    app.service_account("api", &[]).await;
    let policy = format!("e2e-{}", app.name);
    kubectl_stdin(
        &app,
        &["apply", "-f", "-"],
        &serde_json::json!({
            "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityPolicy",
            "metadata": {"name": policy},
            "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": app.name}},
                     "applications": [CLIENT]}})
        .to_string(),
    );
    kubectl_stdin(
        &app,
        &["apply", "-n", &app.name, "-f", "-"],
        &serde_json::json!({
            "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityBinding",
            "metadata": {"name": "api"},
            "spec": {"serviceAccountName": "api", "identity": {"application": {"clientId": CLIENT}}}})
        .to_string(),
    );
    let binding = |output: &str| {
        kubectl(
            &app,
            &[
                "get",
                "-n",
                &app.name,
                "federatedidentitybinding",
                "api",
                "-o",
                output,
            ],
        )
    };
    let binding_yaml = || binding("yaml");
    let ready = || binding(r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#) == "True";
    assert!(
        within_30s(ready).await,
        "binding not Ready:\n{}\n{}",
        binding_yaml(),
        controller.logs()
    );
    let sa = kubectl(
        &app,
        &[
            "get",
            "-n",
            &app.name,
            "serviceaccount",
            "api",
            "-o",
            "jsonpath={.metadata.annotations}",
        ],
    );
    assert!(sa.contains(CLIENT), "ServiceAccount not annotated: {sa}");
    let holder = kubectl(
        &release_ns,
        &[
            "get",
            "-n",
            &release_ns.name,
            "lease",
            &format!("{name}-controller"),
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    assert!(!holder.is_empty(), "no leader");

    // Deleting the binding runs the controller's finalizer (credential deleted) before it goes.
    kubectl(
        &app,
        &[
            "delete",
            "-n",
            &app.name,
            "federatedidentitybinding",
            "api",
            "--wait=false",
        ],
    );
    let gone = || {
        kubectl(
            &app,
            &["get", "-n", &app.name, "federatedidentitybindings", "-o", "name"],
        )
        .trim()
        .is_empty()
    };
    assert!(
        within_30s(gone).await,
        "the controller did not release the deleted binding:\n{}\n{}",
        binding_yaml(),
        controller.logs()
    );
    kubectl(&app, &["delete", "federatedidentitypolicy", &policy]);
    drop(controller);
    release.uninstall();
}

/// Whether `done` holds within 30 seconds (asked every 100 ms).
async fn within_30s(done: impl Fn() -> bool) -> bool {
    for _ in 0..300 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
