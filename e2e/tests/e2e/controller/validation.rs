//! The webhook's validating endpoint for bindings: ungranted namespaces are refused at apply,
//! and the controller re-checks grants.

use super::*;

struct ValidatingConfig {
    name: String,
    kubeconfig: std::path::PathBuf,
}

impl Drop for ValidatingConfig {
    fn drop(&mut self) {
        wif_e2e::cluster::delete_quietly(&self.kubeconfig, "validatingwebhookconfiguration", &self.name);
    }
}

/// Registers the webhook's validating endpoint for bindings in `ns` (as the Helm chart does).
async fn register_validation(ns: &TestNs, hook: &WebhookProcess) -> ValidatingConfig {
    let name = format!("wif-e2e-validate-{}", ns.name);
    let config = ValidatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![ValidatingWebhook {
            name: "bindings.wif.azure.workload.identity".into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                url: Some(format!(
                    "https://127.0.0.1:{}{}",
                    hook.port,
                    wif_api::VALIDATE_BINDING_PATH
                )),
                ca_bundle: Some(ByteString(hook.ca_pem.as_bytes().to_vec())),
                service: None,
            },
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec!["azure.workload.identity".into()]),
                api_versions: Some(vec!["v1alpha1".into()]),
                operations: Some(vec!["CREATE".into(), "UPDATE".into()]),
                resources: Some(vec!["federatedidentitybindings".into()]),
                scope: Some("Namespaced".into()),
            }]),
            failure_policy: Some("Fail".into()),
            side_effects: "None".into(),
            timeout_seconds: Some(10),
            namespace_selector: Some(LabelSelector {
                match_labels: Some([("kubernetes.io/metadata.name".to_owned(), ns.name.clone())].into()),
                ..LabelSelector::default()
            }),
            ..ValidatingWebhook::default()
        }]),
    };
    Api::<ValidatingWebhookConfiguration>::all(ns.client.clone())
        .create(&PostParams::default(), &config)
        .await
        .expect("create validating configuration");
    ValidatingConfig {
        name,
        kubeconfig: ns.cp.kubeconfig.clone(),
    }
}

/// Ungranted namespace → refused at apply by the webhook, never written; granted → Ready;
/// revoked → the controller re-checks: Permitted=False and the credential removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn ungranted_bindings_are_refused_at_apply_and_rechecked() {
    let s = setup("ctl-deny", tenant(json!([])), json!({})).await;
    s.ns.service_account("api", &[]).await;
    let hook = WebhookProcess::start(&s.ns, WebhookOptions::default()).await;
    let _validation = register_validation(&s.ns, &hook).await;
    let ctl = ControllerProcess::start(&s.ns, &s.env, &ControllerOptions::default()).await;
    let b = binding("api", "api", app(APP_A), json!({}));
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };

    let message = eventually("the validating webhook to refuse", T, || async {
        match s.bindings().create(&dry, &b).await {
            Err(kube::Error::Api(e)) => Some(e.message),
            _ => None,
        }
    })
    .await;
    assert!(
        message.contains("no FederatedIdentityPolicy grants application"),
        "{message}"
    );
    assert!(message.contains(&s.ns.name), "{message}");
    let err = s.bindings().create(&PostParams::default(), &b).await.unwrap_err();
    assert!(
        err.to_string().contains("no FederatedIdentityPolicy grants"),
        "{err}"
    );
    assert!(s.bindings().get_opt("api").await.unwrap().is_none());
    assert!(s.env.app_credentials(APP_A).await.is_empty(), "never written");

    let policy = PolicyGuard::grant(&s.ns, "", &[APP_A], &[]).await;
    eventually("the webhook to see the policy", T, || async {
        s.bindings().create(&PostParams::default(), &b).await.ok()
    })
    .await;
    wait_binding(&s.ns, "api", T, || ctl.logs(), is_ready).await;
    assert_eq!(s.env.app_credentials(APP_A).await.len(), 1);

    // Revoked: the controller does not trust the webhook's past decision.
    policy.revoke(&s.ns).await;
    let b = wait_binding(
        &s.ns,
        "api",
        T,
        || ctl.logs(),
        |b| condition(b, "Permitted").is_some_and(|c| c.0 == "False" && c.1 == "NotPermitted"),
    )
    .await;
    assert!(
        condition(&b, "Permitted")
            .unwrap()
            .2
            .contains("no FederatedIdentityPolicy grants")
    );
    eventually("the credential to be revoked", T, || async {
        s.env.app_credentials(APP_A).await.is_empty().then_some(())
    })
    .await;
    assert!(
        s.event_reasons("api", &["CredentialRevoked"])
            .await
            .iter()
            .any(|r| r == "CredentialRevoked")
    );
}
