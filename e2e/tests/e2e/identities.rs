//! Several identities per ServiceAccount, an identity per container, an audience per
//! ServiceAccount — through the real API server, the webhook and the emulator. What the kubelet
//! would do for each container is done here: a TokenRequest with the projected volume's audience,
//! bound to the pod, written to a file, and the container's injected environment handed to
//! `wif token` and to Python azure-identity.

use std::collections::BTreeMap;

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{Container, Pod, ServiceAccount},
};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use wif_e2e::{
    TestNs, WebhookOptions, WebhookProcess,
    entra::{Entra, TENANT, claims},
    wif_bin,
};

use crate::webhook::pod;

const DEFAULT_APP: &str = "a0000000-0000-4000-8000-000000000001";
const READER_APP: &str = "a0000000-0000-4000-8000-000000000002";
const WRITER_APP: &str = "a0000000-0000-4000-8000-000000000003";
const NEUTRAL_APP: &str = "a0000000-0000-4000-8000-000000000004";
/// The service principal (the access token's `oid`) of an application: `b…` for `a…`.
fn principal(app: &str) -> String {
    format!("b{}", &app[1..])
}
const NEUTRAL_AUDIENCE: &str = "api://wif-e2e-neutral";
const SCOPE: &str = "https://management.azure.com/.default";
const TOKEN_FILE: &str = "/var/run/secrets/azure/tokens/azure-identity-token";

/// An emulator application trusting `sa` of `ns` for `audience`.
fn application(ns: &TestNs, app: &str, sa: &str, audience: &str) -> Value {
    json!({
        "displayName": format!("e2e-{app}"), "appId": app, "servicePrincipalId": principal(app),
        "federatedIdentityCredentials": [{
            "name": "e2e", "issuer": ns.cp.issuer,
            "subject": format!("system:serviceaccount:{}:{sa}", ns.name),
            "audiences": [audience]}]
    })
}

/// A namespace, an emulator with `apps`, and the webhook writing the emulator as the authority.
async fn scene(prefix: &str, apps: impl FnOnce(&TestNs) -> Vec<Value>) -> (TestNs, Entra, WebhookProcess) {
    let ns = TestNs::new(prefix).await;
    let entra = Entra::start(
        &ns,
        json!({"tenants": [{"id": TENANT, "applications": apps(&ns)}]}),
    )
    .await;
    let hook = WebhookProcess::start(
        &ns,
        WebhookOptions {
            tenant_id: TENANT.into(),
            cloud: entra.handle.authority_host(),
            ..WebhookOptions::default()
        },
    )
    .await;
    (ns, entra, hook)
}

/// One container of a created pod, with the token the kubelet would project for it.
struct Workload {
    env: BTreeMap<String, String>,
    dir: tempfile::TempDir,
    ca: String,
}

impl Workload {
    /// Reads the container's injected variables and writes the pod's projected token (audience
    /// and lifetime from the volume the webhook added, bound to the pod) where
    /// AZURE_FEDERATED_TOKEN_FILE points in the container.
    async fn of(ns: &TestNs, pod: &Pod, container: &str, entra: &Entra) -> Self {
        let spec = pod.spec.as_ref().unwrap();
        let c: &Container = spec
            .init_containers
            .iter()
            .flatten()
            .chain(&spec.containers)
            .find(|c| c.name == container)
            .unwrap();
        let env: BTreeMap<String, String> = c
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["AZURE_FEDERATED_TOKEN_FILE"], TOKEN_FILE, "{container}");
        let projection = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "azure-identity-token")
            .and_then(|v| {
                v.projected
                    .as_ref()?
                    .sources
                    .as_ref()?
                    .first()?
                    .service_account_token
                    .clone()
            })
            .expect("the webhook's token volume");
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(vec![projection.audience.clone().unwrap()]),
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
        let sa = spec.service_account_name.as_deref().unwrap();
        let token = ns
            .api::<ServiceAccount>()
            .create_token_request(sa, &PostParams::default(), &request)
            .await
            .unwrap()
            .status
            .and_then(|s| s.token)
            .expect("a token");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), token).unwrap();
        std::fs::write(dir.path().join("ca.pem"), entra.handle.ca_pem()).unwrap();
        let ca = dir.path().join("ca.pem").display().to_string();
        Self { env, dir, ca }
    }

    /// The container's environment, with the token file where this test wrote it.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut cmd = std::process::Command::new(program);
        for (key, _) in std::env::vars() {
            if key.starts_with("AZURE_") || key.starts_with("MSI_") || key.starts_with("IDENTITY_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(&self.env)
            .env("AZURE_FEDERATED_TOKEN_FILE", self.dir.path().join("token"))
            .env("SSL_CERT_FILE", &self.ca)
            .env("REQUESTS_CA_BUNDLE", &self.ca)
            .env("AZURE_CONFIG_DIR", self.dir.path().join("az"));
        cmd
    }

    /// `wif token [--identity NAME]` in this container: the access token's claims, or the error.
    async fn wif_token(&self, identity: Option<&str>) -> Result<Value, String> {
        let mut cmd = self.command(wif_bin());
        cmd.args(["token", "--scope", SCOPE]);
        if let Some(name) = identity {
            cmd.args(["--identity", name]);
        }
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        if out.status.success() {
            Ok(claims(String::from_utf8(out.stdout).unwrap().trim()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Python azure-identity in this container, `client_id=os.environ["AZURE_CLIENT_ID_<NAME>"]`.
    async fn python(&self, identity: &str) -> Value {
        let python = std::env::var("WIF_PYTHON")
            .expect("WIF_PYTHON must name a Python with azure-identity (make venv; the Makefile sets it)");
        let mut cmd = self.command(python);
        cmd.arg(wif_e2e::workspace_path("e2e/tests/e2e/python/named_identity.py"))
            .env("WIF_IDENTITY", identity)
            .env("WIF_CHECK_SCOPE", SCOPE);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "azure-identity failed for {identity:?}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
    }
}

/// A scene where ServiceAccount `api` names three identities: the default and `reader` trust
/// `api`; the one under `writer_key` trusts ServiceAccount `writer_sa`.
async fn three_identities(
    prefix: &str,
    writer_sa: &str,
    writer_key: &str,
) -> (TestNs, Entra, WebhookProcess) {
    let (ns, entra, hook) = scene(prefix, |ns| {
        vec![
            application(ns, DEFAULT_APP, "api", wif_api::DEFAULT_AUDIENCE),
            application(ns, READER_APP, "api", wif_api::DEFAULT_AUDIENCE),
            application(ns, WRITER_APP, writer_sa, wif_api::DEFAULT_AUDIENCE),
        ]
    })
    .await;
    ns.service_account(
        "api",
        &[
            ("azure.workload.identity/client-id", DEFAULT_APP),
            ("azure.workload.identity/client-id.reader", READER_APP),
            (writer_key, WRITER_APP),
        ],
    )
    .await;
    (ns, entra, hook)
}

/// `wif doctor --pod <target> --exchange` against the emulator (its CA in file `ca`).
async fn doctor_exchange(
    ns: &TestNs,
    entra: &Entra,
    target: &str,
    ca: &str,
) -> (std::process::Output, String) {
    let authority = entra.handle.authority_host();
    crate::doctor::doctor(
        ns,
        &[
            "--pod",
            target,
            "--exchange",
            "--authority-host",
            &authority,
            "--ca-file",
            ca,
        ],
    )
    .await
}

/// Creates labelled pod `name` of ServiceAccount `api` with `container-identities: assignments`.
async fn create_with_identities(ns: &TestNs, name: &str, assignments: &str) -> Result<Pod, kube::Error> {
    ns.api::<Pod>()
        .create(
            &PostParams::default(),
            &pod(
                name,
                "api",
                json!({"azure.workload.identity/use": "true"}),
                json!({"azure.workload.identity/container-identities": assignments}),
            ),
        )
        .await
}

#[track_caller]
fn assert_identity(claims: &Value, app: &str, what: &str) {
    assert_eq!(claims["appid"], app, "{what}: {claims}");
    assert_eq!(claims["oid"], principal(app).as_str(), "{what}: {claims}");
    assert_eq!(claims["tid"], TENANT, "{what}: {claims}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane, the wif binary and WIF_PYTHON (make e2e)"]
async fn each_container_exchanges_the_token_for_its_own_identity() {
    let (ns, entra, _hook) =
        three_identities("ids", "api", "azure.workload.identity/client-id.read-write").await;
    let created = create_with_identities(&ns, "web", "app=reader;sidecar=read-write")
        .await
        .unwrap();

    // What the webhook wrote, as the API server stored it.
    let app = Workload::of(&ns, &created, "app", &entra).await;
    let sidecar = Workload::of(&ns, &created, "sidecar", &entra).await;
    let init = Workload::of(&ns, &created, "init", &entra).await;
    for (w, own) in [(&app, READER_APP), (&sidecar, WRITER_APP), (&init, DEFAULT_APP)] {
        assert_eq!(w.env["AZURE_CLIENT_ID"], own);
        assert_eq!(w.env["AZURE_CLIENT_ID_READER"], READER_APP);
        assert_eq!(w.env["AZURE_CLIENT_ID_READ_WRITE"], WRITER_APP);
    }

    // `wif token`: the container's own identity by default, any other by name.
    assert_identity(&app.wif_token(None).await.unwrap(), READER_APP, "app");
    assert_identity(&sidecar.wif_token(None).await.unwrap(), WRITER_APP, "sidecar");
    assert_identity(&init.wif_token(None).await.unwrap(), DEFAULT_APP, "init");
    assert_identity(
        &app.wif_token(Some("read-write")).await.unwrap(),
        WRITER_APP,
        "app --identity read-write",
    );
    assert_identity(
        &sidecar.wif_token(Some("reader")).await.unwrap(),
        READER_APP,
        "sidecar --identity reader",
    );
    let err = app.wif_token(Some("admin")).await.unwrap_err();
    assert!(
        err.contains("AZURE_CLIENT_ID_ADMIN") && err.contains("client-id.admin"),
        "{err}"
    );

    // Python azure-identity, picking the identity by name from the variables.
    assert_identity(
        &app.python("read-write").await,
        WRITER_APP,
        "python read-write in app",
    );
    assert_identity(
        &sidecar.python("reader").await,
        READER_APP,
        "python reader in sidecar",
    );
    assert_identity(&app.python("").await, READER_APP, "python default in app");

    // One projected token per container served every identity: one exchange per call above.
    let counters = entra.handle.admin().counters().await.unwrap();
    assert_eq!(counters.token.requests, 8, "{counters:?}");

    // An unknown container or identity: the pod is refused, naming both.
    let refused = create_with_identities(&ns, "typo", "app=writer")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("container \"app\"") && refused.contains("identity \"writer\""),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane, the wif binary and WIF_PYTHON (make e2e)"]
async fn a_custom_audience_works_end_to_end_and_a_mismatch_is_explained() {
    let (ns, entra, hook) = scene("aud", |ns| {
        vec![
            application(ns, NEUTRAL_APP, "neutral", NEUTRAL_AUDIENCE),
            // Trusts `mismatch` only for the default audience.
            application(ns, DEFAULT_APP, "mismatch", wif_api::DEFAULT_AUDIENCE),
        ]
    })
    .await;
    ns.service_account(
        "neutral",
        &[
            ("azure.workload.identity/client-id", NEUTRAL_APP),
            ("azure.workload.identity/audience", NEUTRAL_AUDIENCE),
        ],
    )
    .await;
    ns.service_account(
        "mismatch",
        &[
            ("azure.workload.identity/client-id", DEFAULT_APP),
            ("azure.workload.identity/audience", NEUTRAL_AUDIENCE),
        ],
    )
    .await;
    let labelled = |name: &str, sa: &str, annotations: Value| {
        pod(
            name,
            sa,
            json!({"azure.workload.identity/use": "true"}),
            annotations,
        )
    };
    let pods = ns.api::<Pod>();

    // The ServiceAccount's audience reaches the token, the file and variables stay put, and the
    // identity trusting that audience exchanges it; an extra token rides along in the volume.
    let neutral = pods
        .create(
            &PostParams::default(),
            &labelled(
                "neutral",
                "neutral",
                json!({"azure.workload.identity/extra-token-audiences": "aws=sts.amazonaws.com"}),
            ),
        )
        .await
        .unwrap();
    let sources: Vec<(String, String)> = neutral
        .spec
        .as_ref()
        .unwrap()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "azure-identity-token")
        .unwrap()
        .projected
        .as_ref()
        .unwrap()
        .sources
        .iter()
        .flatten()
        .filter_map(|s| s.service_account_token.as_ref())
        .map(|t| (t.path.clone(), t.audience.clone().unwrap_or_default()))
        .collect();
    assert_eq!(
        sources,
        vec![
            ("azure-identity-token".to_owned(), NEUTRAL_AUDIENCE.to_owned()),
            ("aws-token".to_owned(), "sts.amazonaws.com".to_owned()),
        ]
    );
    let w = Workload::of(&ns, &neutral, "app", &entra).await;
    assert_identity(&w.wif_token(None).await.unwrap(), NEUTRAL_APP, "custom audience");
    assert_identity(&w.python("").await, NEUTRAL_APP, "python, custom audience");

    // A pod annotation wins over the ServiceAccount's; an invalid one is refused with the reason.
    let overridden = pods
        .create(
            &PostParams::default(),
            &labelled(
                "pod-wins",
                "neutral",
                json!({"azure.workload.identity/audience": "api://per-pod"}),
            ),
        )
        .await
        .unwrap();
    let audience = overridden
        .spec
        .unwrap()
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "azure-identity-token")
        .unwrap()
        .projected
        .unwrap()
        .sources
        .unwrap()[0]
        .service_account_token
        .clone()
        .unwrap()
        .audience;
    assert_eq!(audience.as_deref(), Some("api://per-pod"));
    let refused = pods
        .create(
            &PostParams::default(),
            &labelled(
                "bad-aud",
                "neutral",
                json!({"azure.workload.identity/audience": "api://*"}),
            ),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("azure.workload.identity/audience")
            && refused.contains("api://*")
            && refused.contains("'*'"),
        "{refused}"
    );

    // The identity trusts only the default audience: Entra says AADSTS700212 …
    let mismatch = pods
        .create(
            &PostParams::default(),
            &labelled("mismatch", "mismatch", json!({})),
        )
        .await
        .unwrap();
    let w = Workload::of(&ns, &mismatch, "app", &entra).await;
    let err = w.wif_token(None).await.unwrap_err();
    assert!(err.contains("AADSTS700212"), "{err}");

    // … and `wif doctor` explains it: the pod's token carries the custom audience, its
    // binding's credential another one.
    crate::doctor::ensure_binding_crd(&ns).await;
    reported_binding(&ns, "mismatch", DEFAULT_APP, None, wif_api::DEFAULT_AUDIENCE).await;
    let target = format!("{}/mismatch", ns.name);
    let ca = w.ca.clone();
    let (out, text) = doctor_exchange(&ns, &entra, &target, &ca).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    crate::doctor::assert_check(&text, "API server token", '✓', NEUTRAL_AUDIENCE);
    crate::doctor::assert_check(
        &text,
        "credential issuer/subject/audience",
        '✗',
        &format!("audience {:?} ≠ {NEUTRAL_AUDIENCE:?}", wif_api::DEFAULT_AUDIENCE),
    );
    crate::doctor::assert_check(&text, "token exchange", '✗', "AADSTS700212");
    crate::doctor::assert_check(&text, "token exchange", '✗', "audience mismatch");
    drop(hook);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn doctor_checks_every_named_identity() {
    // Trusts another ServiceAccount: the named identity's exchange must fail.
    let (ns, entra, _hook) = three_identities(
        "ids-doc",
        "someone-else",
        "azure.workload.identity/client-id.writer",
    )
    .await;
    create_with_identities(&ns, "web", "sidecar=reader")
        .await
        .unwrap();
    crate::doctor::ensure_binding_crd(&ns).await;
    reported_binding(&ns, "api", DEFAULT_APP, None, wif_api::DEFAULT_AUDIENCE).await;
    reported_binding(
        &ns,
        "api-reader",
        READER_APP,
        Some("reader"),
        wif_api::DEFAULT_AUDIENCE,
    )
    .await;
    reported_binding(&ns, "api-writer", WRITER_APP, Some("writer"), "api://wrong").await;
    let target = format!("{}/web", ns.name);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), entra.handle.ca_pem()).unwrap();
    let ca = dir.path().join("ca.pem").display().to_string();
    let (out, text) = doctor_exchange(&ns, &entra, &target, &ca).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    use crate::doctor::assert_check;
    assert_check(&text, "named identities", '✓', &format!("reader={READER_APP}"));
    assert_check(&text, "pod injected", '✓', "3 container(s)");
    assert_check(
        &text,
        "credential issuer/subject/audience",
        '✓',
        "system:serviceaccount:",
    );
    assert_check(
        &text,
        "credential issuer/subject/audience (reader)",
        '✓',
        "system:serviceaccount:",
    );
    assert_check(
        &text,
        "credential issuer/subject/audience (writer)",
        '✗',
        "api://wrong",
    );
    assert_check(&text, "token exchange", '✓', "issued an access token");
    assert_check(&text, "token exchange (reader)", '✓', "issued an access token");
    assert_check(&text, "token exchange (writer)", '✗', "AADSTS700213");
}

/// A binding for `sa` whose status says what the controller would have written for `app`
/// (`identityName` is kept only where the CRD knows it; doctor matches by client id otherwise).
async fn reported_binding(ns: &TestNs, name: &str, app: &str, identity: Option<&str>, audience: &str) {
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("azure.workload.identity", "v1alpha1", "FederatedIdentityBinding"),
        "federatedidentitybindings",
    );
    let api: kube::Api<DynamicObject> = kube::Api::namespaced_with(ns.client.clone(), &ns.name, &ar);
    let sa = if name.starts_with("api") { "api" } else { name };
    let mut spec = json!({"serviceAccountName": sa, "identity": {"application": {"clientId": app}}});
    if let Some(identity) = identity {
        spec["identityName"] = identity.into();
    }
    let mut obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityBinding",
        "metadata": {"name": name}, "spec": spec,
    }))
    .unwrap();
    obj.metadata.namespace = Some(ns.name.clone());
    api.create(&PostParams::default(), &obj).await.unwrap();
    let status = json!({"status": {
        "observedGeneration": 1, "clientId": app, "tenantId": TENANT,
        "credential": {"id": format!("c-{name}"), "name": name, "parent": "applications/x",
                       "issuer": ns.cp.issuer,
                       "subject": format!("system:serviceaccount:{}:{sa}", ns.name),
                       "audiences": [audience]},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Propagated",
                        "message": "set by the test", "lastTransitionTime": "2026-01-01T00:00:00Z"}]
    }});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// The controller: three bindings on one ServiceAccount (one default, two named) coexist and each
/// writes its own keys; a binding whose audience disagrees with a hand-written audience
/// annotation reports `AudienceMismatch`, and one with a custom audience writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn bindings_write_named_identities_and_agree_on_the_audience() {
    use wif_e2e::controller::{
        ControllerEnv, ControllerOptions, ControllerProcess, PolicyGuard, binding, condition, is_ready,
        wait_binding,
    };
    let t = std::time::Duration::from_secs(60);
    let ns = TestNs::new("ids-ctl").await;
    let apps = json!({"applications": [
        {"displayName": "default", "appId": DEFAULT_APP},
        {"displayName": "reader", "appId": READER_APP},
        {"displayName": "writer", "appId": WRITER_APP},
    ]});
    let env = ControllerEnv::start(&ns, apps, json!({})).await;
    let _policy = PolicyGuard::grant(&ns, "", &[DEFAULT_APP, READER_APP, WRITER_APP], &[]).await;
    ns.service_account("api", &[]).await;
    ns.service_account(
        "aud",
        &[("azure.workload.identity/audience", "api://hand-written")],
    )
    .await;
    ns.service_account("custom", &[]).await;
    let ctl = ControllerProcess::start(&ns, &env, &ControllerOptions::default()).await;
    let logs = || ctl.logs();
    let bindings: kube::Api<wif_api::FederatedIdentityBinding> = ns.api();
    let app = |id: &str| json!({"application": {"clientId": id}});
    for b in [
        binding("api", "api", app(DEFAULT_APP), json!({})),
        binding(
            "api-reader",
            "api",
            app(READER_APP),
            json!({"identityName": "reader"}),
        ),
        binding(
            "api-writer",
            "api",
            app(WRITER_APP),
            json!({"identityName": "read-write"}),
        ),
        binding("aud", "aud", app(DEFAULT_APP), json!({})),
        binding(
            "custom",
            "custom",
            app(READER_APP),
            json!({"audience": NEUTRAL_AUDIENCE}),
        ),
    ] {
        bindings.create(&PostParams::default(), &b).await.unwrap();
    }
    for name in ["api", "api-reader", "api-writer", "custom"] {
        wait_binding(&ns, name, t, logs, is_ready).await;
    }
    let annotations = |sa: &'static str| {
        let api = ns.api::<ServiceAccount>();
        async move {
            api.get(sa)
                .await
                .unwrap()
                .metadata
                .annotations
                .unwrap_or_default()
        }
    };
    let a = annotations("api").await;
    assert_eq!(a["azure.workload.identity/client-id"], DEFAULT_APP, "{a:?}");
    assert_eq!(a["azure.workload.identity/client-id.reader"], READER_APP, "{a:?}");
    assert_eq!(
        a["azure.workload.identity/client-id.read-write"], WRITER_APP,
        "{a:?}"
    );
    assert_eq!(a["azure.workload.identity/tenant-id.reader"], TENANT, "{a:?}");
    assert!(!a.contains_key("azure.workload.identity/audience"), "{a:?}");
    let a = annotations("custom").await;
    assert_eq!(a["azure.workload.identity/audience"], NEUTRAL_AUDIENCE, "{a:?}");

    let b = wait_binding(&ns, "aud", t, logs, |b| {
        condition(b, "ServiceAccountReady").is_some_and(|c| c.1 == "AudienceMismatch")
    })
    .await;
    let (status, _, message) = condition(&b, "ServiceAccountReady").unwrap();
    assert_eq!(status, "False");
    assert!(
        message.contains("api://hand-written") && message.contains("AADSTS700212"),
        "{message}"
    );
}
