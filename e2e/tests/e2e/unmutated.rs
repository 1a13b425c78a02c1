//! Issue 15: no labelled pod runs without its identity. Through the real API server: pods made
//! while the webhook is down (failurePolicy Ignore) are found by the controller, reported once
//! (Event, gauge, `wif doctor`), and with `--recycle-unmutated` evicted through the Eviction API
//! once a dry-run create proves the webhook injects again; bare pods and PodDisruptionBudgets
//! hold. The webhook explains every skip; another workload identity webhook is reported and
//! refused by the chart.
//!
//! The shared control plane runs no kube-controller-manager, so the test plays the ReplicaSet
//! controller: it creates the owned pod (ownerReference to a real ReplicaSet) and, after the
//! eviction, the replacement from the same template. Pods stay Pending (no node), which is
//! enough: mutation happens at admission.

use std::{process::Output, time::Duration};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::{Deployment, ReplicaSet},
    core::v1::Pod,
    events::v1::Event,
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};
use wif_api::{CLIENT_ID_ANNOTATION, TOKEN_VOLUME_NAME, USE_LABEL};
use wif_e2e::{
    TestNs, WebhookOptions, WebhookProcess,
    controller::{ControllerEnv, ControllerOptions, ControllerProcess, eventually},
    helm::{self, chart},
    node::PAUSE_IMAGE,
    wif_bin,
};

const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";

fn is_mutated(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.name == TOKEN_VOLUME_NAME))
}

/// A webhook registered for `ns` and then stopped, its configuration left with
/// failurePolicy Ignore: labelled pods are admitted unmutated.
async fn webhook_down(ns: &TestNs) -> WebhookProcess {
    let mut hook = WebhookProcess::start(ns, WebhookOptions::default()).await;
    let api: Api<MutatingWebhookConfiguration> = Api::all(ns.client.clone());
    let patch =
        json!({"webhooks": [{"name": "mutation.wif.azure.workload.identity", "failurePolicy": "Ignore"}]});
    api.patch(
        &hook.config_name,
        &PatchParams::default(),
        &Patch::Strategic(&patch),
    )
    .await
    .expect("failurePolicy Ignore");
    hook.stop();
    hook
}

/// The webhook serving again (a second process with its own configuration, failurePolicy Fail).
async fn webhook_back(ns: &TestNs) -> WebhookProcess {
    WebhookProcess::start_named(
        ns,
        WebhookOptions::default(),
        Some(&format!("wif-e2e-{}-back", ns.name)),
    )
    .await
}

fn template(sa: &str) -> Value {
    json!({
        "metadata": {"labels": {USE_LABEL: "true", "app": "web"}},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "image": "busybox"}]}
    })
}

/// A ReplicaSet (no controller runs it) and one pod it "owns", created like its controller would.
async fn owned_pod(ns: &TestNs, rs_name: &str, pod_name: &str) -> (ReplicaSet, Pod) {
    let rss: Api<ReplicaSet> = ns.api();
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": rs_name},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}}, "template": template("app")}
    }))
    .unwrap();
    let rs = match rss.create(&PostParams::default(), &rs).await {
        Ok(rs) => rs,
        Err(_) => rss.get(rs_name).await.expect("ReplicaSet"),
    };
    let pod = replica(ns, &rs, pod_name).await;
    (rs, pod)
}

async fn replica(ns: &TestNs, rs: &ReplicaSet, pod_name: &str) -> Pod {
    let mut pod = template("app");
    pod["metadata"]["name"] = json!(pod_name);
    pod["metadata"]["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs.name_any(),
        "uid": rs.uid().unwrap(), "controller": true
    }]);
    let pod: Pod = serde_json::from_value(pod).unwrap();
    ns.api::<Pod>()
        .create(&PostParams::default(), &pod)
        .await
        .expect("create owned pod")
}

async fn bare_pod(ns: &TestNs, name: &str) -> Pod {
    let mut pod = template("app");
    pod["metadata"]["name"] = json!(name);
    let pod: Pod = serde_json::from_value(pod).unwrap();
    ns.api::<Pod>()
        .create(&PostParams::default(), &pod)
        .await
        .expect("create bare pod")
}

/// (reason, note) of the Events about pod `name`.
async fn events(ns: &TestNs, name: &str) -> Vec<(String, String)> {
    let api: Api<Event> = ns.api();
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect()
}

async fn controller(ns: &TestNs, env: &ControllerEnv, recycle: bool) -> ControllerProcess {
    let opts = ControllerOptions {
        identity: format!("e2e-unmutated-{}", ns.name),
        overrides: vec![
            ("--recycle-unmutated", recycle.to_string()),
            ("--recycle-retry", "1s".into()),
            ("--recycle-per-minute", "5".into()),
        ],
        ..ControllerOptions::default()
    };
    ControllerProcess::start(ns, env, &opts).await
}

async fn gone(pods: &Api<Pod>, name: &str) -> bool {
    matches!(pods.get_opt(name).await, Ok(None))
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn unmutated_pod_is_reported_then_recycled_once_the_webhook_is_back() {
    let ns = TestNs::new("unmutated-recycle").await;
    ns.service_account("app", &[(CLIENT_ID_ANNOTATION, CLIENT_ID)])
        .await;
    let _down = webhook_down(&ns).await;
    let (rs, pod) = owned_pod(&ns, "web-rs", "web-1").await;
    assert!(
        !is_mutated(&pod),
        "the webhook is down: the pod must be admitted unmutated"
    );

    let env = ControllerEnv::start(&ns, json!({}), json!({})).await;
    let ctl = controller(&ns, &env, true).await;
    let started = std::time::Instant::now();
    let note = eventually("Event NotMutated on web-1", Duration::from_secs(30), || async {
        events(&ns, "web-1")
            .await
            .into_iter()
            .find(|(r, _)| r == "NotMutated")
            .map(|(_, n)| n)
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(note.contains("azure-identity-token"), "{note}");
    assert!(note.contains("failurePolicy: Ignore"), "cause: {note}");
    let gauge = |c: &ControllerProcess| {
        let ns = ns.name.clone();
        let admin = c.admin_port;
        async move {
            let text = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            wif_e2e::controller::metric_sum(&text, "wif_unmutated_pods", &[("namespace", &ns)])
        }
    };
    eventually("gauge at 1", Duration::from_secs(10), || async {
        (gauge(&ctl).await == 1.0).then_some(())
    })
    .await;

    // While the webhook is down the dry-run proves nothing: the pod stays.
    let pods: Api<Pod> = ns.api();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(pods.get_opt("web-1").await.unwrap().is_some(), "{}", ctl.logs());
    assert_eq!(ctl.metric("wif_unmutated_pods_recycled_total", &[]).await, 0.0);
    // Once per pod, not on every resync.
    let reported = events(&ns, "web-1").await;
    assert_eq!(
        reported.iter().filter(|(r, _)| r == "NotMutated").count(),
        1,
        "{reported:?}"
    );

    let _back = webhook_back(&ns).await;
    eventually("web-1 evicted", Duration::from_secs(30), || async {
        gone(&pods, "web-1").await.then_some(())
    })
    .await;
    assert_eq!(ctl.metric("wif_unmutated_pods_recycled_total", &[]).await, 1.0);
    // Its controller recreates it, through the webhook that now serves.
    let replacement = replica(&ns, &rs, "web-2").await;
    assert!(is_mutated(&replacement), "the replacement must be mutated");
    eventually("gauge back at 0", Duration::from_secs(10), || async {
        (gauge(&ctl).await == 0.0).then_some(())
    })
    .await;
    let recycled = events(&ns, "web-1").await;
    assert!(recycled.iter().any(|(r, _)| r == "Recycled"), "{recycled:?}");
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn without_recycling_nothing_is_deleted_and_doctor_lists_the_pods() {
    let ns = TestNs::new("unmutated-report").await;
    ns.service_account("app", &[(CLIENT_ID_ANNOTATION, CLIENT_ID)])
        .await;
    ns.service_account("nocid", &[]).await;
    let _down = webhook_down(&ns).await;
    owned_pod(&ns, "web-rs", "web-1").await;
    bare_pod(&ns, "bare").await;
    let mut nocid = template("nocid");
    nocid["metadata"]["name"] = json!("nocid");
    ns.api::<Pod>()
        .create(&PostParams::default(), &serde_json::from_value(nocid).unwrap())
        .await
        .unwrap();

    let env = ControllerEnv::start(&ns, json!({}), json!({})).await;
    let ctl = controller(&ns, &env, false).await;
    for (pod, reason) in [
        ("web-1", "NotMutated"),
        ("bare", "NotMutated"),
        ("nocid", "NoClientId"),
    ] {
        eventually(
            &format!("Event {reason} on {pod}"),
            Duration::from_secs(30),
            || async {
                events(&ns, pod)
                    .await
                    .into_iter()
                    .any(|(r, _)| r == reason)
                    .then_some(())
            },
        )
        .await;
    }
    let _back = webhook_back(&ns).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods: Api<Pod> = ns.api();
    for pod in ["web-1", "bare", "nocid"] {
        assert!(
            pods.get_opt(pod).await.unwrap().is_some(),
            "{pod} deleted:\n{}",
            ctl.logs()
        );
    }
    assert_eq!(ctl.metric("wif_unmutated_pods_recycled_total", &[]).await, 0.0);

    let (out, text) = doctor(&ns, &["--namespace", &ns.name]).await;
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        format!("{}/web-1 (NotMutated)", ns.name),
        format!("{}/bare (NotMutated)", ns.name),
        format!("{}/nocid (NoClientId)", ns.name),
        "likely cause".to_owned(),
    ] {
        assert!(text.contains(&want), "{want} not in\n{text}");
    }
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn bare_pods_are_reported_and_never_deleted_while_owned_ones_are_recycled() {
    let ns = TestNs::new("unmutated-bare").await;
    ns.service_account("app", &[(CLIENT_ID_ANNOTATION, CLIENT_ID)])
        .await;
    let _down = webhook_down(&ns).await;
    owned_pod(&ns, "web-rs", "web-1").await;
    bare_pod(&ns, "bare").await;
    let env = ControllerEnv::start(&ns, json!({}), json!({})).await;
    let ctl = controller(&ns, &env, true).await;
    for pod in ["web-1", "bare"] {
        eventually(
            &format!("Event NotMutated on {pod}"),
            Duration::from_secs(30),
            || async {
                events(&ns, pod)
                    .await
                    .into_iter()
                    .any(|(r, _)| r == "NotMutated")
                    .then_some(())
            },
        )
        .await;
    }
    let _back = webhook_back(&ns).await;
    let pods: Api<Pod> = ns.api();
    eventually("web-1 evicted", Duration::from_secs(30), || async {
        gone(&pods, "web-1").await.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        pods.get_opt("bare").await.unwrap().is_some(),
        "a bare pod was deleted:\n{}",
        ctl.logs()
    );
    assert_eq!(ctl.metric("wif_unmutated_pods_recycled_total", &[]).await, 1.0);
    assert_eq!(
        ctl.metric("wif_unmutated_pods", &[("namespace", &ns.name)]).await,
        1.0
    );
}

async fn doctor(ns: &TestNs, args: &[&str]) -> (Output, String) {
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
    (out, text)
}

/// `kubectl create --dry-run=server` of `pod`: (stderr with the warnings, success).
fn kubectl_dry_run(ns: &TestNs, pod: &Value) -> (String, bool) {
    use std::io::Write;
    let mut child = ns
        .cp
        .kubectl()
        .args([
            "-n",
            &ns.name,
            "create",
            "--dry-run=server",
            "-o",
            "name",
            "-f",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pod.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
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

/// Deletes a cluster-scoped webhook configuration when dropped (also while a test unwinds).
struct ConfigGuard(std::path::PathBuf, String);

fn scopeguard(kubeconfig: std::path::PathBuf, name: String) -> ConfigGuard {
    ConfigGuard(kubeconfig, name)
}

impl Drop for ConfigGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.0)
            .args([
                "delete",
                "mutatingwebhookconfiguration",
                &self.1,
                "--ignore-not-found",
            ])
            .output();
    }
}

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

/// Readiness: `/readyz` fails while the ServiceAccount cache has not synced (here: an API
/// server that never answers), though the process is alive and holds a certificate. A probe
/// that passed earlier would let `helm --wait` and pod creation race the webhook.
#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn webhook_is_not_ready_before_its_service_account_cache_syncs() {
    let cp = wif_e2e::control_plane();
    let dir = tempfile::Builder::new()
        .prefix("wif-e2e-ready-")
        .tempdir()
        .unwrap();
    let now = time::OffsetDateTime::now_utc();
    let ca = wif_webhook::selfcert::generate_ca("wif-e2e", now, Duration::from_secs(3600)).unwrap();
    let leaf = wif_webhook::selfcert::issue_cert(
        &ca.cert_pem,
        &ca.key_pem,
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap()],
        now,
        Duration::from_secs(3600),
    )
    .unwrap();
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
    // The test cluster's kubeconfig, pointed at a port where nothing listens (port 1 is
    // privileged: no test process can hold it).
    let kubeconfig = std::fs::read_to_string(&cp.kubeconfig)
        .unwrap()
        .replace(&cp.server, "https://127.0.0.1:1");
    std::fs::write(dir.path().join("kubeconfig"), kubeconfig).unwrap();
    let log = dir.path().join("webhook.log");
    let child = std::process::Command::new(wif_bin())
        .args(["webhook", "--tenant-id", "72f988bf-86f1-41af-91ab-2d7cd011db47"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--tls-cert-file")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key-file")
        .arg(dir.path().join("tls.key"))
        .args(["--log-format", "json"])
        .env("KUBECONFIG", dir.path().join("kubeconfig"))
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start wif webhook");
    let _guard = wif_e2e::ChildGuard {
        child,
        name: "wif webhook (unreachable API server)".into(),
    };
    // The process reports the address it bound.
    let admin = eventually(
        "the webhook's admin address in its log",
        Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let line = text.lines().find(|l| l.contains("webhook listening"))?;
            let at = line.find("\"admin\":\"")? + "\"admin\":\"".len();
            Some(line[at..].split('"').next()?.to_owned())
        },
    )
    .await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let health = http.get(format!("http://{admin}/healthz")).send().await.unwrap();
    assert!(health.status().is_success(), "alive");
    for _ in 0..10 {
        let ready = http.get(format!("http://{admin}/readyz")).send().await.unwrap();
        assert_eq!(ready.status().as_u16(), 503, "ready before its cache synced");
        let body = ready.text().await.unwrap();
        assert!(body.contains("ServiceAccount cache not synced"), "{body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A Deployment of one labelled pod running the pause image (it runs until deleted).
fn deployment(name: &str, sa: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {USE_LABEL: "true", "app": name}},
                "spec": {
                    "serviceAccountName": sa,
                    "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "app", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}]
                }
            }
        }
    }))
    .unwrap()
}

/// The Running pods of Deployment `app` (not being deleted).
async fn running(ns: &TestNs, app: &str) -> Vec<Pod> {
    ns.api::<Pod>()
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && wif_e2e::node::phase(p) == "Running")
        .collect()
}

/// Issue 15 on the real node: the kube-controller-manager's Deployment and ReplicaSet
/// controllers, pods that really run. With the webhook down (failurePolicy Ignore) two
/// Deployments' labelled pods start unmutated and Running; the controller reports each once
/// (Event NotMutated, gauge 2). Once the webhook is back, with `--recycle-unmutated`:
/// - `web`'s pod is evicted and the ReplicaSet's replacement is mutated and runs;
/// - `guarded`'s pod is protected by a PodDisruptionBudget with `maxUnavailable: 0`: the
///   eviction is refused (Event EvictionBlocked naming the budget, once), retried with a
///   doubling backoff (counted over a bounded window: no hot loop), and the pod keeps running.
#[tokio::test]
#[ignore = "needs root, the test node (make node-deps, make images) and the wif binary (make e2e)"]
async fn on_the_node_running_unmutated_pods_are_recycled_and_a_pdb_blocks_without_a_hot_loop() {
    let node = wif_e2e::node::node();
    let ns = node.namespace("unmutated-node").await;
    ns.service_account("app", &[(CLIENT_ID_ANNOTATION, CLIENT_ID)])
        .await;
    let _down = webhook_down(&ns).await;
    let deployments: Api<Deployment> = ns.api();
    for name in ["web", "guarded"] {
        deployments
            .create(&PostParams::default(), &deployment(name, "app"))
            .await
            .unwrap();
    }
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": {"name": "guarded"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {"app": "guarded"}}}
    }))
    .unwrap();
    ns.api::<PodDisruptionBudget>()
        .create(&PostParams::default(), &pdb)
        .await
        .unwrap();
    let mut first = Vec::new();
    for app in ["web", "guarded"] {
        let pod = eventually(
            &format!("{app}'s pod Running"),
            Duration::from_secs(60),
            || async { running(&ns, app).await.into_iter().next() },
        )
        .await;
        assert!(
            !is_mutated(&pod),
            "{app}: the webhook is down, the pod must be unmutated"
        );
        first.push(pod.name_any());
    }
    let (web_1, guarded_1) = (first[0].clone(), first[1].clone());

    let env = ControllerEnv::start(&ns, json!({}), json!({})).await;
    let ctl = ControllerProcess::start(
        &ns,
        &env,
        &ControllerOptions {
            identity: format!("e2e-unmutated-{}", ns.name),
            overrides: vec![
                ("--recycle-unmutated", "true".into()),
                ("--recycle-retry", "2s".into()),
                ("--recycle-per-minute", "5".into()),
            ],
            ..ControllerOptions::default()
        },
    )
    .await;
    for pod in [&web_1, &guarded_1] {
        let note = eventually(
            &format!("Event NotMutated on {pod}"),
            Duration::from_secs(30),
            || async {
                events(&ns, pod)
                    .await
                    .into_iter()
                    .find(|(r, _)| r == "NotMutated")
                    .map(|(_, n)| n)
            },
        )
        .await;
        assert!(note.contains("failurePolicy: Ignore"), "cause: {note}");
    }
    let gauge = || async { ctl.metric("wif_unmutated_pods", &[("namespace", &ns.name)]).await };
    eventually("gauge at 2", Duration::from_secs(10), || async {
        (gauge().await == 2.0).then_some(())
    })
    .await;

    let _back = webhook_back(&ns).await;
    // web: evicted, and the ReplicaSet's replacement is mutated and runs.
    let pods: Api<Pod> = ns.api();
    eventually(&format!("{web_1} evicted"), Duration::from_secs(30), || async {
        pods.get_opt(&web_1)
            .await
            .unwrap()
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    let replacement = eventually("web's replacement Running", Duration::from_secs(60), || async {
        running(&ns, "web")
            .await
            .into_iter()
            .find(|p| p.name_any() != web_1)
    })
    .await;
    assert!(is_mutated(&replacement), "the replacement must be mutated");
    assert!(
        events(&ns, &web_1).await.iter().any(|(r, _)| r == "Recycled"),
        "{:?}",
        events(&ns, &web_1).await
    );

    // guarded: the budget refuses; reported once, retried with backoff, the pod keeps running.
    let note = eventually(
        &format!("Event EvictionBlocked on {guarded_1}"),
        Duration::from_secs(30),
        || async {
            events(&ns, &guarded_1)
                .await
                .into_iter()
                .find(|(r, _)| r == "EvictionBlocked")
                .map(|(_, n)| n)
        },
    )
    .await;
    assert!(note.contains("PodDisruptionBudget"), "{note}\n{}", ctl.logs());
    let refused = || async { ctl.metric("wif_unmutated_eviction_failures_total", &[]).await };
    let before = refused().await;
    let window = Duration::from_secs(12);
    tokio::time::sleep(window).await;
    let after = refused().await;
    // 2 s, 4 s, 8 s …: two or three attempts in 12 s; every 1 s tick would be twelve.
    assert!(
        (1.0..=4.0).contains(&(after - before)),
        "eviction attempts in {window:?}: {before} → {after}\n{}",
        ctl.logs()
    );
    let blocked = events(&ns, &guarded_1).await;
    assert_eq!(
        blocked.iter().filter(|(r, _)| r == "EvictionBlocked").count(),
        1,
        "reported once: {blocked:?}"
    );
    let guarded = pods.get(&guarded_1).await.unwrap();
    assert!(guarded.metadata.deletion_timestamp.is_none() && wif_e2e::node::phase(&guarded) == "Running");
    assert_eq!(ctl.metric("wif_unmutated_pods_recycled_total", &[]).await, 1.0);
    eventually("gauge at 1 (guarded)", Duration::from_secs(10), || async {
        (gauge().await == 1.0).then_some(())
    })
    .await;
}
