//! The Helm chart running on the node: its own webhook and controller Deployments serve, the
//! controller authenticates with the token the kubelet projected into its pod, and losing a pod
//! of either Deployment fails no admission.

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Pod, ServiceAccount},
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, EvictParams, ListParams, PostParams},
};
use serde_json::{Value, json};
use wif_api::FederatedIdentityBinding;
use wif_e2e::{
    TestNs,
    entra::{TENANT, claims},
    node::{Node, TEST_CLIENT_IMAGE, node, phase},
};

use super::SCOPE;

/// Applications the chart test's controller binds.
const APP_FIRST: &str = "5c0e7a2b-1d3f-4e6a-8b9c-0d1e2f3a4b5c";
const APP_SECOND: &str = "6d1f8b3c-2e4a-4f7b-9cad-1e2f3a4b5c6d";
const CONTROLLER_APP: &str = "7e2a9c4d-3f5b-4a8c-8dbe-2f3a4b5c6d7e";

/// `helm uninstall` (and the release's cluster-scoped objects with it) on drop, panic or not.
struct Installed {
    helm: wif_e2e::helm::Helm,
    release: String,
    namespace: String,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = self.helm.run([
            "uninstall",
            self.release.as_str(),
            "--namespace",
            self.namespace.as_str(),
            "--wait",
            "--timeout",
            "60s",
        ]);
    }
}

fn kubectl_json(node: &Node, args: &[&str]) -> Value {
    let out = node
        .cp
        .kubectl()
        .args(args)
        .args(["-o", "json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
}

fn kubectl_text(node: &Node, args: &[&str]) -> String {
    let out = node.cp.kubectl().args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Pods, Deployments, Lease and Events of the release, the controller pods' logs, the kubelet.
async fn release_report(node: &Node, ns: &TestNs) -> String {
    let mut s = kubectl_text(
        node,
        &[
            "get",
            "pods,deploy,pdb,lease,endpoints",
            "-o",
            "wide",
            "-n",
            &ns.name,
        ],
    );
    s += &kubectl_text(node, &["get", "events", "-n", &ns.name]);
    if let Ok(pods) = ns.api::<Pod>().list(&Default::default()).await {
        for p in pods {
            let name = p.name_any();
            let c = p
                .spec
                .as_ref()
                .map(|s| s.containers[0].name.clone())
                .unwrap_or_default();
            let logs = node.logs(ns, &name, &c).await;
            let tail: Vec<&str> = logs.lines().rev().take(25).collect();
            s += &format!("--- {name} (tail) ---\n");
            for l in tail.into_iter().rev() {
                s += l;
                s.push('\n');
            }
        }
    }
    s + "--- kubelet.log (tail) ---\n" + &node.kubelet_log(20)
}

/// Ready replicas of a Deployment and its pods' names (Ready ones only).
async fn ready_pods(ns: &TestNs, selector: &str) -> Vec<String> {
    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap();
    pods.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .map(|p| p.name_any())
        .collect()
}

/// The Lease holder (a pod name plus a suffix).
async fn lease_holder(ns: &TestNs, name: &str) -> Option<String> {
    ns.api::<Lease>()
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec?.holder_identity)
}

fn fic_policy_and_binding(app_ns: &str, sa: &str, binding: &str, client: &str) -> (Value, Value) {
    (
        json!({
            "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityPolicy",
            "metadata": {"name": format!("e2e-{app_ns}-{binding}")},
            "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": app_ns}},
                     "applications": [client]}}),
        json!({
            "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityBinding",
            "metadata": {"name": binding, "namespace": app_ns},
            "spec": {"serviceAccountName": sa, "identity": {"application": {"clientId": client}}}}),
    )
}

fn kubectl_apply(node: &Node, obj: &Value) {
    let out = node.cp.kubectl_stdin(&["apply", "-f", "-"], &obj.to_string());
    assert!(
        out.status.success(),
        "kubectl apply {obj}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn wait_binding_ready(node: &Node, ns: &TestNs, release_ns: &TestNs, name: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let api: Api<FederatedIdentityBinding> = ns.api();
    loop {
        if let Ok(b) = api.get(name).await
            && wif_e2e::controller::is_ready(&b)
        {
            return;
        }
        if Instant::now() > deadline {
            let b = api.get(name).await.ok().and_then(|b| b.status);
            panic!(
                "binding {}/{name} not Ready within {timeout:?}: {}\n{}",
                ns.name,
                serde_json::to_string_pretty(&b).unwrap_or_default(),
                release_report(node, release_ns).await
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A labelled pod of ServiceAccount `sa` that runs `wif token` with only what the webhook
/// injected (plus the emulator's CA, as a cluster distributes a private CA).
fn token_pod(name: &str, sa: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"azure.workload.identity/use": "true"}},
        "spec": {
            "serviceAccountName": sa,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true},
            "containers": [{
                "name": "app", "image": TEST_CLIENT_IMAGE, "imagePullPolicy": "Never",
                "command": ["/wif", "token", "--scope", SCOPE, "--output", "json"],
                "env": [{"name": "SSL_CERT_FILE", "value": "/etc/entra-ca/ca.crt"}],
                "volumeMounts": [{"name": "entra-ca", "mountPath": "/etc/entra-ca", "readOnly": true}],
                "securityContext": {"readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                                    "capabilities": {"drop": ["ALL"]}}
            }],
            "volumes": [{"name": "entra-ca", "configMap": {"name": "entra-ca"}}]
        }
    }))
    .unwrap()
}

fn has_token_volume(p: &Pod) -> bool {
    p.spec
        .as_ref()
        .and_then(|s| s.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.name == wif_api::TOKEN_VOLUME_NAME))
}

/// Issue 12 item 3. `helm install charts/wif` with its defaults and the local image, and nothing
/// else started by the test but the emulator (on the pod network's gateway):
/// - both webhook pods become Ready with the certificates they made and published themselves;
/// - the controller Deployment's leader authenticates to the emulator with its own projected
///   token (only the chart's controller ServiceAccount is trusted by the controller's
///   application) and makes a FederatedIdentityBinding Ready;
/// - a labelled pod is mutated through the webhook's Service, runs, and exchanges its token for
///   the identity the controller bound (the credential exists only because the controller wrote
///   it);
/// - killing the leader's pod hands the Lease to the other replica, which makes a new binding
///   Ready;
/// - evicting a webhook pod while pods are being created fails no admission (two replicas, a
///   PodDisruptionBudget that refuses to evict the second one at the same time).
#[tokio::test]
#[ignore = "needs root, the test node (make node-deps, make images) and the wif binary (make e2e)"]
async fn the_chart_serves_on_the_node_and_survives_losing_a_pod_of_each_deployment() {
    let node = node();
    let release_ns = node.namespace("node-chart").await;
    let app = node.namespace("node-chart-app").await;
    let suffix = release_ns.name.rsplit('-').next().unwrap().to_owned();
    let release = format!("wif-{suffix}");
    let controller_sa = format!("{release}-controller");
    let (entra, _entra_dir) = node
        .emulator(json!({"tenants": [{"id": TENANT, "applications": [
            {"displayName": "wif-controller", "appId": CONTROLLER_APP,
             "federatedIdentityCredentials": [{
                "name": "wif-controller", "issuer": node.cp.issuer,
                "subject": format!("system:serviceaccount:{}:{controller_sa}", release_ns.name),
                "audiences": ["api://AzureADTokenExchange"]}]},
            {"displayName": "first", "appId": APP_FIRST},
            {"displayName": "second", "appId": APP_SECOND}]}]}))
        .await;
    let authority = entra.authority_host();
    let ca_file = _entra_dir.path().join("emulator-ca.pem");
    std::fs::write(&ca_file, entra.ca_pem()).unwrap();

    let helm = wif_e2e::helm::on(&node.cp);
    let started = Instant::now();
    let install = helm.run([
        "install",
        release.as_str(),
        wif_e2e::helm::chart().to_str().unwrap(),
        "--namespace",
        &release_ns.name,
        "--set",
        &format!("azure.tenantId={TENANT}"),
        // An authority URL as cloud: pods get it as AZURE_AUTHORITY_HOST, the controller too.
        "--set",
        &format!("azure.cloud={authority}"),
        "--set",
        &format!("controller.clientId={CONTROLLER_APP}"),
        "--set",
        &format!("controller.graphUrl={}", entra.graph_url()),
        "--set",
        &format!("controller.armUrl={}", entra.arm_url()),
        "--set-file",
        &format!("controller.trustCA.pem={}", ca_file.display()),
        "--set",
        "image.pullPolicy=Never",
        // The node's control plane is shared by the node tests: this release mutates and
        // reconciles only this test's application namespace.
        "--set",
        &format!(
            "webhook.namespaceSelector.matchLabels.kubernetes\\.io/metadata\\.name={}",
            app.name
        ),
        "--set",
        &format!("controller.extraArgs[0]=--watch-namespace={}", app.name),
        "--wait",
        "--timeout",
        "180s",
    ]);
    let _installed = Installed {
        helm: wif_e2e::helm::on(&node.cp),
        release: release.clone(),
        namespace: release_ns.name.clone(),
    };
    assert!(
        install.ok,
        "helm install failed:\n{}\n{}\n{}",
        install.stdout,
        install.stderr,
        release_report(&node, &release_ns).await
    );
    eprintln!(
        "e2e: chart installed and its Deployments available after {:?}",
        started.elapsed()
    );

    // The webhook: two Ready pods, the caBundle they published, the Service they serve behind.
    let webhook_sel = format!("app.kubernetes.io/instance={release},app.kubernetes.io/component=webhook");
    let controller_sel =
        format!("app.kubernetes.io/instance={release},app.kubernetes.io/component=controller");
    assert_eq!(
        ready_pods(&release_ns, &webhook_sel).await.len(),
        2,
        "{}",
        release_report(&node, &release_ns).await
    );
    let hook = kubectl_json(
        &node,
        &[
            "get",
            "mutatingwebhookconfiguration",
            &format!("{release}-webhook"),
        ],
    );
    let bundle = hook["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap_or_default();
    assert!(
        !bundle.is_empty(),
        "the webhook pods published their caBundle: {hook}"
    );
    assert_eq!(
        hook["webhooks"][0]["clientConfig"]["service"]["name"],
        format!("{release}-webhook")
    );
    let secret = kubectl_json(
        &node,
        &[
            "get",
            "secret",
            "-n",
            &release_ns.name,
            &format!("{release}-webhook-tls"),
        ],
    );
    assert!(
        secret["data"]["tls.crt"].as_str().is_some_and(|s| !s.is_empty()),
        "the pods wrote their serving certificate: {}",
        secret["metadata"]
    );

    // The controller: its leader makes a binding Ready with its own projected token.
    let lease = format!("{release}-controller");
    let leader = wif_e2e::controller::eventually("a controller leader", Duration::from_secs(60), || {
        let (ns, lease) = (&release_ns, &lease);
        async move { lease_holder(ns, lease).await }
    })
    .await;
    let controllers = ready_pods(&release_ns, &controller_sel).await;
    let leader_pod = controllers
        .iter()
        .find(|p| leader.starts_with(p.as_str()))
        .unwrap_or_else(|| panic!("leader {leader} is none of the pods {controllers:?}"))
        .clone();
    app.service_account("first", &[]).await;
    let (policy, binding) = fic_policy_and_binding(&app.name, "first", "first", APP_FIRST);
    kubectl_apply(&node, &policy);
    kubectl_apply(&node, &binding);
    wait_binding_ready(&node, &app, &release_ns, "first", Duration::from_secs(90)).await;
    let sa = app.api::<ServiceAccount>().get("first").await.unwrap();
    assert_eq!(
        sa.annotations()
            .get(wif_api::CLIENT_ID_ANNOTATION)
            .map(String::as_str),
        Some(APP_FIRST),
        "the controller annotated the ServiceAccount"
    );
    // The controller's pod carries the token volume the chart projects, and no test process
    // ever asked for a token of its ServiceAccount: the credential the emulator honoured was
    // the kubelet's.
    let leader_spec = release_ns.api::<Pod>().get(&leader_pod).await.unwrap();
    assert!(
        leader_spec
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|v| v
                .iter()
                .any(|v| v.projected.is_some() && v.name == "azure-identity-token")),
        "the controller's pod projects its own token"
    );

    // A labelled application pod: mutated through the Service, runs, exchanges its token for the
    // application the controller bound.
    let ca: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "entra-ca"}, "data": {"ca.crt": entra.ca_pem()}}))
    .unwrap();
    app.api::<ConfigMap>()
        .create(&PostParams::default(), &ca)
        .await
        .unwrap();
    let created = app
        .api::<Pod>()
        .create(&PostParams::default(), &token_pod("first", "first"))
        .await
        .expect("create a labelled pod through the chart's webhook");
    assert!(has_token_volume(&created), "mutated through the Service");
    let env = &created.spec.as_ref().unwrap().containers[0].env;
    let authority_env = env
        .iter()
        .flatten()
        .find(|e| e.name == "AZURE_AUTHORITY_HOST")
        .and_then(|e| e.value.clone());
    assert_eq!(authority_env.as_deref(), Some(authority.as_str()));
    node.wait_pod(&app, "first", "Succeeded", Duration::from_secs(90), |p| {
        phase(p) == "Succeeded"
    })
    .await;
    let token = token_of(&node.logs(&app, "first", "app").await);
    assert_app_token(&token, APP_FIRST, "pod of the first binding");

    // Killing the leader's pod: the other replica takes the Lease and reconciles.
    let deleted = Instant::now();
    release_ns
        .api::<Pod>()
        .delete(
            &leader_pod,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await
        .unwrap();
    let new_leader =
        wif_e2e::controller::eventually("a new controller leader", Duration::from_secs(60), || {
            let (ns, lease, old) = (&release_ns, &lease, &leader);
            async move { lease_holder(ns, lease).await.filter(|h| h != old) }
        })
        .await;
    eprintln!(
        "e2e: Lease {lease} moved from {leader} to {new_leader} {:?} after the leader's pod was killed",
        deleted.elapsed()
    );
    assert!(
        !new_leader.starts_with(&leader_pod),
        "the new leader is another pod: {new_leader}"
    );
    app.service_account("second", &[]).await;
    let (policy, binding) = fic_policy_and_binding(&app.name, "second", "second", APP_SECOND);
    kubectl_apply(&node, &policy);
    kubectl_apply(&node, &binding);
    wait_binding_ready(&node, &app, &release_ns, "second", Duration::from_secs(90)).await;

    // The webhook's PodDisruptionBudget: one pod may go, not both at once.
    let pods = app.api::<Pod>();
    let webhook_pods = release_ns.api::<Pod>();
    let pdb_status = || {
        kubectl_json(
            &node,
            &[
                "get",
                "pdb",
                "-n",
                &release_ns.name,
                &format!("{release}-webhook"),
            ],
        )["status"]
            .clone()
    };
    let webhooks = ready_pods(&release_ns, &webhook_sel).await;
    assert_eq!(webhooks.len(), 2, "{webhooks:?}");
    // kube's client retries a 429 for minutes, until the replacement is Ready: not this one.
    let no_retry: Api<Pod> = Api::namespaced(node.cp.client_without_retries().await, &release_ns.name);
    no_retry
        .evict(&webhooks[0], &EvictParams::default())
        .await
        .expect("evict one webhook pod");
    match no_retry.evict(&webhooks[1], &EvictParams::default()).await {
        Err(kube::Error::Api(e)) if e.code == 429 => {}
        other => panic!(
            "the second webhook pod must not be evictable while the first is replaced: {other:?}\nPDB: {}\n{}",
            pdb_status(),
            release_report(&node, &release_ns).await
        ),
    }
    let replaced = |gone: String| {
        let (ns, sel) = (&release_ns, &webhook_sel);
        async move {
            let ready = ready_pods(ns, sel).await;
            (ready.len() == 2 && !ready.contains(&gone)).then_some(ready)
        }
    };
    let webhooks = wif_e2e::controller::eventually(
        "the evicted webhook pod replaced",
        Duration::from_secs(90),
        || replaced(webhooks[0].clone()),
    )
    .await;

    // Evicting each webhook pod in turn while labelled pods are created (dry-run: admission in
    // full, no pods to run): no admission fails, none is admitted unmutated.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (pods, stop) = (pods.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let (mut ok, mut failures) = (0u32, Vec::new());
            // Bounded: at most 4000 creations per worker.
            for i in 0..4000 {
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                let params = PostParams {
                    dry_run: true,
                    ..PostParams::default()
                };
                match pods
                    .create(&params, &token_pod(&format!("load-{worker}-{i}"), "second"))
                    .await
                {
                    Ok(p) if has_token_volume(&p) => ok += 1,
                    Ok(_) => failures.push(format!("load-{worker}-{i}: admitted unmutated")),
                    Err(e) => failures.push(format!("load-{worker}-{i}: {e}")),
                }
            }
            (ok, failures)
        }));
    }
    let mut webhooks = webhooks;
    for round in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let evicted = webhooks[0].clone();
        let evicted_at = Instant::now();
        webhook_pods
            .evict(&evicted, &EvictParams::default())
            .await
            .expect("evict a webhook pod under load");
        webhooks = wif_e2e::controller::eventually(
            "the webhook pod evicted under load replaced",
            Duration::from_secs(90),
            || replaced(evicted.clone()),
        )
        .await;
        // Until the evicted pod is gone (its preStop pause, then its drain), and a little beyond.
        wif_e2e::controller::eventually("the evicted webhook pod gone", Duration::from_secs(60), || {
            let (pods, gone) = (&webhook_pods, &evicted);
            async move { matches!(pods.get_opt(gone).await, Ok(None)).then_some(()) }
        })
        .await;
        eprintln!(
            "e2e: eviction {round} under load: replacement Ready and {evicted} gone {:?} after the eviction",
            evicted_at.elapsed()
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (mut ok, mut failures) = (0, Vec::new());
    for l in load {
        let (o, f) = l.await.unwrap();
        ok += o;
        failures.extend(f);
    }
    eprintln!(
        "e2e: {ok} labelled pods admitted (dry-run) around two webhook evictions, {} failed",
        failures.len()
    );
    assert!(ok >= 20, "too little load to prove anything: {ok}");
    assert!(
        failures.is_empty(),
        "{} of {} admissions failed while webhook pods were evicted:\n{}\n{}",
        failures.len(),
        ok as usize + failures.len(),
        failures.join("\n"),
        release_report(&node, &release_ns).await
    );
    let _ = pods.delete("first", &DeleteParams::default()).await;
}

fn token_of(logs: &str) -> String {
    let line = logs
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("wif token printed no JSON:\n{logs}"));
    let v: Value = serde_json::from_str(line).unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

fn assert_app_token(token: &str, app: &str, what: &str) {
    let c = claims(token);
    assert_eq!(c["tid"], TENANT, "{what}: {c}");
    assert_eq!(c["appid"], app, "{what}: {c}");
}
