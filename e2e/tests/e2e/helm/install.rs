//! Install, upgrade and uninstall through the API server; the chart's webhook mutates pods.

use super::*;

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn install_upgrade_and_uninstall_through_the_api_server_and_the_chart_webhook_mutates_pods() {
    let release_ns = TestNs::new("helm").await;
    let app = TestNs::new("helm-app").await;
    let release = Release::install(&release_ns, &app.name, &[&tenant(), CONTROLLER], &[]);

    // Every object of the release was accepted and is there; so are the CRDs.
    let manifest = release.manifest();
    let rendered = wif_e2e::helm::objects(&manifest);
    let live = release.live(&release_ns, &manifest);
    assert_eq!(
        live.len(),
        rendered.len(),
        "live {live:?}\nrendered {:?}",
        kinds(&rendered)
    );
    for kind in [
        "deployment.apps/",
        "mutatingwebhookconfiguration.",
        "validatingwebhookconfiguration.",
        "secret/",
        "poddisruptionbudget.policy/",
    ] {
        assert!(live.iter().any(|l| l.starts_with(kind)), "no {kind} in {live:?}");
    }
    let crds = crd_names();
    for crd in &crds {
        kubectl(&release_ns, &["get", "crd", crd]);
    }

    // The chart's webhook, run with the Deployment's arguments and the chart's RBAC: it fills
    // the chart's Secret and publishes the caBundle in the chart's configuration.
    let hook = LocalComponent::start(
        &release_ns,
        &release.webhook(),
        &["--cert-extra-hosts=127.0.0.1"],
        None,
    )
    .await;
    let ca_bundle = wait_for_ca_bundle(&release_ns, &release.webhook()).await;
    let secret = release_ns
        .api::<Secret>()
        .get(&format!("{}-tls", release.webhook()))
        .await
        .unwrap();
    assert!(secret.data.unwrap_or_default().contains_key("tls.crt"));

    // `wif doctor` on the chart's configuration as installed (behind its Service): no webhook
    // pod can be ready here, and it says so, and what the API server answers.
    app.service_account("api", &[("azure.workload.identity/client-id", CLIENT)])
        .await;
    let kubeconfig = app.cp.kubeconfig.clone();
    let doctor_args = [
        "doctor",
        "-n",
        app.name.as_str(),
        "--service-account",
        "api",
        "--webhook-config",
    ]
    .map(str::to_owned);
    let config_name = release.webhook();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(wif_bin())
            .args(doctor_args)
            .arg(config_name)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("✗ caBundle: no ready endpoint behind Service"),
        "{report}"
    );
    assert!(report.contains("✗ API server calls the webhook"), "{report}");

    // Upgrade with changed values, pointing the configuration at the local webhook: the caBundle
    // the webhook wrote survives Helm's three-way merge.
    release.upgrade(
        &app.name,
        &[
            "webhook.replicas=3",
            "logLevel=debug",
            &format!("webhook.urlOverride=https://127.0.0.1:{}", hook.port),
        ],
    );
    let deploy = release_ns
        .api::<Deployment>()
        .get(&release.webhook())
        .await
        .unwrap();
    assert_eq!(deploy.spec.as_ref().unwrap().replicas, Some(3));
    let args = container_args(&serde_json::to_value(&deploy).unwrap());
    assert!(args.contains(&"--log-level=debug".to_owned()), "{args:?}");
    let cfg = Api::<MutatingWebhookConfiguration>::all(app.client.clone())
        .get(&release.webhook())
        .await
        .unwrap();
    let client_config = &cfg.webhooks.unwrap()[0].client_config;
    assert_eq!(
        client_config.url.as_deref(),
        Some(format!("https://127.0.0.1:{}/mutate-v1-pod", hook.port).as_str())
    );
    assert_eq!(
        client_config.ca_bundle.as_ref().map(|b| b.0.clone()),
        Some(ca_bundle.clone())
    );

    // Through the API server, the chart's configuration mutates a labelled pod.
    wait_until_called(&app).await;
    let pod = app
        .api::<Pod>()
        .create(&PostParams::default(), &labelled("web", "api"))
        .await
        .unwrap();
    for c in pod.spec.as_ref().unwrap().containers.iter() {
        assert_injected(c, TENANT);
    }

    // The chart's ValidatingWebhookConfiguration got the same caBundle and refuses, at apply,
    // a binding no policy grants (objects labelled for this release only: the plane is shared).
    let vwc = Api::<ValidatingWebhookConfiguration>::all(app.client.clone())
        .get(&release.webhook())
        .await
        .unwrap();
    for w in vwc.webhooks.unwrap() {
        assert_eq!(
            w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()),
            Some(ca_bundle.clone()),
            "{}",
            w.name
        );
    }
    let binding = serde_json::json!({
        "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityBinding",
        "metadata": {"name": "api", "labels": {"wif-e2e/release": release_ns.name}},
        "spec": {"serviceAccountName": "api", "identity": {"application": {"clientId": CLIENT}}}});
    let mut refused = String::new();
    for _ in 0..50 {
        let out = app
            .cp
            .kubectl_stdin(&["apply", "-n", &app.name, "-f", "-"], &binding.to_string());
        assert!(!out.status.success(), "an ungranted binding was accepted");
        refused = String::from_utf8_lossy(&out.stderr).into_owned();
        if refused.contains("denied the request") {
            break;
        }
        // The API server's webhook cache may not have the new url yet.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        refused.contains("no FederatedIdentityPolicy grants"),
        "not refused by the chart's validating webhook: {refused}"
    );
    drop(hook);

    // Uninstall removes every object of the release, the self-managed Secret included, and
    // leaves the CRDs.
    release.uninstall();
    let left = release.live(&release_ns, &manifest);
    assert!(left.is_empty(), "left behind: {left:?}");
    for crd in &crds {
        kubectl(&release_ns, &["get", "crd", crd]);
    }
}
