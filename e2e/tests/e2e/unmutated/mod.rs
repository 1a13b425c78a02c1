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

mod on_the_node;
mod other_webhook;
mod readiness;
mod recycling;
mod skips;

use std::time::Duration;

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

use crate::doctor::doctor;

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

/// Deletes a cluster-scoped webhook configuration when dropped (also while a test unwinds).
struct ConfigGuard(std::path::PathBuf, String);

fn scopeguard(kubeconfig: std::path::PathBuf, name: String) -> ConfigGuard {
    ConfigGuard(kubeconfig, name)
}

impl Drop for ConfigGuard {
    fn drop(&mut self) {
        wif_e2e::cluster::delete_quietly(&self.0, "mutatingwebhookconfiguration", &self.1);
    }
}
