//! The whole mission, from binding to an access token for a pod of the bound ServiceAccount.

use super::*;

/// The whole mission: a binding makes Entra trust the ServiceAccount (verified by a real
/// exchange), the controller annotates it, the webhook mutates a pod of it, and `wif token` run
/// with that pod's environment and the token the kubelet would write gets an access token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn a_pod_of_a_bound_service_account_gets_an_access_token() {
    // A propagation delay: the first exchanges fail (AADSTS70021-style) until Entra catches up.
    let s = setup(
        "ctl-mission",
        tenant(json!([])),
        json!({"propagationDelayMs": 1500}),
    )
    .await;
    let _policy = PolicyGuard::grant(&s.ns, "", &[APP_A], &[]).await;
    s.ns.service_account("api", &[]).await;
    let hook = WebhookProcess::start(
        &s.ns,
        WebhookOptions {
            tenant_id: TENANT.into(),
            cloud: s.env.entra.authority_host(),
            ..WebhookOptions::default()
        },
    )
    .await;
    let ctl = ControllerProcess::start(
        &s.ns,
        &s.env,
        &ControllerOptions {
            verify: true,
            ..ControllerOptions::default()
        },
    )
    .await;
    s.create(binding("api", "api", app(APP_A), json!({}))).await;
    let b = wait_binding(&s.ns, "api", T, || ctl.logs(), is_ready).await;
    assert_eq!(condition(&b, "Propagated").unwrap().1, "Verified");

    // The developer's pod: only the label; the client id comes from the controller's annotation.
    let pod =
        s.ns.api::<Pod>()
            .create(&PostParams::default(), &labelled("web", "api"))
            .await
            .unwrap();
    let container = &pod.spec.as_ref().unwrap().containers[0];
    assert_eq!(env(container, "AZURE_CLIENT_ID"), vec![APP_A.to_owned()]);
    assert_eq!(env(container, "AZURE_TENANT_ID"), vec![TENANT.to_owned()]);
    assert_eq!(
        env(container, "AZURE_AUTHORITY_HOST"),
        vec![s.env.entra.authority_host()]
    );
    let projection = pod
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == wif_api::TOKEN_VOLUME_NAME)
        .and_then(|v| v.projected.as_ref())
        .and_then(|p| p.sources.as_ref())
        .and_then(|s| s[0].service_account_token.clone())
        .unwrap();

    // What the kubelet writes into the projected volume.
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: projection.audience.clone().map(|a| vec![a]),
            expiration_seconds: projection.expiration_seconds,
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..TokenRequest::default()
    };
    let token =
        s.ns.api::<ServiceAccount>()
            .create_token_request("api", &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .and_then(|st| st.token)
            .unwrap();
    let token_file = s.env.dir.path().join("pod-token");
    std::fs::write(&token_file, token).unwrap();

    let mut cmd = std::process::Command::new(wif_bin());
    cmd.args(["token", "--scope", "https://graph.microsoft.com/.default"]);
    for var in ["AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_AUTHORITY_HOST"] {
        cmd.env(var, env(container, var).remove(0));
    }
    let out = cmd
        .env("AZURE_FEDERATED_TOKEN_FILE", &token_file)
        .env("SSL_CERT_FILE", &s.env.ca_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "wif token failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        hook.logs()
    );
    let access = String::from_utf8(out.stdout).unwrap();
    let c = claims(access.trim());
    assert_eq!(c["appid"], APP_A);
    assert_eq!(c["tid"], TENANT);
    assert_eq!(c["aud"], "https://graph.microsoft.com");
    let verifications = ctl.metric("wif_controller_propagation_checks_total", &[]).await;
    assert!(
        verifications >= 1.0,
        "the controller verified the exchange itself"
    );
    let _ = pod.name_any();
}
