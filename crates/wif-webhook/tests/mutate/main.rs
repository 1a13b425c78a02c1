//! Table tests of the pure mutation: every rule of DESIGN.md §3 and the upstream cases.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod audience;
mod collisions;
mod container_identities;
mod expiration;
mod extra_tokens;
mod idempotence;
mod injection;
mod named_identities;
mod odd_input;
mod skip_containers;
mod variables;
mod warnings;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSpec, ProjectedVolumeSource,
        ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use rstest::rstest;
use serde_json::json;
use wif_api::{AuthorityHost, Cloud, MutationConfig};
use wif_webhook::{Denial, Edit, mutate};

const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const TENANT: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";

// === fixtures ===

fn container(name: &str) -> Container {
    Container {
        name: name.to_owned(),
        image: Some("busybox".to_owned()),
        ..Container::default()
    }
}

fn pod() -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("apps".into()),
            labels: Some(BTreeMap::from([(
                "azure.workload.identity/use".into(),
                "true".into(),
            )])),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            service_account_name: Some("api".into()),
            init_containers: Some(vec![container("init")]),
            containers: vec![container("app"), container("sidecar")],
            ..PodSpec::default()
        }),
        status: None,
    }
}

fn sa(annotations: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some("api".into()),
        namespace: Some("apps".into()),
        annotations: Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        ),
        ..ObjectMeta::default()
    }
}

fn annotated_sa() -> ObjectMeta {
    sa(&[("azure.workload.identity/client-id", CLIENT)])
}

fn cfg() -> MutationConfig {
    MutationConfig::new(TENANT, Cloud::Public)
}

trait PodExt {
    fn annotate(self, key: &str, value: &str) -> Self;
    fn label(self, key: &str, value: &str) -> Self;
    fn with_spec(self, f: impl FnOnce(&mut PodSpec)) -> Self;
}

impl PodExt for Pod {
    fn annotate(mut self, key: &str, value: &str) -> Self {
        self.metadata
            .annotations
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }
    fn label(mut self, key: &str, value: &str) -> Self {
        self.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(key.into(), value.into());
        self
    }
    fn with_spec(mut self, f: impl FnOnce(&mut PodSpec)) -> Self {
        f(self.spec.as_mut().unwrap());
        self
    }
}

/// Mutates and returns the resulting pod (asserting the patch agrees with the typed result).
fn mutated(pod: &Pod, sa: &ObjectMeta, cfg: &MutationConfig) -> (Pod, Vec<String>) {
    let m = mutate(pod, sa, cfg).expect("allowed");
    let mut typed = pod.clone();
    m.apply(&mut typed);
    let mut raw = serde_json::to_value(pod).unwrap();
    json_patch::patch(&mut raw, &m.patch().unwrap()).expect("patch applies");
    assert_eq!(
        raw,
        serde_json::to_value(&typed).unwrap(),
        "patch and typed result differ"
    );
    (typed, m.warnings)
}

fn env_of(c: &Container) -> Vec<(String, String)> {
    c.env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_else(|| "<from>".into())))
        .collect()
}

fn find<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == name)
        .unwrap()
}

fn expected_env(client: Option<&str>, tenant: &str) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if let Some(c) = client {
        v.push(("AZURE_CLIENT_ID".into(), c.into()));
    }
    v.push(("AZURE_TENANT_ID".into(), tenant.into()));
    v.push((
        "AZURE_FEDERATED_TOKEN_FILE".into(),
        "/var/run/secrets/azure/tokens/azure-identity-token".into(),
    ));
    v.push((
        "AZURE_AUTHORITY_HOST".into(),
        "https://login.microsoftonline.com/".into(),
    ));
    v
}

fn token_volume(pod: &Pod) -> Option<&Volume> {
    pod.spec
        .as_ref()?
        .volumes
        .as_ref()?
        .iter()
        .find(|v| v.name == "azure-identity-token")
}

fn expiration(pod: &Pod) -> i64 {
    token_volume(pod)
        .unwrap()
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap()
        .expiration_seconds
        .unwrap()
}

fn has_token_mount(c: &Container) -> bool {
    c.volume_mounts.iter().flatten().any(|m| {
        m.name == "azure-identity-token"
            && m.mount_path == "/var/run/secrets/azure/tokens"
            && m.read_only == Some(true)
    })
}

/// Asserts that `err` refuses annotation `key` with `value` on pod apps/web.
#[track_caller]
fn assert_invalid_annotation(err: &Denial, key: &str, value: &str) {
    match err {
        Denial::InvalidAnnotation {
            object,
            key: k,
            value: v,
            ..
        } => assert_eq!((object.as_str(), *k, v.as_str()), ("pod apps/web", key, value)),
        other => panic!("{other:?}"),
    }
}

/// A projected volume `volume_name` with one token at `path`, as a user might declare it.
fn token_projection(volume_name: &str, path: &str) -> Volume {
    Volume {
        name: volume_name.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: Some("custom".into()),
                    expiration_seconds: Some(7200),
                    path: path.into(),
                }),
                ..VolumeProjection::default()
            }]),
            default_mode: None,
        }),
        ..Volume::default()
    }
}

// === beyond upstream: named identities, identity per container, audience, extra tokens ===

const READER: &str = "22222222-2222-2222-2222-222222222222";
const ADMIN: &str = "33333333-3333-3333-3333-333333333333";
const OTHER_TENANT: &str = "99999999-9999-9999-9999-999999999999";

fn multi_sa() -> ObjectMeta {
    sa(&[
        ("azure.workload.identity/client-id", CLIENT),
        ("azure.workload.identity/client-id.reader", READER),
        ("azure.workload.identity/client-id.read-write", ADMIN),
        ("azure.workload.identity/tenant-id.read-write", OTHER_TENANT),
    ])
}

fn var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

fn sources(pod: &Pod) -> Vec<(String, String, i64)> {
    token_volume(pod)
        .unwrap()
        .projected
        .as_ref()
        .unwrap()
        .sources
        .iter()
        .flatten()
        .map(|s| {
            let t = s.service_account_token.as_ref().unwrap();
            (
                t.path.clone(),
                t.audience.clone().unwrap(),
                t.expiration_seconds.unwrap(),
            )
        })
        .collect()
}
