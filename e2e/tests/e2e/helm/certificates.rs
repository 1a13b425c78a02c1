//! The chart's other certificate modes: cert-manager (with a ServiceMonitor) and an existing
//! Secret.

use super::*;

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn cert_manager_mode_with_service_monitor_installs_and_uninstalls() {
    let release_ns = TestNs::new("helm-cm").await;
    ensure_stub_crds(&release_ns);
    let release = Release::install(
        &release_ns,
        "e2e-nothing",
        &[
            &tenant(),
            CONTROLLER,
            "certs.mode=certManager",
            "metrics.serviceMonitor.enabled=true",
        ],
        &[],
    );
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
        "certificate.cert-manager.io/",
        "issuer.cert-manager.io/",
        "servicemonitor.monitoring.coreos.com/",
    ] {
        assert!(live.iter().any(|l| l.starts_with(kind)), "no {kind} in {live:?}");
    }
    release.uninstall();
    assert!(release.live(&release_ns, &manifest).is_empty());
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn existing_secret_mode_serves_the_operators_certificate() {
    let release_ns = TestNs::new("helm-es").await;
    let app = TestNs::new("helm-es-app").await;
    // The operator's certificate, in a Secret the chart mounts, and its CA as the caBundle.
    let (ca, leaf) = wif_e2e::webhook::localhost_pki("operator-ca", Duration::from_secs(86400));
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    kubectl(
        &release_ns,
        &[
            "-n",
            &release_ns.name,
            "create",
            "secret",
            "tls",
            "operator-tls",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let release = Release::install(
        &release_ns,
        &app.name,
        &[
            &format!("azure.tenantId={OTHER_TENANT}"),
            "certs.mode=existingSecret",
            "certs.existingSecret.name=operator-tls",
            "controller.enabled=false",
        ],
        &[
            "--set-file",
            &format!("certs.existingSecret.caBundle={}", ca_file.display()),
        ],
    );
    let objs = wif_e2e::helm::objects(&release.manifest());
    assert!(!kinds(&objs).iter().any(|k| k.contains("controller")));
    let hook = LocalComponent::start(
        &release_ns,
        &release.webhook(),
        &[],
        Some((cert.to_str().unwrap(), key.to_str().unwrap())),
    )
    .await;
    // Point the configuration, whose caBundle is the operator's CA, at the local process.
    release.upgrade(
        &app.name,
        &[&format!("webhook.urlOverride=https://127.0.0.1:{}", hook.port)],
    );
    app.service_account("api", &[("azure.workload.identity/client-id", CLIENT)])
        .await;
    wait_until_called(&app).await;
    let pod = app
        .api::<Pod>()
        .create(&PostParams::default(), &labelled("web", "api"))
        .await
        .unwrap();
    for c in pod.spec.as_ref().unwrap().containers.iter() {
        assert_injected(c, OTHER_TENANT);
    }
}
