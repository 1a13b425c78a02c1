//! The controller end to end: `wif controller` processes against the real API server and the
//! emulator standing in for Graph, ARM and Entra's token endpoint.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    ByteString,
    api::{
        admissionregistration::v1::{
            RuleWithOperations, ValidatingWebhook, ValidatingWebhookConfiguration, WebhookClientConfig,
        },
        authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
        core::v1::{Pod, ServiceAccount},
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams},
};
use rand::{Rng, SeedableRng};
use reqwest::Method;
use serde_json::{Value, json};
use wif_api::FederatedIdentityBinding;
use wif_controller::naming;
use wif_e2e::{
    TestNs, WebhookOptions, WebhookProcess,
    controller::{
        ControllerEnv, ControllerOptions, ControllerProcess, PolicyGuard, SUBSCRIPTION, TENANT, binding,
        cluster_id, condition, eventually, identity_id, is_ready, wait_binding,
    },
    entra::claims,
    wif_bin,
};

use crate::webhook::{env, labelled};

const APP_A: &str = "5e3ce6c0-2b1f-4285-8d4b-75ee78787346";
const APP_B: &str = "6f4df7d1-3c2f-4396-9e5c-86ff89898457";
const AUD: &str = "api://AzureADTokenExchange";
const T: Duration = Duration::from_secs(60);

fn tenant(extra_identities: Value) -> Value {
    let mut identities =
        vec![json!({"subscriptionId": SUBSCRIPTION, "resourceGroup": "e2e", "name": "api-identity"})];
    identities.extend(extra_identities.as_array().cloned().unwrap_or_default());
    json!({
        "applications": [
            {"displayName": "api", "appId": APP_A},
            {"displayName": "batch", "appId": APP_B},
        ],
        "userAssignedIdentities": identities,
    })
}

struct Setup {
    ns: TestNs,
    env: ControllerEnv,
}

async fn setup(prefix: &str, tenant: Value, settings: Value) -> Setup {
    let ns = TestNs::new(prefix).await;
    let env = ControllerEnv::start(&ns, tenant, settings).await;
    Setup { ns, env }
}

impl Setup {
    fn bindings(&self) -> Api<FederatedIdentityBinding> {
        self.ns.api()
    }

    async fn create(&self, b: FederatedIdentityBinding) -> FederatedIdentityBinding {
        self.bindings()
            .create(&PostParams::default(), &b)
            .await
            .expect("create binding")
    }

    async fn patch_spec(&self, name: &str, spec: Value) {
        self.bindings()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": spec})),
            )
            .await
            .expect("patch binding");
    }

    async fn annotations(&self, sa: &str) -> BTreeMap<String, String> {
        self.ns
            .api::<ServiceAccount>()
            .get(sa)
            .await
            .unwrap()
            .metadata
            .annotations
            .unwrap_or_default()
    }

    fn default_name(&self, binding: &str) -> String {
        naming::default_credential_name(&cluster_id(&self.ns), &self.ns.name, binding)
    }

    fn subject(&self, sa: &str) -> String {
        format!("system:serviceaccount:{}:{sa}", self.ns.name)
    }

    /// Event reasons recorded for a binding.
    /// Reasons of the Events about `binding`, once each of `want` is among them or after 30 s:
    /// an Event is recorded after the status it explains, so a test that saw the status polls.
    async fn event_reasons(&self, binding: &str, want: &[&str]) -> Vec<String> {
        let events: Api<k8s_openapi::api::events::v1::Event> = self.ns.api();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let reasons: Vec<String> = events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(binding))
                .filter_map(|e| e.reason)
                .collect();
            if want.iter().all(|w| reasons.iter().any(|r| r == w)) || std::time::Instant::now() > deadline {
                return reasons;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn app(client_id: &str) -> Value {
    json!({"application": {"clientId": client_id}})
}

fn uami(name: &str) -> Value {
    json!({"userAssignedIdentity": {"resourceId": identity_id(name)}})
}

/// create → exact credential, SA annotated, Ready; audience change → in place; out-of-band
/// delete → recreated; out-of-band edit → corrected; delete → gone, finalizer and annotations
/// removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_binding_lifecycle_and_drift() {
    let s = setup("ctl-app", tenant(json!([])), json!({})).await;
    let _policy = PolicyGuard::grant(&s.ns, "", &[APP_A], &[]).await;
    s.ns.service_account("api", &[]).await;
    let ctl = ControllerProcess::start(&s.ns, &s.env, &ControllerOptions::default()).await;
    let logs = || ctl.logs();

    s.create(binding("api", "api", app(APP_A), json!({}))).await;
    let b = wait_binding(&s.ns, "api", T, logs, is_ready).await;

    let creds = s.env.app_credentials(APP_A).await;
    assert_eq!(creds.len(), 1, "{creds:#?}");
    let c = &creds[0];
    assert_eq!(
        c["issuer"],
        s.ns.cp.issuer.as_str(),
        "issuer byte for byte as discovered"
    );
    assert_eq!(c["subject"], s.subject("api").as_str());
    assert_eq!(c["audiences"], json!([AUD]));
    assert_eq!(c["name"], s.default_name("api").as_str());
    assert!(c["description"].as_str().unwrap().contains(&naming::marker(
        &cluster_id(&s.ns),
        &s.ns.name,
        "api"
    )));
    let status = b.status.clone().unwrap();
    assert_eq!(status.client_id.as_deref(), Some(APP_A));
    assert_eq!(status.tenant_id.as_deref(), Some(TENANT));
    let recorded = status.credential.unwrap();
    assert_eq!(recorded.id, c["id"].as_str().unwrap());
    assert_eq!(recorded.issuer, s.ns.cp.issuer);
    for kind in [
        "Permitted",
        "IdentityResolved",
        "CredentialSynced",
        "ServiceAccountReady",
        "Propagated",
    ] {
        assert_eq!(condition(&b, kind).unwrap().0, "True", "{kind}");
    }
    let annotations = s.annotations("api").await;
    assert_eq!(
        annotations.get(wif_api::CLIENT_ID_ANNOTATION).map(String::as_str),
        Some(APP_A)
    );
    assert_eq!(
        annotations.get(wif_api::TENANT_ID_ANNOTATION).map(String::as_str),
        Some(TENANT)
    );
    let first_id = c["id"].as_str().unwrap().to_owned();

    // Audience changed → the same credential, updated in place.
    s.patch_spec("api", json!({"audience": "api://custom-audience"}))
        .await;
    wait_binding(&s.ns, "api", T, logs, |b| {
        is_ready(b)
            && b.status
                .as_ref()
                .and_then(|s| s.credential.as_ref())
                .map(|c| c.audiences.clone())
                == Some(vec!["api://custom-audience".to_owned()])
    })
    .await;
    let creds = s.env.app_credentials(APP_A).await;
    assert_eq!(creds.len(), 1);
    assert_eq!(creds[0]["id"], first_id.as_str(), "updated in place");
    assert_eq!(creds[0]["audiences"], json!(["api://custom-audience"]));

    // Deleted out of band → recreated on the next resync.
    let oid = s.env.app_object_id(APP_A).await;
    let (status, _) = s
        .env
        .out_of_band(
            Method::DELETE,
            &format!("/graph/v1.0/applications/{oid}/federatedIdentityCredentials/{first_id}"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let recreated = eventually("the credential to be recreated", T, || async {
        let creds = s.env.app_credentials(APP_A).await;
        (creds.len() == 1 && creds[0]["id"] != first_id.as_str()).then(|| creds[0].clone())
    })
    .await;
    assert_eq!(recreated["subject"], s.subject("api").as_str());

    // Edited out of band → corrected.
    let id = recreated["id"].as_str().unwrap();
    let (status, _) = s
        .env
        .out_of_band(
            Method::PATCH,
            &format!("/graph/v1.0/applications/{oid}/federatedIdentityCredentials/{id}"),
            Some(json!({"subject": "system:serviceaccount:elsewhere:intruder"})),
        )
        .await;
    assert_eq!(status, 204);
    eventually("the edit to be corrected", T, || async {
        let creds = s.env.app_credentials(APP_A).await;
        (creds.len() == 1 && creds[0]["subject"] == s.subject("api").as_str() && creds[0]["id"] == id)
            .then_some(())
    })
    .await;

    let wanted = [
        "CredentialCreated",
        "CredentialUpdated",
        "ServiceAccountAnnotated",
    ];
    let reasons = s.event_reasons("api", &wanted).await;
    for want in wanted {
        assert!(
            reasons.iter().any(|r| r == want),
            "no {want} Event in {reasons:?}"
        );
    }

    // Deleted → credential gone, finalizer removed, annotations removed.
    s.bindings()
        .delete("api", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the binding to be gone", T, || async {
        s.bindings().get_opt("api").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        s.env.app_credentials(APP_A).await.is_empty(),
        "credential deleted"
    );
    let annotations = s.annotations("api").await;
    assert!(
        !annotations.contains_key(wif_api::CLIENT_ID_ANNOTATION),
        "{annotations:?}"
    );
    assert!(!ctl.logs().contains("panicked"));
}

/// A managed identity through ARM; `deletionPolicy: Orphan` leaves the credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_binding_and_orphan_policy() {
    let s = setup("ctl-mi", tenant(json!([])), json!({})).await;
    let _policy = PolicyGuard::grant(&s.ns, "", &[], &[&identity_id("api-identity")]).await;
    s.ns.service_account("worker", &[]).await;
    let ctl = ControllerProcess::start(&s.ns, &s.env, &ControllerOptions::default()).await;
    let logs = || ctl.logs();

    s.create(binding("mi", "worker", uami("api-identity"), json!({})))
        .await;
    let b = wait_binding(&s.ns, "mi", T, logs, is_ready).await;
    let creds = s.env.identity_credentials("api-identity").await;
    assert_eq!(creds.len(), 1);
    assert_eq!(
        creds[0]["name"],
        s.default_name("mi").as_str(),
        "deterministic name on ARM"
    );
    assert_eq!(creds[0]["issuer"], s.ns.cp.issuer.as_str());
    assert_eq!(creds[0]["subject"], s.subject("worker").as_str());
    let state = s.env.state().await;
    let identity_client = state["tenants"][0]["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "api-identity")
        .unwrap()["clientId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        b.status.unwrap().client_id.as_deref(),
        Some(identity_client.as_str())
    );
    assert_eq!(
        s.annotations("worker").await.get(wif_api::CLIENT_ID_ANNOTATION),
        Some(&identity_client)
    );

    s.patch_spec("mi", json!({"deletionPolicy": "Orphan"})).await;
    wait_binding(&s.ns, "mi", T, logs, is_ready).await;
    s.bindings().delete("mi", &DeleteParams::default()).await.unwrap();
    eventually("the binding to be gone", T, || async {
        s.bindings().get_opt("mi").await.unwrap().is_none().then_some(())
    })
    .await;
    let creds = s.env.identity_credentials("api-identity").await;
    assert_eq!(creds.len(), 1, "Orphan leaves the credential");
    assert!(
        s.event_reasons("mi", &["CredentialOrphaned"])
            .await
            .iter()
            .any(|r| r == "CredentialOrphaned")
    );
}

/// A foreign credential with our issuer+subject → Conflict, untouched; the 21st credential on an
/// identity → CapacityExceeded, nothing evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_and_capacity_are_conditions() {
    let ns = TestNs::new("ctl-conflict").await;
    let subject = format!("system:serviceaccount:{}:api", ns.name);
    let fillers: Vec<Value> = (0..19)
        .map(|i| json!({"name": format!("other-{i}"), "issuer": "https://elsewhere.example", "subject": format!("sa-{i}")}))
        .collect();
    let tenant = json!({
        "applications": [{"displayName": "api", "appId": APP_A, "federatedIdentityCredentials": [
            {"name": "hand-made", "issuer": ns.cp.issuer, "subject": subject, "description": "made by hand"}]}],
        "userAssignedIdentities": [{"subscriptionId": SUBSCRIPTION, "resourceGroup": "e2e", "name": "busy",
            "federatedIdentityCredentials": fillers}],
    });
    let env = ControllerEnv::start(&ns, tenant, json!({})).await;
    let s = Setup { ns, env };
    let _policy = PolicyGuard::grant(&s.ns, "", &[APP_A], &[&identity_id("busy")]).await;
    s.ns.service_account("api", &[]).await;
    s.ns.service_account("second", &[]).await;
    s.ns.service_account("third", &[]).await;
    let ctl = ControllerProcess::start(&s.ns, &s.env, &ControllerOptions::default()).await;
    let logs = || ctl.logs();
    let before = s.env.app_credentials(APP_A).await;

    s.create(binding("conflict", "api", app(APP_A), json!({}))).await;
    let b = wait_binding(&s.ns, "conflict", T, logs, |b| {
        condition(b, "CredentialSynced").is_some_and(|c| c.0 == "False" && c.1 == "Conflict")
    })
    .await;
    let (_, reason, message) = condition(&b, "Ready").unwrap();
    assert_eq!(reason, "Conflict");
    assert!(
        message.contains("hand-made") && message.contains("untouched"),
        "{message}"
    );
    assert_eq!(
        s.env.app_credentials(APP_A).await,
        before,
        "the foreign credential is untouched"
    );

    // 19 foreign credentials: the 20th is ours, the 21st is refused.
    s.create(binding("twentieth", "third", uami("busy"), json!({})))
        .await;
    wait_binding(&s.ns, "twentieth", T, logs, is_ready).await;
    s.create(binding("twenty-first", "second", uami("busy"), json!({})))
        .await;
    let b = wait_binding(&s.ns, "twenty-first", T, logs, |b| {
        condition(b, "CredentialSynced").is_some_and(|c| c.0 == "False" && c.1 == "CapacityExceeded")
    })
    .await;
    assert!(
        condition(&b, "Ready").unwrap().2.contains("20 of its 20"),
        "{:?}",
        condition(&b, "Ready")
    );
    let creds = s.env.identity_credentials("busy").await;
    assert_eq!(creds.len(), 20);
    assert_eq!(
        creds
            .iter()
            .filter(|c| c["name"].as_str().unwrap().starts_with("other-"))
            .count(),
        19
    );
    let reasons = s.event_reasons("twenty-first", &["CapacityExceeded"]).await;
    assert!(reasons.iter().any(|r| r == "CapacityExceeded"), "{reasons:?}");
    // Still there after a few resyncs: no write, no eviction.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(s.env.identity_credentials("busy").await.len(), 20);
    assert_eq!(s.env.app_credentials(APP_A).await, before);
}

/// Bad input is a condition with a reason and a fix-it message, an Event, and backoff — the
/// controller keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_not_crashed_on() {
    let s = setup("ctl-bad", tenant(json!([])), json!({})).await;
    let _policy = PolicyGuard::grant(&s.ns, "", &["*"], &["*"]).await;
    s.ns.service_account("api", &[]).await;
    let mut ctl = ControllerProcess::start(&s.ns, &s.env, &ControllerOptions::default()).await;
    let bad_sub = "/subscriptions/not-a-guid/resourceGroups/e2e/providers/Microsoft.ManagedIdentity/userAssignedIdentities/api-identity";
    let cases = [
        (
            "missing-sa",
            binding("missing-sa", "ghost", app(APP_A), json!({})),
            "ServiceAccountReady",
            "ServiceAccountNotFound",
            "create it",
        ),
        (
            "unknown-app",
            binding(
                "unknown-app",
                "api",
                app("00000000-0000-0000-0000-000000000001"),
                json!({}),
            ),
            "IdentityResolved",
            "ApplicationNotFound",
            "spec.identity.application.clientId",
        ),
        (
            "bad-rid",
            binding(
                "bad-rid",
                "api",
                json!({"userAssignedIdentity": {"resourceId": bad_sub}}),
                json!({}),
            ),
            "IdentityResolved",
            "InvalidResourceId",
            "subscription id is not a GUID",
        ),
        (
            "unknown-mi",
            binding("unknown-mi", "api", uami("no-such-identity"), json!({})),
            "IdentityResolved",
            "IdentityNotFound",
            "does not exist",
        ),
        (
            "other-tenant",
            binding(
                "other-tenant",
                "api",
                json!({"application": {"clientId": APP_B}, "tenantId": "11111111-1111-1111-1111-111111111111"}),
                json!({}),
            ),
            "IdentityResolved",
            "AuthenticationFailed",
            "additionally-allowed-tenants",
        ),
    ];
    for (_, b, ..) in &cases {
        s.create(b.clone()).await;
    }
    for (name, _, kind, reason, hint) in &cases {
        let b = wait_binding(
            &s.ns,
            name,
            T,
            || ctl.logs(),
            |b| condition(b, kind).is_some_and(|c| c.0 == "False" && c.1 == *reason),
        )
        .await;
        let (status, ready_reason, message) = condition(&b, "Ready").unwrap();
        assert_eq!(status, "False", "{name}");
        assert_eq!(ready_reason, *reason, "{name}");
        assert!(message.contains(hint), "{name}: {message}");
        let reasons = s.event_reasons(name, &[*reason]).await;
        assert!(
            reasons.iter().any(|r| r == reason),
            "{name}: no {reason} Event in {reasons:?}"
        );
    }
    // A missing ServiceAccount still gets its credential; creating the SA completes it.
    assert_eq!(s.env.app_credentials(APP_A).await.len(), 1);
    s.ns.service_account("ghost", &[]).await;
    wait_binding(&s.ns, "missing-sa", T, || ctl.logs(), is_ready).await;
    // Nothing was written for the others.
    assert!(s.env.app_credentials(APP_B).await.is_empty());
    assert!(s.env.identity_credentials("api-identity").await.is_empty());

    // Backoff, not a hot loop: few reconciles of the failing bindings over 5 s, and no crash.
    let failing = |text: &str| {
        [
            "ApplicationNotFound",
            "InvalidResourceId",
            "IdentityNotFound",
            "AuthenticationFailed",
        ]
        .iter()
        .map(|r| wif_e2e::controller::metric_sum(text, "wif_controller_reconciles_total", &[("result", r)]))
        .sum::<f64>()
    };
    let before = failing(&ctl.metrics().await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = failing(&ctl.metrics().await);
    // With --backoff-max 3s (jittered down to 1.5 s) each binding is retried about 4 times in
    // 5 s, plus reconciles triggered by its own status and Event writes; a hot loop would be
    // hundreds. The bound leaves room for a slow, loaded machine.
    assert!(
        after - before <= 60.0,
        "4 failing bindings reconciled {} times in 5 s",
        after - before
    );
    assert!(
        !ctl.process.exited(),
        "the controller is still running:\n{}",
        ctl.logs()
    );
    ctl.kill();
}

struct ValidatingConfig {
    name: String,
    kubeconfig: std::path::PathBuf,
}

impl Drop for ValidatingConfig {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "delete",
                "validatingwebhookconfiguration",
                &self.name,
                "--ignore-not-found",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
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

/// Two controllers: only the Lease holder writes; when it dies, the other takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes() {
    let s = setup("ctl-ha", tenant(json!([])), json!({})).await;
    let _policy = PolicyGuard::grant(&s.ns, "", &[APP_A, APP_B], &[]).await;
    for sa in ["a", "b", "c", "d"] {
        s.ns.service_account(sa, &[]).await;
    }
    let one = ControllerOptions {
        identity: "replica-one".into(),
        ..ControllerOptions::default()
    };
    let two = ControllerOptions {
        identity: "replica-two".into(),
        ..ControllerOptions::default()
    };
    let first = ControllerProcess::start(&s.ns, &s.env, &one).await;
    let second = ControllerProcess::start(&s.ns, &s.env, &two).await;
    let leader = eventually("exactly one leader", T, || async {
        let l1 = first.metric("wif_controller_leader", &[]).await as i64;
        let l2 = second.metric("wif_controller_leader", &[]).await as i64;
        match (l1, l2) {
            (1, 0) => Some(0),
            (0, 1) => Some(1),
            _ => None,
        }
    })
    .await;
    let (mut leader_proc, standby_proc) = if leader == 0 {
        (first, second)
    } else {
        (second, first)
    };

    for (name, client) in [("a", APP_A), ("b", APP_A), ("c", APP_B)] {
        s.create(binding(name, name, app(client), json!({}))).await;
    }
    for name in ["a", "b", "c"] {
        wait_binding(&s.ns, name, T, || leader_proc.logs(), is_ready).await;
    }
    assert!(leader_proc.azure_writes().await >= 3.0);
    let standby_metrics = standby_proc.metrics().await;
    assert_eq!(
        wif_e2e::controller::metric_sum(&standby_metrics, "wif_controller_azure_requests_total", &[]),
        0.0,
        "the standby made no Azure request at all:\n{standby_metrics}"
    );

    leader_proc.kill();
    s.create(binding("d", "d", app(APP_B), json!({}))).await;
    wait_binding(&s.ns, "d", T, || standby_proc.logs(), is_ready).await;
    assert_eq!(standby_proc.metric("wif_controller_leader", &[]).await, 1.0);
    assert!(standby_proc.azure_writes().await >= 1.0);
    assert_eq!(s.env.app_credentials(APP_A).await.len(), 2);
    assert_eq!(s.env.app_credentials(APP_B).await.len(), 2);
}

/// The controller is SIGKILLed at random points (while bindings are created, changed and
/// deleted) and restarted; in the end every binding has exactly one credential and no credential
/// outlives its binding. `WIF_E2E_KILLS` sets the number of kills (default 50, about 50 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_at_random_points_and_restarted() {
    let kills: usize = std::env::var("WIF_E2E_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    // Latency makes each reconcile long enough to be cut in the middle.
    let s = setup("ctl-kill", tenant(json!([])), json!({})).await;
    s.env
        .entra
        .admin()
        .set_faults(
            &serde_json::from_value(json!({"graph": {"latencyMs": 60}, "arm": {"latencyMs": 60}})).unwrap(),
        )
        .await
        .unwrap();
    let _policy = PolicyGuard::grant(&s.ns, "", &[APP_A, APP_B], &[&identity_id("api-identity")]).await;
    let names = ["k0", "k1", "k2", "k3", "k4", "k5"];
    let identity_of = |i: usize| match i % 3 {
        0 => app(APP_A),
        1 => app(APP_B),
        _ => uami("api-identity"),
    };
    for name in names {
        s.ns.service_account(name, &[]).await;
    }
    let opts = ControllerOptions::default();
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut present = [false; 6];
    let started = std::time::Instant::now();
    for round in 0..kills {
        // Change something while the controller is down or about to start.
        let i = rng.random_range(0..names.len());
        let existing = s.bindings().get_opt(names[i]).await.unwrap();
        match (existing, rng.random_range(0..3)) {
            (None, _) => {
                s.create(binding(names[i], names[i], identity_of(i), json!({})))
                    .await;
                present[i] = true;
            }
            (Some(b), 0) if b.metadata.deletion_timestamp.is_none() => {
                s.bindings()
                    .delete(names[i], &DeleteParams::default())
                    .await
                    .unwrap();
                present[i] = false;
            }
            (Some(b), _) if b.metadata.deletion_timestamp.is_none() => {
                let aud = format!("api://aud-{round}");
                s.patch_spec(names[i], json!({"audience": aud})).await;
            }
            _ => {}
        }
        let mut ctl = ControllerProcess::spawn(&s.ns, &s.env, &opts);
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        ctl.kill();
    }
    eprintln!("killed the controller {kills} times in {:?}", started.elapsed());

    let ctl = ControllerProcess::start(&s.ns, &s.env, &opts).await;
    for (i, name) in names.iter().enumerate() {
        if present[i] {
            wait_binding(&s.ns, name, T, || ctl.logs(), is_ready).await;
        } else {
            eventually("a deleted binding to be finalized", T, || async {
                s.bindings().get_opt(name).await.unwrap().is_none().then_some(())
            })
            .await;
        }
    }
    // Exactly one credential per live binding, none for deleted ones, nothing else of ours.
    let mut ours = Vec::new();
    for creds in [
        s.env.app_credentials(APP_A).await,
        s.env.app_credentials(APP_B).await,
        s.env.identity_credentials("api-identity").await,
    ] {
        let mut subjects: Vec<&str> = creds.iter().map(|c| c["subject"].as_str().unwrap()).collect();
        subjects.sort_unstable();
        let before = subjects.len();
        subjects.dedup();
        assert_eq!(before, subjects.len(), "duplicated credential: {creds:#?}");
        ours.extend(creds.iter().map(|c| c["name"].as_str().unwrap().to_owned()));
    }
    let mut want: Vec<String> = names
        .iter()
        .enumerate()
        .filter(|(i, _)| present[*i])
        .map(|(_, n)| s.default_name(n))
        .collect();
    want.sort();
    ours.sort();
    assert_eq!(ours, want, "one credential per live binding, no orphans");
    for (i, name) in names.iter().enumerate().filter(|(i, _)| present[*i]) {
        let b = s.bindings().get(name).await.unwrap();
        let aud = b.spec.audience.clone().unwrap_or_else(|| AUD.to_owned());
        let creds = match i % 3 {
            0 => s.env.app_credentials(APP_A).await,
            1 => s.env.app_credentials(APP_B).await,
            _ => s.env.identity_credentials("api-identity").await,
        };
        let c = creds
            .iter()
            .find(|c| c["name"] == s.default_name(name).as_str())
            .unwrap();
        assert_eq!(c["audiences"], json!([aud]), "{name}");
    }
}

/// Injected 429s (with Retry-After) and 5xx on Graph and ARM: everything converges anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_under_throttling_and_server_errors() {
    let s = setup("ctl-faults", tenant(json!([])), json!({})).await;
    s.env
        .entra
        .admin()
        .set_faults(
            &serde_json::from_value(json!({
                "graph": {"throttle": {"probability": 0.3, "retryAfterSeconds": 0.2},
                          "serverError": {"probability": 0.15, "status": 503}},
                "arm": {"throttle": {"probability": 0.3, "retryAfterSeconds": 0.2},
                        "serverError": {"probability": 0.15, "status": 502}},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let _policy = PolicyGuard::grant(&s.ns, "", &[APP_A, APP_B], &[&identity_id("api-identity")]).await;
    let specs = [
        ("f0", app(APP_A)),
        ("f1", app(APP_A)),
        ("f2", app(APP_B)),
        ("f3", uami("api-identity")),
        ("f4", uami("api-identity")),
    ];
    for (name, _) in &specs {
        s.ns.service_account(name, &[]).await;
    }
    let ctl = ControllerProcess::start(&s.ns, &s.env, &ControllerOptions::default()).await;
    for (name, identity) in &specs {
        s.create(binding(name, name, identity.clone(), json!({}))).await;
    }
    for (name, _) in &specs {
        wait_binding(&s.ns, name, Duration::from_secs(90), || ctl.logs(), is_ready).await;
    }
    let counters = s.env.entra.admin().counters().await.unwrap();
    assert!(
        counters.graph.throttled + counters.arm.throttled > 0,
        "{counters:?}"
    );
    assert!(
        counters.graph.server_errors + counters.arm.server_errors > 0,
        "{counters:?}"
    );
    assert_eq!(s.env.app_credentials(APP_A).await.len(), 2);
    assert_eq!(s.env.app_credentials(APP_B).await.len(), 1);
    assert_eq!(s.env.identity_credentials("api-identity").await.len(), 2);
    let text = ctl.metrics().await;
    assert!(
        wif_e2e::controller::metric_sum(&text, "wif_controller_azure_requests_total", &[("status", "429")])
            > 0.0
    );
}

/// The whole mission: a binding makes Entra trust the ServiceAccount (verified by a real
/// exchange), the controller annotates it, the webhook mutates a pod of it, and `wif token` run
/// with that pod's environment and the token the kubelet would write gets an access token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
