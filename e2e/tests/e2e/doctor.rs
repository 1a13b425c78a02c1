//! `wif doctor` against the real API server, a real webhook and the emulator: every check
//! passes for a working pod (a real token exchange included), each broken piece is named with a
//! fix, a missing pod, namespace or ServiceAccount says so, and no token is ever printed.

use std::{collections::BTreeMap, process::Output};

use k8s_openapi::{
    ByteString,
    api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Pod},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, CustomResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams},
};
use serde_json::json;
use wif_e2e::{TestNs, WebhookOptions, WebhookProcess, entra::Entra, wif_bin};

use crate::webhook::{CLIENT, labelled, pod};

/// `wif doctor <args>` with the admin kubeconfig. Run off the test's runtime, which also
/// serves the in-process emulator doctor talks to.
pub(crate) async fn doctor(ns: &TestNs, args: &[&str]) -> (Output, String) {
    let kubeconfig = ns.cp.kubeconfig.clone();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(wif_bin())
            .arg("doctor")
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Whatever happened, no JWT (they all start with a base64url `{"`) reaches the output.
    assert!(!text.contains("eyJ"), "doctor printed a token:\n{text}");
    (out, text)
}

/// The report's lines by check name: (mark, whole line).
fn checks(text: &str) -> BTreeMap<String, (char, String)> {
    text.lines()
        .filter_map(|l| {
            let mark = l.chars().next()?;
            if !matches!(mark, '✓' | '✗' | '-') {
                return None;
            }
            let name = l[mark.len_utf8()..].trim_start().split(':').next()?.to_owned();
            Some((name, (mark, l.to_owned())))
        })
        .collect()
}

#[track_caller]
pub(crate) fn assert_check(text: &str, name: &str, mark: char, says: &str) {
    let all = checks(text);
    let (got, line) = all
        .get(name)
        .unwrap_or_else(|| panic!("no check {name:?} in:\n{text}"));
    assert_eq!(*got, mark, "{name}: {line}\n---\n{text}");
    assert!(
        line.contains(says),
        "{name}: {line:?} does not say {says:?}\n---\n{text}"
    );
    if mark == '✗' {
        assert!(line.contains("fix:"), "a failure without a fix: {line}");
    }
}

fn binding_api(ns: &TestNs) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("azure.workload.identity", "v1alpha1", "FederatedIdentityBinding"),
        "federatedidentitybindings",
    );
    Api::namespaced_with(ns.client.clone(), &ns.name, &ar)
}

/// The binding CRD, from the types `wif crd` prints (idempotent across parallel tests).
pub(crate) async fn ensure_binding_crd(ns: &TestNs) {
    let api: Api<CustomResourceDefinition> = Api::all(ns.client.clone());
    let crd = wif_api::FederatedIdentityBinding::crd();
    let name = crd.metadata.name.clone().unwrap();
    if api.get_opt(&name).await.unwrap().is_none() {
        let _ = api.create(&PostParams::default(), &crd).await;
    }
    for _ in 0..100 {
        let established = api.get(&name).await.ok().and_then(|c| c.status).is_some_and(|s| {
            s.conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if established {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("CRD {name} never established");
}

/// A binding for `sa` whose status says what the controller would have written.
async fn binding(ns: &TestNs, sa: &str, ready: &str, issuer: &str) {
    let api = binding_api(ns);
    let mut obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityBinding",
        "metadata": {"name": sa},
        "spec": {"serviceAccountName": sa, "identity": {"application": {"clientId": CLIENT}}}
    }))
    .unwrap();
    obj.metadata.namespace = Some(ns.name.clone());
    api.create(&PostParams::default(), &obj).await.unwrap();
    let status = json!({"status": {
        "observedGeneration": 1,
        "clientId": CLIENT, "tenantId": wif_e2e::entra::TENANT,
        "credential": {"id": "c1", "name": sa, "parent": "applications/x", "issuer": issuer,
                       "subject": format!("system:serviceaccount:{}:{sa}", ns.name),
                       "audiences": ["api://AzureADTokenExchange"]},
        "conditions": [{"type": "Ready", "status": ready,
                        "reason": if ready == "True" { "Propagated" } else { "CredentialConflict" },
                        "message": "set by the test", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    }});
    api.patch_status(sa, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// A namespace with a mutating webhook, ServiceAccount `api` (annotated, trusted by the
/// emulator), a mutated pod `web`, and a Ready binding.
struct Scene {
    ns: TestNs,
    entra: Entra,
    _hook: WebhookProcess,
    ca_file: tempfile::NamedTempFile,
}

impl Scene {
    async fn new(prefix: &str) -> Self {
        let ns = TestNs::new(prefix).await;
        ns.service_account("api", &[("azure.workload.identity/client-id", CLIENT)])
            .await;
        let hook = WebhookProcess::start(&ns, WebhookOptions::default()).await;
        let entra = Entra::trusting(&ns, CLIENT, "api").await;
        ns.api::<Pod>()
            .create(&PostParams::default(), &labelled("web", "api"))
            .await
            .unwrap();
        ensure_binding_crd(&ns).await;
        binding(&ns, "api", "True", &ns.cp.issuer).await;
        let ca_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca_file.path(), entra.handle.ca_pem()).unwrap();
        Self {
            ns,
            entra,
            _hook: hook,
            ca_file,
        }
    }

    fn exchange_args(&self) -> Vec<String> {
        vec![
            "--exchange".into(),
            "--authority-host".into(),
            self.entra.handle.authority_host(),
            "--ca-file".into(),
            self.ca_file.path().display().to_string(),
        ]
    }
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn doctor_passes_every_check_for_a_working_pod_including_a_real_exchange() {
    let s = Scene::new("doctor").await;
    let target = format!("{}/web", s.ns.name);
    let mut args = vec!["--pod", target.as_str()];
    let extra = s.exchange_args();
    args.extend(extra.iter().map(String::as_str));
    let (out, text) = doctor(&s.ns, &args).await;
    assert!(out.status.success(), "doctor failed:\n{text}");
    assert_check(&text, "pod label", '✓', "azure.workload.identity/use=true");
    assert_check(&text, "ServiceAccount client id", '✓', CLIENT);
    assert_check(&text, "webhook selects the namespace", '✓', &s.ns.name);
    assert_check(
        &text,
        "caBundle",
        '✓',
        "verifies the certificate served at 127.0.0.1:",
    );
    assert_check(&text, "API server calls the webhook", '✓', "mutated");
    assert_check(&text, "pod injected", '✓', "3 container(s)");
    assert_check(&text, "FederatedIdentityBinding", '✓', "Ready");
    assert_check(&text, "API server token", '✓', &s.ns.cp.issuer);
    assert_check(
        &text,
        "credential issuer/subject/audience",
        '✓',
        "system:serviceaccount:",
    );
    assert_check(&text, "token exchange", '✓', "issued an access token");
    assert!(
        text.contains(" failed, 0 skipped") && text.contains("0 failed"),
        "{text}"
    );
    // The emulator really validated an API-server token.
    assert_eq!(s.entra.handle.admin().counters().await.unwrap().token.requests, 1);

    // The same for the ServiceAccount alone (before any pod exists): the label is not judged.
    let (out, text) = doctor(&s.ns, &["-n", &s.ns.name, "--service-account", "api"]).await;
    assert!(out.status.success(), "{text}");
    assert_check(&text, "pod label", '-', "no pod given");
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn doctor_names_each_broken_piece_with_a_fix() {
    let s = Scene::new("doctor-bad").await;
    // A pod created without the label: never mutated.
    s.ns.api::<Pod>()
        .create(&PostParams::default(), &pod("plain", "api", json!({}), json!({})))
        .await
        .unwrap();
    let target = format!("{}/plain", s.ns.name);
    let (out, text) = doctor(&s.ns, &["--pod", &target]).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_check(&text, "pod label", '✗', "no azure.workload.identity/use label");
    assert_check(&text, "pod injected", '✗', "did not mutate");
    assert_check(&text, "ServiceAccount client id", '✓', CLIENT);

    // A ServiceAccount the identity does not trust, its binding not Ready and written with a
    // trailing slash on the issuer; the exchange fails with Entra's code and a hint.
    s.ns.service_account("stranger", &[("azure.workload.identity/client-id", CLIENT)])
        .await;
    binding(&s.ns, "stranger", "False", &format!("{}/", s.ns.cp.issuer)).await;
    let mut args = vec!["-n", s.ns.name.as_str(), "--service-account", "stranger"];
    let extra = s.exchange_args();
    args.extend(extra.iter().map(String::as_str));
    let (out, text) = doctor(&s.ns, &args).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_check(&text, "FederatedIdentityBinding", '✗', "CredentialConflict");
    assert_check(&text, "credential issuer/subject/audience", '✗', "trailing slash");
    assert_check(&text, "token exchange", '✗', "AADSTS70021");

    // A ServiceAccount without a client id, and without a binding.
    s.ns.service_account("bare", &[("azure.workload.identity/clientId", CLIENT)])
        .await;
    let (out, text) = doctor(
        &s.ns,
        &["-n", &s.ns.name, "--service-account", "bare", "--exchange"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_check(
        &text,
        "ServiceAccount client id",
        '✗',
        "found \"azure.workload.identity/clientId\"",
    );
    assert_check(&text, "FederatedIdentityBinding", '✗', "none in");
    assert_check(
        &text,
        "credential issuer/subject/audience",
        '-',
        "Entra's federated credential must say",
    );
    assert_check(&text, "token exchange", '✗', "no client id");
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn doctor_detects_a_ca_bundle_that_does_not_verify_the_webhook() {
    let ns = TestNs::new("doctor-ca").await;
    ns.service_account("api", &[("azure.workload.identity/client-id", CLIENT)])
        .await;
    let hook = WebhookProcess::start(&ns, WebhookOptions::default()).await;
    // Another CA in the caBundle: the API server can no longer call the webhook.
    let now = time::OffsetDateTime::now_utc();
    let wrong =
        wif_webhook::selfcert::generate_ca("not-the-issuer", now, std::time::Duration::from_secs(3600))
            .unwrap();
    let api: Api<MutatingWebhookConfiguration> = Api::all(ns.client.clone());
    let mut cfg = api.get(&hook.config_name).await.unwrap();
    for w in cfg.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(ByteString(wrong.cert_pem.clone().into_bytes()));
    }
    api.replace(&hook.config_name, &PostParams::default(), &cfg)
        .await
        .unwrap();
    let name = hook.config_name.clone();
    // The API server's webhook cache catches up within a moment.
    let mut text = String::new();
    for _ in 0..50 {
        let (out, t) = doctor(
            &ns,
            &[
                "-n",
                &ns.name,
                "--service-account",
                "api",
                "--webhook-config",
                &name,
            ],
        )
        .await;
        text = t;
        if !out.status.success()
            && checks(&text)
                .get("API server calls the webhook")
                .is_some_and(|c| c.0 == '✗')
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert_check(&text, "caBundle", '✗', "not signed by a CA in the caBundle");
    assert_check(
        &text,
        "API server calls the webhook",
        '✗',
        "does not trust the webhook's certificate",
    );
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn doctor_says_what_is_missing_and_exits_non_zero() {
    let ns = TestNs::new("doctor-missing").await;
    let (out, text) = doctor(&ns, &["-n", "e2e-no-such-namespace", "--service-account", "api"]).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_check(&text, "namespace", '✗', "e2e-no-such-namespace not found");

    let target = format!("{}/ghost", ns.name);
    let (out, text) = doctor(&ns, &["--pod", &target]).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_check(&text, "pod", '✗', "ghost not found");

    let (out, text) = doctor(&ns, &["-n", &ns.name, "--service-account", "nobody"]).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_check(&text, "ServiceAccount", '✗', "nobody not found");

    // A namespace alone lists its unmutated labelled pods: none here.
    let (out, text) = doctor(&ns, &["-n", &ns.name]).await;
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_check(&text, "labelled pods mutated", '✓', "all 0 pods labelled");

    // Nothing to check: a usage error, not a report.
    let (out, text) = doctor(&ns, &[]).await;
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--service-account"), "{text}");
}
