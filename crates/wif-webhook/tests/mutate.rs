//! Table tests of the pure mutation: every rule of DESIGN.md §3 and the upstream cases.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

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

// === the injection ===

#[test]
fn labelled_pod_gets_volume_mounts_and_variables_in_every_container() {
    let (out, warnings) = mutated(&pod(), &annotated_sa(), &cfg());
    assert!(warnings.is_empty(), "{warnings:?}");
    let vol = token_volume(&out).expect("volume added");
    assert_eq!(
        serde_json::to_value(vol).unwrap(),
        json!({"name": "azure-identity-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": "api://AzureADTokenExchange", "expirationSeconds": 3600, "path": "azure-identity-token"}}]}})
    );
    for name in ["init", "app", "sidecar"] {
        let c = find(&out, name);
        assert_eq!(env_of(c), expected_env(Some(CLIENT), TENANT), "{name}");
        assert!(has_token_mount(c), "{name}");
    }
}

#[rstest]
#[case::absent(None)]
#[case::false_value(Some("false"))]
#[case::empty(Some(""))]
#[case::yes(Some("yes"))]
fn pod_without_the_true_label_is_left_alone(#[case] value: Option<&str>) {
    let mut p = pod();
    p.metadata.labels = value.map(|v| BTreeMap::from([("azure.workload.identity/use".into(), v.into())]));
    let m = mutate(&p, &annotated_sa(), &cfg()).unwrap();
    assert!(m.is_noop());
    assert!(m.warnings.is_empty());
}

#[test]
fn label_with_wrong_case_is_left_alone_with_a_warning() {
    let p = pod().label("azure.workload.identity/use", "True");
    let m = mutate(&p, &annotated_sa(), &cfg()).unwrap();
    assert!(m.is_noop());
    assert_eq!(m.warnings.len(), 1);
    assert!(m.warnings[0].contains("\"True\"") && m.warnings[0].contains("exact value \"true\""));
}

#[test]
fn existing_variables_are_kept_as_the_users_override() {
    let p = pod().with_spec(|s| {
        s.containers[0].env = Some(vec![
            EnvVar {
                name: "AZURE_CLIENT_ID".into(),
                value: Some("mine".into()),
                value_from: None,
            },
            EnvVar {
                name: "AZURE_TENANT_ID".into(),
                value: None,
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.annotations['t']".into(),
                        api_version: None,
                    }),
                    ..EnvVarSource::default()
                }),
            },
        ]);
    });
    let (out, _) = mutated(&p, &annotated_sa(), &cfg());
    let env = env_of(find(&out, "app"));
    assert_eq!(env[0], ("AZURE_CLIENT_ID".into(), "mine".into()));
    assert_eq!(env[1], ("AZURE_TENANT_ID".into(), "<from>".into()));
    assert_eq!(env.len(), 4);
    assert_eq!(env[2].0, "AZURE_FEDERATED_TOKEN_FILE");
    assert_eq!(env[3].0, "AZURE_AUTHORITY_HOST");
}

#[test]
fn existing_volumes_and_mounts_are_appended_to() {
    let p = pod().with_spec(|s| {
        s.volumes = Some(vec![Volume {
            name: "data".into(),
            ..Volume::default()
        }]);
        s.containers[0].volume_mounts = Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            ..VolumeMount::default()
        }]);
    });
    let m = mutate(&p, &annotated_sa(), &cfg()).unwrap();
    let patch = serde_json::to_value(m.patch().unwrap()).unwrap();
    let paths: Vec<&str> = patch
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/spec/volumes/-"), "{paths:?}");
    assert!(paths.contains(&"/spec/containers/0/volumeMounts/-"), "{paths:?}");
    assert!(
        patch.as_array().unwrap().iter().all(|op| op["op"] == "add"),
        "the patch only adds"
    );
    let (out, _) = mutated(&p, &annotated_sa(), &cfg());
    assert_eq!(out.spec.as_ref().unwrap().volumes.as_ref().unwrap().len(), 2);
    assert_eq!(find(&out, "app").volume_mounts.as_ref().unwrap().len(), 2);
}

// === skip-containers ===

#[test]
fn skipped_containers_are_untouched_names_trimmed() {
    let p = pod().annotate("azure.workload.identity/skip-containers", " sidecar ;init;");
    let (out, warnings) = mutated(&p, &annotated_sa(), &cfg());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(find(&out, "sidecar").env.is_none() && find(&out, "sidecar").volume_mounts.is_none());
    assert!(find(&out, "init").env.is_none());
    assert!(has_token_mount(find(&out, "app")));
    assert!(
        token_volume(&out).is_some(),
        "the volume is added even when containers are skipped"
    );
}

#[test]
fn every_container_skipped_still_adds_the_volume() {
    let p = pod().annotate("azure.workload.identity/skip-containers", "init;app;sidecar");
    let (out, _) = mutated(&p, &annotated_sa(), &cfg());
    assert!(token_volume(&out).is_some());
    assert!(
        ["init", "app", "sidecar"]
            .iter()
            .all(|n| find(&out, n).env.is_none())
    );
}

#[test]
fn skip_name_matching_no_container_warns() {
    let p = pod().annotate("azure.workload.identity/skip-containers", "app;sidecarr");
    let (_, warnings) = mutated(&p, &annotated_sa(), &cfg());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("\"sidecarr\"") && warnings[0].contains("matches no container"));
}

#[test]
fn skip_names_are_case_sensitive() {
    let p = pod().annotate("azure.workload.identity/skip-containers", "App");
    let (out, warnings) = mutated(&p, &annotated_sa(), &cfg());
    assert!(has_token_mount(find(&out, "app")));
    assert_eq!(warnings.len(), 1);
}

// === token expiration ===

#[rstest]
#[case::default(None, None, 3600)]
#[case::sa_only(None, Some("7200"), 7200)]
#[case::pod_wins(Some("86400"), Some("7200"), 86400)]
#[case::empty_pod_falls_back_to_sa(Some(""), Some("4000"), 4000)]
#[case::lower_bound(Some("3600"), None, 3600)]
#[case::whitespace(Some(" 5000 "), None, 5000)]
fn token_expiration_precedence(#[case] on_pod: Option<&str>, #[case] on_sa: Option<&str>, #[case] want: i64) {
    let key = "azure.workload.identity/service-account-token-expiration";
    let mut p = pod();
    if let Some(v) = on_pod {
        p = p.annotate(key, v);
    }
    let mut s = annotated_sa();
    if let Some(v) = on_sa {
        s.annotations.as_mut().unwrap().insert(key.into(), v.into());
    }
    let (out, _) = mutated(&p, &s, &cfg());
    assert_eq!(expiration(&out), want);
}

#[rstest]
#[case::too_small("3599", "pod apps/web")]
#[case::too_large("86401", "pod apps/web")]
#[case::negative("-1", "pod apps/web")]
fn out_of_range_expiration_is_refused_naming_the_bounds(#[case] value: &str, #[case] object: &str) {
    let p = pod().annotate("azure.workload.identity/service-account-token-expiration", value);
    let err = mutate(&p, &annotated_sa(), &cfg()).unwrap_err();
    assert_eq!(
        err,
        Denial::TokenExpirationOutOfRange {
            object: object.into(),
            value: value.parse().unwrap()
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("between 3600 and 86400"), "{msg}");
    assert!(msg.contains(object), "{msg}");
}

#[test]
fn out_of_range_expiration_on_the_service_account_names_it() {
    let mut s = annotated_sa();
    s.annotations.as_mut().unwrap().insert(
        "azure.workload.identity/service-account-token-expiration".into(),
        "100".into(),
    );
    let msg = mutate(&pod(), &s, &cfg()).unwrap_err().to_string();
    assert!(
        msg.contains("ServiceAccount apps/api") && msg.contains("3600"),
        "{msg}"
    );
}

#[test]
fn non_numeric_expiration_is_refused() {
    let p = pod().annotate(
        "azure.workload.identity/service-account-token-expiration",
        "3600s",
    );
    let err = mutate(&p, &annotated_sa(), &cfg()).unwrap_err();
    assert_eq!(
        err,
        Denial::InvalidTokenExpiration {
            object: "pod apps/web".into(),
            value: "3600s".into()
        }
    );
    assert!(err.to_string().contains("3600s"));
}

// === client id, tenant, authority ===

#[test]
fn missing_client_id_omits_the_variable_and_warns() {
    let (out, warnings) = mutated(&pod(), &sa(&[]), &cfg());
    assert_eq!(env_of(find(&out, "app")), expected_env(None, TENANT));
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("apps/api") && warnings[0].contains("azure.workload.identity/client-id"));
}

#[test]
fn tenant_annotation_wins_over_the_configured_tenant() {
    let s = sa(&[
        ("azure.workload.identity/client-id", CLIENT),
        ("azure.workload.identity/tenant-id", "other"),
    ]);
    let (out, _) = mutated(&pod(), &s, &cfg());
    assert_eq!(env_of(find(&out, "app")), expected_env(Some(CLIENT), "other"));
}

#[test]
fn empty_tenant_annotation_falls_back_to_the_configured_tenant() {
    let s = sa(&[
        ("azure.workload.identity/client-id", CLIENT),
        ("azure.workload.identity/tenant-id", ""),
    ]);
    let (out, _) = mutated(&pod(), &s, &cfg());
    assert_eq!(env_of(find(&out, "app")), expected_env(Some(CLIENT), TENANT));
}

#[rstest]
#[case("AzurePublicCloud", "https://login.microsoftonline.com/")]
#[case("azureusgovernmentcloud", "https://login.microsoftonline.us/")]
#[case("AZURECHINACLOUD", "https://login.chinacloudapi.cn/")]
#[case("https://127.0.0.1:8443/", "https://127.0.0.1:8443/")]
fn authority_host_follows_the_configured_cloud(#[case] cloud: &str, #[case] host: &str) {
    let c = MutationConfig {
        authority_host: AuthorityHost::parse(cloud).unwrap(),
        ..cfg()
    };
    let (out, _) = mutated(&pod(), &annotated_sa(), &c);
    let env = env_of(find(&out, "app"));
    assert_eq!(env[3], ("AZURE_AUTHORITY_HOST".into(), host.into()));
}

// === idempotence ===

#[test]
fn mutating_the_output_again_changes_nothing() {
    let (out, _) = mutated(&pod(), &annotated_sa(), &cfg());
    let again = mutate(&out, &annotated_sa(), &cfg()).unwrap();
    assert!(again.is_noop(), "{:?}", again.edits);
}

#[test]
fn a_container_added_after_the_first_pass_is_mutated_on_reinvocation() {
    let (mut out, _) = mutated(&pod(), &annotated_sa(), &cfg());
    out.spec.as_mut().unwrap().containers.push(container("late"));
    let m = mutate(&out, &annotated_sa(), &cfg()).unwrap();
    assert!(
        m.edits.iter().all(|e| !matches!(e, Edit::AddVolume { .. })),
        "volume added once"
    );
    let (out2, _) = mutated(&out, &annotated_sa(), &cfg());
    assert!(has_token_mount(find(&out2, "late")));
    assert_eq!(env_of(find(&out2, "late")), expected_env(Some(CLIENT), TENANT));
    assert_eq!(
        find(&out2, "app").env.as_ref().unwrap().len(),
        4,
        "earlier containers unchanged"
    );
}

// === user overrides and collisions ===

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

#[test]
fn users_own_token_volume_is_kept() {
    let p = pod().with_spec(|s| {
        s.volumes = Some(vec![token_projection(
            "azure-identity-token",
            "azure-identity-token",
        )])
    });
    let (out, _) = mutated(&p, &annotated_sa(), &cfg());
    let vols = out.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    assert_eq!(vols.len(), 1);
    assert_eq!(
        vols[0],
        token_projection("azure-identity-token", "azure-identity-token")
    );
    assert!(has_token_mount(find(&out, "app")));
}

#[test]
fn users_own_mount_at_another_path_is_kept_and_the_variable_follows_it() {
    let p = pod().with_spec(|s| {
        s.containers[0].volume_mounts = Some(vec![VolumeMount {
            name: "azure-identity-token".into(),
            mount_path: "/custom/dir/".into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]);
    });
    let (out, _) = mutated(&p, &annotated_sa(), &cfg());
    let app = find(&out, "app");
    assert_eq!(app.volume_mounts.as_ref().unwrap().len(), 1);
    assert_eq!(app.volume_mounts.as_ref().unwrap()[0].mount_path, "/custom/dir/");
    assert_eq!(
        env_of(app)[2],
        (
            "AZURE_FEDERATED_TOKEN_FILE".into(),
            "/custom/dir/azure-identity-token".into()
        )
    );
    assert!(has_token_mount(find(&out, "sidecar")));
}

#[test]
fn non_projected_volume_with_our_name_is_refused() {
    let p = pod().with_spec(|s| {
        s.volumes = Some(vec![Volume {
            name: "azure-identity-token".into(),
            ..Volume::default()
        }])
    });
    let err = mutate(&p, &annotated_sa(), &cfg()).unwrap_err();
    assert_eq!(
        err,
        Denial::VolumeNameCollision {
            pod: "apps/web".into()
        }
    );
    assert!(
        err.to_string()
            .contains("volume \"azure-identity-token\" already exists")
    );
}

#[test]
fn projected_volume_with_our_name_but_another_path_is_refused() {
    let p = pod().with_spec(|s| s.volumes = Some(vec![token_projection("azure-identity-token", "token")]));
    assert!(matches!(
        mutate(&p, &annotated_sa(), &cfg()),
        Err(Denial::VolumeNameCollision { .. })
    ));
}

#[test]
fn our_token_path_under_another_volume_name_is_refused() {
    let p = pod().with_spec(|s| s.volumes = Some(vec![token_projection("my-token", "azure-identity-token")]));
    let err = mutate(&p, &annotated_sa(), &cfg()).unwrap_err();
    assert_eq!(
        err,
        Denial::TokenPathCollision {
            pod: "apps/web".into(),
            volume: "my-token".into()
        }
    );
    assert!(err.to_string().contains("\"my-token\""));
}

#[rstest]
#[case("/var/run/secrets/azure/tokens")]
#[case("/var/run/secrets/azure/tokens/")]
fn another_mount_at_our_path_is_refused_naming_it(#[case] path: &str) {
    let p = pod().with_spec(|s| {
        s.containers[1].volume_mounts = Some(vec![VolumeMount {
            name: "certs".into(),
            mount_path: path.into(),
            ..VolumeMount::default()
        }]);
    });
    let err = mutate(&p, &annotated_sa(), &cfg()).unwrap_err();
    assert_eq!(
        err,
        Denial::MountPathCollision {
            pod: "apps/web".into(),
            container: "sidecar".into(),
            volume: "certs".into()
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("\"sidecar\"") && msg.contains("\"certs\""), "{msg}");
}

#[test]
fn a_colliding_container_that_is_skipped_is_fine() {
    let p = pod()
        .annotate("azure.workload.identity/skip-containers", "sidecar")
        .with_spec(|s| {
            s.containers[1].volume_mounts = Some(vec![VolumeMount {
                name: "certs".into(),
                mount_path: "/var/run/secrets/azure/tokens".into(),
                ..VolumeMount::default()
            }]);
        });
    let (out, _) = mutated(&p, &annotated_sa(), &cfg());
    assert!(has_token_mount(find(&out, "app")));
}

#[test]
fn a_mount_below_our_path_is_not_a_collision() {
    let p = pod().with_spec(|s| {
        s.containers[0].volume_mounts = Some(vec![VolumeMount {
            name: "x".into(),
            mount_path: "/var/run/secrets/azure/tokens/extra".into(),
            ..VolumeMount::default()
        }]);
    });
    let (out, _) = mutated(&p, &annotated_sa(), &cfg());
    assert!(has_token_mount(find(&out, "app")));
}

// === warnings ===

#[rstest]
#[case::snake("azure.workload.identity/client_id", "azure.workload.identity/client-id")]
#[case::camel("azure.workload.identity/clientId", "azure.workload.identity/client-id")]
#[case::tenant("azure.workload.identity/tenantid", "azure.workload.identity/tenant-id")]
#[case::skip(
    "azure.workload.identity/skip-container",
    "azure.workload.identity/skip-containers"
)]
fn unknown_keys_get_the_nearest_known_name(#[case] key: &str, #[case] nearest: &str) {
    let p = pod().annotate(key, "x");
    let (_, warnings) = mutated(&p, &annotated_sa(), &cfg());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(key) && warnings[0].ends_with(&format!("did you mean {nearest}?")),
        "{}",
        warnings[0]
    );
}

#[test]
fn unknown_key_on_the_service_account_is_reported_too() {
    let s = sa(&[
        ("azure.workload.identity/client-id", CLIENT),
        ("azure.workload.identity/client_id", "x"),
    ]);
    let (_, warnings) = mutated(&pod(), &s, &cfg());
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("ServiceAccount apps/api"), "{}", warnings[0]);
}

#[test]
fn use_as_an_annotation_says_it_is_a_label() {
    let p = pod().annotate("azure.workload.identity/use", "true");
    let (_, warnings) = mutated(&p, &annotated_sa(), &cfg());
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("is an annotation on pod apps/web"),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("a pod label"), "{}", warnings[0]);
}

#[test]
fn client_id_on_the_pod_says_it_belongs_on_the_service_account() {
    let p = pod().annotate("azure.workload.identity/client-id", CLIENT);
    let (_, warnings) = mutated(&p, &annotated_sa(), &cfg());
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("a ServiceAccount annotation"),
        "{}",
        warnings[0]
    );
}

#[test]
fn proxy_sidecar_annotation_warns_and_injects_no_proxy() {
    let p = pod().annotate("azure.workload.identity/inject-proxy-sidecar", "true");
    let (out, warnings) = mutated(&p, &annotated_sa(), &cfg());
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].contains("not supported") && warnings[0].contains("token file"),
        "{}",
        warnings[0]
    );
    let spec = out.spec.as_ref().unwrap();
    assert_eq!(spec.containers.len(), 2);
    assert_eq!(spec.init_containers.as_ref().unwrap().len(), 1);
}

#[test]
fn warnings_are_capped() {
    let mut p = pod();
    for i in 0..30 {
        p = p.annotate(&format!("azure.workload.identity/bogus-{i}"), "x");
    }
    let (_, warnings) = mutated(&p, &annotated_sa(), &cfg());
    assert_eq!(warnings.len(), 8);
    assert!(warnings[7].contains("more warnings"));
}

// === odd input ===

#[test]
fn pod_without_spec_passes_through() {
    let mut p = pod();
    p.spec = None;
    let m = mutate(&p, &annotated_sa(), &cfg()).unwrap();
    assert!(m.is_noop());
    // `wif mutate` prints the pod as it was: no empty spec appears (found by `make fuzz`).
    let mut out = p.clone();
    m.apply(&mut out);
    assert_eq!(out, p);
}

#[test]
fn a_thousand_containers_are_all_mutated() {
    let p = pod().with_spec(|s| s.containers = (0..1000).map(|i| container(&format!("c{i}"))).collect());
    let (out, _) = mutated(&p, &annotated_sa(), &cfg());
    assert!(out.spec.as_ref().unwrap().containers.iter().all(has_token_mount));
}

#[test]
fn generated_name_is_used_in_messages() {
    let mut p = pod().annotate("azure.workload.identity/service-account-token-expiration", "1");
    p.metadata.name = None;
    p.metadata.generate_name = Some("web-".into());
    let msg = mutate(&p, &annotated_sa(), &cfg()).unwrap_err().to_string();
    assert!(msg.contains("pod apps/web-*"), "{msg}");
}

#[test]
fn fields_unknown_to_our_types_survive_the_patch() {
    let mut raw = serde_json::to_value(pod()).unwrap();
    raw["spec"]["futureField"] = json!({"x": 1});
    raw["spec"]["containers"][0]["futureContainerField"] = json!(true);
    let typed: Pod = serde_json::from_value(raw.clone()).unwrap();
    let m = mutate(&typed, &annotated_sa(), &cfg()).unwrap();
    json_patch::patch(&mut raw, &m.patch().unwrap()).unwrap();
    assert_eq!(raw["spec"]["futureField"], json!({"x": 1}));
    assert_eq!(raw["spec"]["containers"][0]["futureContainerField"], json!(true));
    assert_eq!(raw["spec"]["containers"][0]["env"].as_array().unwrap().len(), 4);
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

#[test]
fn named_identities_add_a_variable_per_name_to_every_container() {
    let (out, warnings) = mutated(&pod(), &multi_sa(), &cfg());
    assert!(warnings.is_empty(), "{warnings:?}");
    for name in ["init", "app", "sidecar"] {
        let env = env_of(find(&out, name));
        let mut want = expected_env(Some(CLIENT), TENANT);
        want.push(("AZURE_CLIENT_ID_READ_WRITE".into(), ADMIN.into()));
        want.push(("AZURE_TENANT_ID_READ_WRITE".into(), OTHER_TENANT.into()));
        want.push(("AZURE_CLIENT_ID_READER".into(), READER.into()));
        assert_eq!(
            env, want,
            "{name}: upstream's four first, then the names in order"
        );
    }
}

#[test]
fn named_identities_alone_do_not_warn_about_the_missing_default() {
    let s = sa(&[("azure.workload.identity/client-id.reader", READER)]);
    let (out, warnings) = mutated(&pod(), &s, &cfg());
    assert!(warnings.is_empty(), "{warnings:?}");
    let env = env_of(find(&out, "app"));
    assert_eq!(var(&env, "AZURE_CLIENT_ID"), None);
    assert_eq!(var(&env, "AZURE_CLIENT_ID_READER"), Some(READER));
}

#[rstest]
#[case::upper_case("azure.workload.identity/client-id.Reader", "client-id.reader")]
#[case::underscore("azure.workload.identity/client-id.read_only", "client-id.read-only")]
#[case::tenant("azure.workload.identity/tenant-id.X", "tenant-id.x")]
fn badly_named_identities_are_ignored_with_a_warning(#[case] key: &str, #[case] suggestion: &str) {
    let s = sa(&[("azure.workload.identity/client-id", CLIENT), (key, READER)]);
    let (out, warnings) = mutated(&pod(), &s, &cfg());
    assert_eq!(
        env_of(find(&out, "app")),
        expected_env(Some(CLIENT), TENANT),
        "no variable for an invalid name"
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains(key) && warnings[0].contains(suggestion) && warnings[0].contains("apps/api"),
        "{}",
        warnings[0]
    );
}

#[test]
fn a_named_client_id_on_the_pod_says_it_belongs_on_the_service_account() {
    let p = pod().annotate("azure.workload.identity/client-id.reader", READER);
    let (_, warnings) = mutated(&p, &annotated_sa(), &cfg());
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("only as a ServiceAccount annotation"),
        "{}",
        warnings[0]
    );
}

#[test]
fn an_empty_named_client_id_adds_nothing() {
    let s = sa(&[
        ("azure.workload.identity/client-id", CLIENT),
        ("azure.workload.identity/client-id.reader", ""),
    ]);
    let (out, _) = mutated(&pod(), &s, &cfg());
    assert_eq!(env_of(find(&out, "app")), expected_env(Some(CLIENT), TENANT));
}

#[test]
fn a_users_own_named_variable_is_kept() {
    let p = pod().with_spec(|s| {
        s.containers[0].env = Some(vec![EnvVar {
            name: "AZURE_CLIENT_ID_READER".into(),
            value: Some("mine".into()),
            value_from: None,
        }])
    });
    let (out, _) = mutated(&p, &multi_sa(), &cfg());
    let env = env_of(find(&out, "app"));
    assert_eq!(var(&env, "AZURE_CLIENT_ID_READER"), Some("mine"));
    assert_eq!(
        env.iter().filter(|(n, _)| n == "AZURE_CLIENT_ID_READER").count(),
        1
    );
}

#[test]
fn container_identities_set_each_containers_client_and_tenant() {
    let p = pod().annotate(
        "azure.workload.identity/container-identities",
        " app=reader ; sidecar=read-write;init=reader",
    );
    let (out, warnings) = mutated(&p, &multi_sa(), &cfg());
    assert!(warnings.is_empty(), "{warnings:?}");
    let app = env_of(find(&out, "app"));
    assert_eq!(var(&app, "AZURE_CLIENT_ID"), Some(READER));
    assert_eq!(
        var(&app, "AZURE_TENANT_ID"),
        Some(TENANT),
        "reader has no tenant of its own"
    );
    let sidecar = env_of(find(&out, "sidecar"));
    assert_eq!(var(&sidecar, "AZURE_CLIENT_ID"), Some(ADMIN));
    assert_eq!(var(&sidecar, "AZURE_TENANT_ID"), Some(OTHER_TENANT));
    assert_eq!(
        var(&sidecar, "AZURE_CLIENT_ID_READER"),
        Some(READER),
        "the named variables are still there"
    );
    assert_eq!(var(&env_of(find(&out, "init")), "AZURE_CLIENT_ID"), Some(READER));
}

#[test]
fn container_identities_leave_unlisted_containers_on_the_default() {
    let p = pod().annotate("azure.workload.identity/container-identities", "sidecar=reader");
    let (out, _) = mutated(&p, &multi_sa(), &cfg());
    assert_eq!(var(&env_of(find(&out, "app")), "AZURE_CLIENT_ID"), Some(CLIENT));
    assert_eq!(
        var(&env_of(find(&out, "sidecar")), "AZURE_CLIENT_ID"),
        Some(READER)
    );
}

#[test]
fn an_unknown_container_is_refused_naming_container_and_identity() {
    let p = pod().annotate("azure.workload.identity/container-identities", "api=reader");
    let err = mutate(&p, &multi_sa(), &cfg()).unwrap_err();
    assert!(matches!(err, Denial::UnknownContainer { .. }), "{err:?}");
    let msg = err.to_string();
    for part in [
        "pod apps/web",
        "azure.workload.identity/container-identities",
        "\"api=reader\"",
        "container \"api\"",
        "identity \"reader\"",
    ] {
        assert!(msg.contains(part), "{part} not in {msg}");
    }
}

#[test]
fn an_unknown_identity_is_refused_naming_container_identity_and_the_known_ones() {
    let p = pod().annotate("azure.workload.identity/container-identities", "app=writer");
    let err = mutate(&p, &multi_sa(), &cfg()).unwrap_err();
    assert!(matches!(err, Denial::UnknownIdentity { .. }), "{err:?}");
    let msg = err.to_string();
    for part in [
        "pod apps/web",
        "container \"app\"",
        "identity \"writer\"",
        "ServiceAccount apps/api",
        "azure.workload.identity/client-id.writer",
        "read-write, reader",
    ] {
        assert!(msg.contains(part), "{part} not in {msg}");
    }
    let msg = mutate(&p, &annotated_sa(), &cfg()).unwrap_err().to_string();
    assert!(msg.contains("named identities: none"), "{msg}");
}

#[rstest]
#[case::no_equals("app")]
#[case::no_identity("app=")]
#[case::no_container("=reader")]
#[case::two_identities("app=reader;app=read-write")]
fn malformed_container_identities_are_refused(#[case] value: &str) {
    let p = pod().annotate("azure.workload.identity/container-identities", value);
    let err = mutate(&p, &multi_sa(), &cfg()).unwrap_err();
    match &err {
        Denial::InvalidAnnotation {
            object,
            key,
            value: v,
            ..
        } => {
            assert_eq!(object, "pod apps/web");
            assert_eq!(*key, "azure.workload.identity/container-identities");
            assert_eq!(v, value);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_same_assignment_twice_is_fine() {
    let p = pod().annotate(
        "azure.workload.identity/container-identities",
        "app=reader;app=reader;",
    );
    let (out, _) = mutated(&p, &multi_sa(), &cfg());
    assert_eq!(var(&env_of(find(&out, "app")), "AZURE_CLIENT_ID"), Some(READER));
}

#[rstest]
#[case::default(None, None, "api://AzureADTokenExchange")]
#[case::sa(None, Some("sts.amazonaws.com"), "sts.amazonaws.com")]
#[case::pod_wins(Some("api://custom"), Some("sts.amazonaws.com"), "api://custom")]
#[case::empty_pod_falls_back(Some(""), Some("sts.amazonaws.com"), "sts.amazonaws.com")]
fn audience_precedence(#[case] on_pod: Option<&str>, #[case] on_sa: Option<&str>, #[case] want: &str) {
    let key = "azure.workload.identity/audience";
    let mut p = pod();
    if let Some(v) = on_pod {
        p = p.annotate(key, v);
    }
    let mut s = annotated_sa();
    if let Some(v) = on_sa {
        s.annotations.as_mut().unwrap().insert(key.into(), v.into());
    }
    let (out, warnings) = mutated(&p, &s, &cfg());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        sources(&out),
        vec![("azure-identity-token".into(), want.into(), 3600)]
    );
    // The file and the variables do not move.
    assert_eq!(env_of(find(&out, "app")), expected_env(Some(CLIENT), TENANT));
}

#[test]
fn audience_annotation_wins_over_the_installs_audience() {
    let mut c = cfg();
    c.audience = "api://install-wide".into();
    let (out, _) = mutated(&pod(), &annotated_sa(), &c);
    assert_eq!(sources(&out)[0].1, "api://install-wide");
    let p = pod().annotate("azure.workload.identity/audience", "api://mine");
    let (out, _) = mutated(&p, &annotated_sa(), &c);
    assert_eq!(sources(&out)[0].1, "api://mine");
}

#[rstest]
#[case::space("api://a b", "whitespace", "pod apps/web")]
#[case::tab("api://a\tb", "whitespace", "pod apps/web")]
#[case::star("api://*", "'*'", "pod apps/web")]
#[case::long(&"a".repeat(601), "600", "pod apps/web")]
fn invalid_audiences_are_refused_with_the_reason(
    #[case] value: &str,
    #[case] why: &str,
    #[case] object: &str,
) {
    let p = pod().annotate("azure.workload.identity/audience", value);
    let err = mutate(&p, &annotated_sa(), &cfg()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Denial::InvalidAnnotation { key, value: v, object: o, .. }
            if *key == "azure.workload.identity/audience" && v == value && o == object),
        "{err:?}"
    );
    assert!(msg.contains(why) && msg.contains(object), "{msg}");
}

#[test]
fn an_invalid_audience_on_the_service_account_names_it() {
    let mut s = annotated_sa();
    s.annotations
        .as_mut()
        .unwrap()
        .insert("azure.workload.identity/audience".into(), "a*".into());
    let msg = mutate(&pod(), &s, &cfg()).unwrap_err().to_string();
    assert!(
        msg.contains("ServiceAccount apps/api") && msg.contains("\"a*\""),
        "{msg}"
    );
}

#[test]
fn extra_token_audiences_project_more_files_into_the_same_volume() {
    let p = pod()
        .annotate(
            "azure.workload.identity/extra-token-audiences",
            "aws=sts.amazonaws.com; gcp = //iam.googleapis.com/projects/1/pools/p",
        )
        .annotate("azure.workload.identity/service-account-token-expiration", "7200");
    let (out, warnings) = mutated(&p, &annotated_sa(), &cfg());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        sources(&out),
        vec![
            (
                "azure-identity-token".into(),
                "api://AzureADTokenExchange".into(),
                7200
            ),
            ("aws-token".into(), "sts.amazonaws.com".into(), 7200),
            (
                "gcp-token".into(),
                "//iam.googleapis.com/projects/1/pools/p".into(),
                7200
            ),
        ]
    );
    assert_eq!(env_of(find(&out, "app")), expected_env(Some(CLIENT), TENANT));
    assert!(has_token_mount(find(&out, "app")));
}

#[rstest]
#[case::no_equals("aws")]
#[case::bad_name("AWS=sts.amazonaws.com")]
#[case::bad_audience("aws=a b")]
#[case::star("aws=*")]
#[case::empty_audience("aws=")]
#[case::azure_file("azure-identity=x")]
#[case::twice("aws=a;aws=b")]
fn malformed_extra_token_audiences_are_refused(#[case] value: &str) {
    let p = pod().annotate("azure.workload.identity/extra-token-audiences", value);
    let err = mutate(&p, &annotated_sa(), &cfg()).unwrap_err();
    match &err {
        Denial::InvalidAnnotation {
            object,
            key,
            value: v,
            ..
        } => {
            assert_eq!(object, "pod apps/web");
            assert_eq!(*key, "azure.workload.identity/extra-token-audiences");
            assert_eq!(v, value);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains(value), "{err}");
}

#[test]
fn extra_tokens_and_the_users_own_volume() {
    let key = "azure.workload.identity/extra-token-audiences";
    // The pod's own token volume without the extra file: refused, naming it.
    let own = pod().annotate(key, "aws=sts.amazonaws.com").with_spec(|s| {
        s.volumes = Some(vec![token_projection(
            "azure-identity-token",
            "azure-identity-token",
        )])
    });
    let msg = mutate(&own, &annotated_sa(), &cfg()).unwrap_err().to_string();
    assert!(msg.contains("\"aws-token\"") && msg.contains(key), "{msg}");
    // With it: kept as it is.
    let own = own.with_spec(|s| {
        let v = &mut s.volumes.as_mut().unwrap()[0];
        let sources = v.projected.as_mut().unwrap().sources.as_mut().unwrap();
        let mut extra = sources[0].clone();
        extra.service_account_token.as_mut().unwrap().path = "aws-token".into();
        sources.push(extra);
    });
    let (out, _) = mutated(&own, &annotated_sa(), &cfg());
    assert_eq!(sources(&out).len(), 2);
    // Another volume projecting our file is refused as today.
    let clash = pod()
        .annotate(key, "aws=sts.amazonaws.com")
        .with_spec(|s| s.volumes = Some(vec![token_projection("mine", "azure-identity-token")]));
    assert!(matches!(
        mutate(&clash, &annotated_sa(), &cfg()),
        Err(Denial::TokenPathCollision { .. })
    ));
}

#[test]
fn every_new_key_together_is_idempotent() {
    let p = pod()
        .annotate(
            "azure.workload.identity/container-identities",
            "sidecar=read-write",
        )
        .annotate("azure.workload.identity/audience", "api://custom")
        .annotate(
            "azure.workload.identity/extra-token-audiences",
            "aws=sts.amazonaws.com",
        );
    let (once, _) = mutated(&p, &multi_sa(), &cfg());
    let again = mutate(&once, &multi_sa(), &cfg()).unwrap();
    assert!(again.is_noop(), "{:?}", again.edits);
}

#[test]
fn new_keys_on_an_unlabelled_pod_change_nothing() {
    let mut p = pod()
        .annotate("azure.workload.identity/container-identities", "nope=nothing")
        .annotate("azure.workload.identity/audience", "a b")
        .annotate("azure.workload.identity/extra-token-audiences", "bad");
    p.metadata.labels = None;
    let m = mutate(&p, &multi_sa(), &cfg()).unwrap();
    assert!(m.is_noop() && m.warnings.is_empty());
}
