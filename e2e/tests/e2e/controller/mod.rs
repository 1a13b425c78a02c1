//! The controller end to end: `wif controller` processes against the real API server and the
//! emulator standing in for Graph, ARM and Entra's token endpoint.

mod access_token;
mod conditions;
mod lifecycle;
mod resilience;
mod validation;

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
