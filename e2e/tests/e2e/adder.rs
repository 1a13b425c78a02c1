//! A second mutating webhook that adds a container after ours, to prove reinvocation.

use std::time::Duration;

use axum::{Json, Router, routing::post};
use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::{Api, api::PostParams};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use wif_e2e::{TestNs, webhook::mutating_configuration};
use wif_webhook::{server, tls::CertStore};

pub struct ContainerAdder {
    stop: CancellationToken,
    name: String,
    kubeconfig: std::path::PathBuf,
}

async fn review(Json(review): Json<Value>) -> Json<Value> {
    let uid = review["request"]["uid"].clone();
    let containers = review["request"]["object"]["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut response = json!({"uid": uid, "allowed": true});
    if !containers.iter().any(|c| c["name"] == "added-later") {
        let patch = json!([{"op": "add", "path": "/spec/containers/-", "value": {"name": "added-later", "image": "busybox"}}]);
        response["patchType"] = json!("JSONPatch");
        response["patch"] = json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
    }
    Json(json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}))
}

impl ContainerAdder {
    pub async fn start(ns: &TestNs) -> Self {
        let (ca, leaf) = wif_e2e::webhook::localhost_pki("adder", Duration::from_secs(3600));
        let store = CertStore::new();
        store
            .set_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes(), "adder")
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = CancellationToken::new();
        let router = Router::new().route("/add", post(review));
        tokio::spawn(server::serve_tls(
            listener,
            store,
            router,
            server::Limits::default(),
            stop.clone(),
        ));
        // Sorted after ours by name, so it runs after wif and wif is reinvoked.
        let name = format!("zz-adder-{}", ns.name);
        let cfg: MutatingWebhookConfiguration = mutating_configuration(
            &name,
            "adder.e2e.wif.test",
            &format!("https://127.0.0.1:{port}/add"),
            &ca.cert_pem,
            &ns.name,
            None,
        );
        Api::<MutatingWebhookConfiguration>::all(ns.client.clone())
            .create(&PostParams::default(), &cfg)
            .await
            .unwrap();
        // Wait until the API server calls it (dry-run pods come back with the added container).
        let pods: Api<k8s_openapi::api::core::v1::Pod> = ns.api();
        let probe = crate::webhook::pod("probe2", "api", json!({}), json!({}));
        let pp = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        for _ in 0..100 {
            if let Ok(p) = pods.create(&pp, &probe).await
                && p.spec.unwrap().containers.iter().any(|c| c.name == "added-later")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            stop,
            name,
            kubeconfig: ns.cp.kubeconfig.clone(),
        }
    }
}

impl Drop for ContainerAdder {
    fn drop(&mut self) {
        self.stop.cancel();
        wif_e2e::cluster::delete_quietly(&self.kubeconfig, "mutatingwebhookconfiguration", &self.name);
    }
}
