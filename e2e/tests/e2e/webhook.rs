//! The webhook through the API server: pods are created through the API and the stored pod is
//! asserted.

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::PostParams;
use serde_json::json;
use wif_e2e::{TestNs, WebhookOptions, WebhookProcess, controller::metric_sum};

pub const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

pub fn pod(name: &str, sa: &str, labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "serviceAccountName": sa,
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [{"name": "app", "image": "busybox"}, {"name": "sidecar", "image": "busybox"}]
        }
    }))
    .unwrap()
}

pub fn labelled(name: &str, sa: &str) -> Pod {
    pod(
        name,
        sa,
        json!({"azure.workload.identity/use": "true"}),
        json!({}),
    )
}

pub fn env(c: &Container, name: &str) -> Vec<String> {
    c.env
        .iter()
        .flatten()
        .filter(|e| e.name == name)
        .map(|e| e.value.clone().unwrap_or_default())
        .collect()
}

pub fn assert_injected(c: &Container, tenant: &str) {
    assert_eq!(env(c, "AZURE_CLIENT_ID"), vec![CLIENT.to_owned()], "{}", c.name);
    assert_eq!(env(c, "AZURE_TENANT_ID"), vec![tenant.to_owned()], "{}", c.name);
    assert_eq!(
        env(c, "AZURE_FEDERATED_TOKEN_FILE"),
        vec!["/var/run/secrets/azure/tokens/azure-identity-token".to_owned()],
        "{}",
        c.name
    );
    assert_eq!(
        env(c, "AZURE_AUTHORITY_HOST"),
        vec!["https://login.microsoftonline.com/".to_owned()]
    );
    let mounts: Vec<_> = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| m.name == "azure-identity-token")
        .collect();
    assert_eq!(mounts.len(), 1, "{}: exactly one token mount", c.name);
    assert_eq!(mounts[0].mount_path, "/var/run/secrets/azure/tokens");
    assert_eq!(mounts[0].read_only, Some(true));
}

pub fn assert_untouched(p: &Pod) {
    let spec = p.spec.as_ref().unwrap();
    assert!(
        spec.volumes
            .iter()
            .flatten()
            .all(|v| v.name != "azure-identity-token")
    );
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        assert!(
            c.env.iter().flatten().all(|e| !e.name.starts_with("AZURE_")),
            "{}",
            c.name
        );
    }
}

async fn setup(prefix: &str) -> (TestNs, WebhookProcess) {
    let ns = TestNs::new(prefix).await;
    ns.service_account("api", &[("azure.workload.identity/client-id", CLIENT)])
        .await;
    let hook = WebhookProcess::start(&ns, WebhookOptions::default()).await;
    (ns, hook)
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn labelled_pod_is_stored_with_volume_mounts_and_variables() {
    let (ns, hook) = setup("inject").await;
    let pods = ns.api::<Pod>();
    pods.create(&PostParams::default(), &labelled("web", "api"))
        .await
        .unwrap();
    let stored = pods.get("web").await.unwrap();
    let spec = stored.spec.as_ref().unwrap();
    let vol = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "azure-identity-token")
        .expect("token volume");
    let sat = vol.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(sat.audience.as_deref(), Some("api://AzureADTokenExchange"));
    assert_eq!(sat.expiration_seconds, Some(3600));
    assert_eq!(sat.path, "azure-identity-token");
    let tenant = WebhookOptions::default().tenant_id;
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        assert_injected(c, &tenant);
    }
    // The API server's own ServiceAccount admission ran too: both projected volumes are there.
    assert!(
        spec.volumes
            .iter()
            .flatten()
            .any(|v| v.name.starts_with("kube-api-access-"))
    );
    drop(hook);
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn unlabelled_and_otherwise_labelled_pods_are_untouched() {
    let (ns, _hook) = setup("untouched").await;
    let pods = ns.api::<Pod>();
    for (name, labels) in [
        ("nolabel", json!({})),
        ("false", json!({"azure.workload.identity/use": "false"})),
        ("capital", json!({"azure.workload.identity/use": "True"})),
    ] {
        pods.create(&PostParams::default(), &pod(name, "api", labels, json!({})))
            .await
            .unwrap();
        assert_untouched(&pods.get(name).await.unwrap());
    }
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn missing_service_account_fails_naming_it() {
    let (ns, _hook) = setup("nosa").await;
    let err = ns
        .api::<Pod>()
        .create(&PostParams::default(), &labelled("web", "ghost"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ghost"), "{msg}");
    assert!(ns.api::<Pod>().get_opt("web").await.unwrap().is_none());
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn out_of_range_token_expiration_is_refused_naming_the_bounds() {
    let (ns, _hook) = setup("expiry").await;
    let p = pod(
        "web",
        "api",
        json!({"azure.workload.identity/use": "true"}),
        json!({"azure.workload.identity/service-account-token-expiration": "100"}),
    );
    let msg = ns
        .api::<Pod>()
        .create(&PostParams::default(), &p)
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("between 3600 and 86400"), "{msg}");
    assert!(msg.contains("denied the request"), "{msg}");
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn warnings_reach_the_client() {
    let (ns, _hook) = setup("warn").await;
    ns.service_account("bare", &[]).await;
    let manifest = serde_json::to_string(&labelled("web", "bare")).unwrap();
    let out = ns
        .cp
        .kubectl_stdin(&["create", "-n", &ns.name, "-f", "-", "-o", "name"], &manifest);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Warning:") && stderr.contains("has no azure.workload.identity/client-id"),
        "{stderr}"
    );
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn server_dry_run_returns_the_mutated_pod_and_stores_nothing() {
    let (ns, _hook) = setup("dryrun").await;
    let manifest = serde_json::to_string(&labelled("web", "api")).unwrap();
    let out = ns.cp.kubectl_stdin(
        &[
            "create",
            "--dry-run=server",
            "-n",
            &ns.name,
            "-f",
            "-",
            "-o",
            "json",
        ],
        &manifest,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let returned: Pod = serde_json::from_slice(&out.stdout).unwrap();
    let spec = returned.spec.as_ref().unwrap();
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        assert_injected(c, &WebhookOptions::default().tenant_id);
    }
    assert!(
        ns.api::<Pod>().get_opt("web").await.unwrap().is_none(),
        "nothing stored"
    );
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn reinvocation_mutates_a_container_added_by_a_later_webhook_exactly_once() {
    let (ns, _hook) = setup("reinvoke").await;
    let adder = crate::adder::ContainerAdder::start(&ns).await;
    ns.api::<Pod>()
        .create(&PostParams::default(), &labelled("web", "api"))
        .await
        .unwrap();
    let stored = ns.api::<Pod>().get("web").await.unwrap();
    let spec = stored.spec.as_ref().unwrap();
    assert!(
        spec.containers.iter().any(|c| c.name == "added-later"),
        "the second webhook ran"
    );
    for c in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        assert_injected(c, &WebhookOptions::default().tenant_id);
    }
    assert_eq!(
        spec.volumes
            .iter()
            .flatten()
            .filter(|v| v.name == "azure-identity-token")
            .count(),
        1
    );
    drop(adder);
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn with_the_webhook_stopped_labelled_pods_fail_and_others_are_created() {
    let (ns, mut hook) = setup("down").await;
    hook.stop();
    let pods = ns.api::<Pod>();
    let err = pods
        .create(&PostParams::default(), &labelled("web", "api"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("failed calling webhook"), "{err}");
    pods.create(&PostParams::default(), &pod("plain", "api", json!({}), json!({})))
        .await
        .unwrap();
    assert_untouched(&pods.get("plain").await.unwrap());
}

/// Leaf certificate served on 127.0.0.1:`port`, verified against `ca_pem`.
async fn served_leaf(port: u16, ca_pem: &[u8]) -> Vec<u8> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect("127.0.0.1".try_into().unwrap(), tcp)
        .await
        .expect("the served certificate verifies against the published caBundle");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn self_managed_certificates_are_created_published_and_shared_by_replicas() {
    use k8s_openapi::api::{admissionregistration::v1::MutatingWebhookConfiguration, core::v1::Secret};
    let ns = TestNs::new("selfcert").await;
    ns.service_account("api", &[("azure.workload.identity/client-id", CLIENT)])
        .await;
    let config = format!("wif-e2e-{}", ns.name);
    // Two replicas start together; they race to create the Secret.
    let (a, b) = tokio::join!(
        WebhookProcess::start_self_managed(&ns, &config, "wif-webhook-tls", true),
        WebhookProcess::start_self_managed(&ns, &config, "wif-webhook-tls", false),
    );
    let secret = ns.api::<Secret>().get("wif-webhook-tls").await.unwrap();
    let data = secret.data.unwrap();
    let bundle = &data["ca-bundle.crt"].0;
    assert_eq!(
        String::from_utf8_lossy(bundle)
            .matches("BEGIN CERTIFICATE")
            .count(),
        1,
        "one CA"
    );

    let api = kube::Api::<MutatingWebhookConfiguration>::all(ns.client.clone());
    // A replica that started before the configuration existed publishes on its next check
    // (seconds later, not at the hourly one).
    let mut published = None;
    for _ in 0..150 {
        published = api.get(&config).await.unwrap().webhooks.unwrap()[0]
            .client_config
            .ca_bundle
            .clone();
        if published.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        published.map(|b| b.0),
        Some(bundle.clone()),
        "the webhook published its CA"
    );

    let (leaf_a, leaf_b) = (
        served_leaf(a.port, bundle).await,
        served_leaf(b.port, bundle).await,
    );
    assert_eq!(
        leaf_a, leaf_b,
        "both replicas serve the certificate in the Secret"
    );

    wif_e2e::webhook::wait_until_called(&ns).await;
    ns.api::<Pod>()
        .create(&PostParams::default(), &labelled("web", "api"))
        .await
        .unwrap();
    assert_injected(
        &find(&ns.api::<Pod>().get("web").await.unwrap(), "app"),
        &WebhookOptions::default().tenant_id,
    );

    // A restarted replica adopts the existing Secret instead of issuing a new CA.
    drop(b);
    let c = WebhookProcess::start_self_managed(&ns, &config, "wif-webhook-tls", false).await;
    let after = ns.api::<Secret>().get("wif-webhook-tls").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, secret.metadata.resource_version,
        "nothing rewritten"
    );
    assert_eq!(served_leaf(c.port, bundle).await, leaf_a);
    drop(a);
}

fn find(p: &Pod, name: &str) -> Container {
    p.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .find(|c| c.name == name)
        .unwrap()
        .clone()
}

/// The ServiceAccount cache receives its initial list as a streaming list where the API server
/// serves one (`WatchList`, on by default since 1.34) and in pages where it refuses (the gate off,
/// as on 1.27–1.33): either way a ServiceAccount that existed before the webhook started is served
/// from the cache, without a lookup on the API server.
#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn the_service_account_cache_streams_its_initial_list_and_falls_back_to_pages() {
    for (gates, strategy) in [(None, "streaming"), (Some("WatchList=false"), "paged")] {
        let cp = match gates {
            None => wif_e2e::cluster::control_plane(),
            Some(gates) => wif_e2e::cluster::private_control_plane(&["--apiserver-feature-gates", gates]),
        };
        let ns = TestNs::on(cp, "sa-list").await;
        ns.service_account("api", &[("azure.workload.identity/client-id", CLIENT)])
            .await;
        let hook = WebhookProcess::start(&ns, WebhookOptions::default()).await;
        let logs = hook.logs();
        let synced = logs
            .lines()
            .find(|l| l.contains("ServiceAccount cache synced"))
            .unwrap_or_else(|| panic!("no sync line:\n{logs}"));
        assert!(synced.contains(strategy), "{gates:?}: {synced}");
        assert_eq!(
            logs.contains("does not serve streaming lists"),
            gates.is_some(),
            "{gates:?}:\n{logs}"
        );

        let metrics = || async {
            reqwest::get(format!("http://127.0.0.1:{}/metrics", hook.admin_port))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        };
        let misses = |text: &str| metric_sum(text, "wif_webhook_service_account_cache_misses_total", &[]);
        // The start-up probe pods use a ServiceAccount without wif keys: those are misses.
        let before = metrics().await;
        assert!(
            metric_sum(&before, "wif_webhook_cached_service_accounts", &[]) >= 1.0,
            "{gates:?}:\n{before}"
        );
        let pods = ns.api::<Pod>();
        pods.create(&PostParams::default(), &labelled("web", "api"))
            .await
            .unwrap();
        let stored = pods.get("web").await.unwrap();
        for c in &stored.spec.as_ref().unwrap().containers {
            assert_eq!(
                env(c, "AZURE_CLIENT_ID"),
                vec![CLIENT.to_owned()],
                "{gates:?}: {}",
                c.name
            );
        }
        assert_eq!(
            misses(&metrics().await),
            misses(&before),
            "{gates:?}: the pod's ServiceAccount came from the cache"
        );
    }
}
