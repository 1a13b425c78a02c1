//! Property tests: on any pod, mutation never panics, its patch applied to the input gives the
//! pod it describes, and mutating that result again changes nothing; with none of wif's own keys
//! (named identities, container identities, audience, extra tokens) the result is what upstream's
//! rules give, as a small model of them here says.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Container, EnvVar, Pod, PodSpec, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume,
        VolumeMount, VolumeProjection,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use proptest::{collection::vec, option, prelude::*, sample::select};
use wif_api::{Cloud, MutationConfig};
use wif_webhook::{MetaView, PodView, admission::decode, mutate, mutate_view};

fn env_var() -> impl Strategy<Value = EnvVar> {
    (
        select(vec![
            "AZURE_CLIENT_ID",
            "AZURE_TENANT_ID",
            "AZURE_FEDERATED_TOKEN_FILE",
            "AZURE_AUTHORITY_HOST",
            "AZURE_CLIENT_ID_READER",
            "PATH",
            "X",
        ]),
        ".{0,8}",
    )
        .prop_map(|(n, v)| EnvVar {
            name: n.into(),
            value: Some(v),
            value_from: None,
        })
}

fn mount() -> impl Strategy<Value = VolumeMount> {
    (
        select(vec!["azure-identity-token", "data", "certs"]),
        select(vec![
            "/var/run/secrets/azure/tokens",
            "/data",
            "/custom",
            "/var/run/secrets/azure/tokens/x",
        ]),
        option::of(select(vec!["", "azure-identity-token", "sub"])),
    )
        .prop_map(|(n, p, sub)| VolumeMount {
            name: n.into(),
            mount_path: p.into(),
            sub_path: sub.map(Into::into),
            ..VolumeMount::default()
        })
}

fn container() -> impl Strategy<Value = Container> {
    (
        select(vec!["a", "b", "c", "init", "app"]),
        option::of(vec(env_var(), 0..5)),
        option::of(vec(mount(), 0..3)),
    )
        .prop_map(|(name, env, volume_mounts)| Container {
            name: name.into(),
            env,
            volume_mounts,
            ..Container::default()
        })
}

fn volume() -> impl Strategy<Value = Volume> {
    (
        select(vec!["azure-identity-token", "data", "other"]),
        any::<bool>(),
        select(vec!["azure-identity-token", "token"]),
    )
        .prop_map(|(name, projected, path)| Volume {
            name: name.into(),
            projected: projected.then(|| ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: None,
                        expiration_seconds: None,
                        path: path.into(),
                    }),
                    ..VolumeProjection::default()
                }]),
                default_mode: None,
            }),
            ..Volume::default()
        })
}

fn pod() -> impl Strategy<Value = Pod> {
    (
        option::of(vec(container(), 0..3)),
        vec(container(), 0..4),
        option::of(vec(volume(), 0..3)),
        option::of(select(vec!["a", "b;c", " app ; init ", "zzz", ""])),
        option::of(select(vec!["3600", "86400", "100", "abc", "", "7200"])),
        select(vec!["true", "false", "True"]),
    )
        .prop_map(|(init_containers, containers, volumes, skip, exp, label)| {
            let mut annotations = BTreeMap::new();
            if let Some(s) = skip {
                annotations.insert("azure.workload.identity/skip-containers".to_owned(), s.to_owned());
            }
            if let Some(e) = exp {
                annotations.insert(
                    "azure.workload.identity/service-account-token-expiration".to_owned(),
                    e.to_owned(),
                );
            }
            Pod {
                metadata: ObjectMeta {
                    name: Some("p".into()),
                    namespace: Some("ns".into()),
                    labels: Some(BTreeMap::from([(
                        "azure.workload.identity/use".to_owned(),
                        label.to_owned(),
                    )])),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                },
                spec: Some(PodSpec {
                    init_containers,
                    containers,
                    volumes,
                    ..PodSpec::default()
                }),
                status: None,
            }
        })
}

/// A pod that may also carry wif's own keys (valid or not).
fn pod_with_new_keys() -> impl Strategy<Value = Pod> {
    (
        pod(),
        option::of(select(vec![
            "a=reader",
            "b=admin;app=reader",
            "init=admin",
            "zzz=reader",
            "a=nobody",
            "a",
        ])),
        option::of(select(vec!["api://custom", "", "sts.amazonaws.com", "a b", "*"])),
        option::of(select(vec![
            "aws=sts.amazonaws.com",
            "aws=x;gcp=y",
            "Bad=x",
            "azure-identity=x",
        ])),
    )
        .prop_map(|(mut pod, identities, audience, extra)| {
            let a = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
            for (key, value) in [
                ("azure.workload.identity/container-identities", identities),
                ("azure.workload.identity/audience", audience),
                ("azure.workload.identity/extra-token-audiences", extra),
            ] {
                if let Some(v) = value {
                    a.insert(key.to_owned(), v.to_owned());
                }
            }
            pod
        })
}

/// A ServiceAccount that may also have named identities.
fn sa_with_new_keys() -> impl Strategy<Value = ObjectMeta> {
    (
        sa(),
        option::of(select(vec!["", "rid"])),
        option::of(select(vec!["aid"])),
        option::of(select(vec!["", "atid"])),
        option::of(select(vec!["api://sa", "x*"])),
    )
        .prop_map(|(mut sa, reader, admin, admin_tenant, audience)| {
            let a = sa.annotations.get_or_insert_with(BTreeMap::new);
            for (key, value) in [
                ("azure.workload.identity/client-id.reader", reader),
                ("azure.workload.identity/client-id.admin", admin),
                ("azure.workload.identity/tenant-id.admin", admin_tenant),
                ("azure.workload.identity/audience", audience),
            ] {
                if let Some(v) = value {
                    a.insert(key.to_owned(), v.to_owned());
                }
            }
            sa
        })
}

/// Upstream's mutation (DESIGN.md §3, reference/upstream-webhook.md steps 7-12) as wif has always
/// applied it, for a pod the webhook admits: four variables appended when absent and non-empty,
/// the token mount appended unless the container mounts the volume itself, the volume appended
/// unless the pod has it.
fn upstream_model(pod: &Pod, sa: &ObjectMeta, cfg: &MutationConfig) -> Pod {
    let get = |m: &Option<BTreeMap<String, String>>, k: &str| {
        m.as_ref()
            .and_then(|m| m.get(k))
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let mut out = pod.clone();
    if get(&pod.metadata.labels, "azure.workload.identity/use").as_deref() != Some("true") {
        return out;
    }
    let key = "azure.workload.identity/service-account-token-expiration";
    let expiration: i64 = get(&pod.metadata.annotations, key)
        .or_else(|| get(&sa.annotations, key))
        .map_or(3600, |v| v.trim().parse().unwrap());
    let client = get(&sa.annotations, "azure.workload.identity/client-id").unwrap_or_default();
    let tenant = get(&sa.annotations, "azure.workload.identity/tenant-id").unwrap_or(cfg.tenant_id.clone());
    let skip: Vec<String> = get(
        &pod.metadata.annotations,
        "azure.workload.identity/skip-containers",
    )
    .map(|s| s.split(';').map(|n| n.trim().to_owned()).collect())
    .unwrap_or_default();
    let spec = out.spec.as_mut().unwrap();
    let containers = spec
        .init_containers
        .iter_mut()
        .flatten()
        .chain(spec.containers.iter_mut());
    for c in containers.filter(|c| !skip.contains(&c.name)) {
        let own = c
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "azure-identity-token")
            .cloned();
        let file = match own {
            Some(m) => {
                let dir = m.mount_path.trim_end_matches('/');
                match m.sub_path.as_deref() {
                    None | Some("") => format!("{dir}/azure-identity-token"),
                    Some("azure-identity-token") => dir.to_owned(),
                    Some(_) => "/var/run/secrets/azure/tokens/azure-identity-token".to_owned(),
                }
            }
            None => {
                c.volume_mounts.get_or_insert_with(Vec::new).push(VolumeMount {
                    name: "azure-identity-token".into(),
                    mount_path: "/var/run/secrets/azure/tokens".into(),
                    read_only: Some(true),
                    ..VolumeMount::default()
                });
                "/var/run/secrets/azure/tokens/azure-identity-token".to_owned()
            }
        };
        for (name, value) in [
            ("AZURE_CLIENT_ID", client.as_str()),
            ("AZURE_TENANT_ID", tenant.as_str()),
            ("AZURE_FEDERATED_TOKEN_FILE", file.as_str()),
            ("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/"),
        ] {
            if !value.is_empty() && !c.env.iter().flatten().any(|e| e.name == name) {
                c.env.get_or_insert_with(Vec::new).push(EnvVar {
                    name: name.into(),
                    value: Some(value.into()),
                    value_from: None,
                });
            }
        }
    }
    if !spec
        .volumes
        .iter()
        .flatten()
        .any(|v| v.name == "azure-identity-token")
    {
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "azure-identity-token".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some("api://AzureADTokenExchange".into()),
                        expiration_seconds: Some(expiration),
                        path: "azure-identity-token".into(),
                    }),
                    ..VolumeProjection::default()
                }]),
                default_mode: None,
            }),
            ..Volume::default()
        });
    }
    out
}

fn sa() -> impl Strategy<Value = ObjectMeta> {
    (
        option::of(select(vec!["", "cid"])),
        option::of(select(vec!["", "tid"])),
    )
        .prop_map(|(client, tenant)| {
            let mut a = BTreeMap::new();
            if let Some(c) = client {
                a.insert("azure.workload.identity/client-id".to_owned(), c.to_owned());
            }
            if let Some(t) = tenant {
                a.insert("azure.workload.identity/tenant-id".to_owned(), t.to_owned());
            }
            ObjectMeta {
                name: Some("sa".into()),
                namespace: Some("ns".into()),
                annotations: Some(a),
                ..ObjectMeta::default()
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn patch_matches_result_and_mutation_is_idempotent(pod in pod(), sa in sa(), tenant in select(vec!["", "t"])) {
        let cfg = MutationConfig::new(tenant, Cloud::Public);
        let Ok(m) = mutate(&pod, &sa, &cfg) else { return Ok(()) };

        let mut typed = pod.clone();
        m.apply(&mut typed);
        let mut raw = serde_json::to_value(&pod).unwrap();
        json_patch::patch(&mut raw, &m.patch().unwrap()).unwrap();
        prop_assert_eq!(&raw, &serde_json::to_value(&typed).unwrap());

        let again = mutate(&typed, &sa, &cfg).unwrap();
        prop_assert!(again.is_noop(), "second pass edited: {:?}", again.edits);
    }

    #[test]
    fn with_new_keys_the_patch_matches_and_mutation_is_idempotent(pod in pod_with_new_keys(), sa in sa_with_new_keys()) {
        let cfg = MutationConfig::new("t", Cloud::Public);
        let Ok(m) = mutate(&pod, &sa, &cfg) else { return Ok(()) };
        let mut typed = pod.clone();
        m.apply(&mut typed);
        let mut raw = serde_json::to_value(&pod).unwrap();
        json_patch::patch(&mut raw, &m.patch().unwrap()).unwrap();
        prop_assert_eq!(&raw, &serde_json::to_value(&typed).unwrap());
        let again = mutate(&typed, &sa, &cfg).unwrap();
        prop_assert!(again.is_noop(), "second pass edited: {:?}", again.edits);
        let before = &pod.spec.as_ref().unwrap().containers;
        for (b, c) in before.iter().zip(typed.spec.as_ref().unwrap().containers.iter()) {
            for e in c.env.iter().flatten() {
                let had = b.env.iter().flatten().filter(|x| x.name == e.name).count();
                let has = c.env.iter().flatten().filter(|x| x.name == e.name).count();
                prop_assert!(has <= had.max(1), "{} duplicated in {}", e.name, c.name);
            }
        }
    }

    /// Pods and ServiceAccounts with none of wif's own keys get exactly upstream's result.
    #[test]
    fn without_new_keys_the_result_is_upstreams(pod in pod(), sa in sa()) {
        let cfg = MutationConfig::new("t", Cloud::Public);
        let Ok(m) = mutate(&pod, &sa, &cfg) else { return Ok(()) };
        let mut typed = pod.clone();
        m.apply(&mut typed);
        prop_assert_eq!(typed, upstream_model(&pod, &sa, &cfg));
    }

    #[test]
    fn every_env_name_appears_at_most_once_per_container(pod in pod(), sa in sa()) {
        let cfg = MutationConfig::new("t", Cloud::Public);
        if let Ok(m) = mutate(&pod, &sa, &cfg) {
            let mut out = pod.clone();
            m.apply(&mut out);
            let before = &pod.spec.as_ref().unwrap().containers;
            for (b, c) in before.iter().zip(out.spec.as_ref().unwrap().containers.iter()) {
                for name in ["AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_AUTHORITY_HOST"] {
                    let had = b.env.iter().flatten().filter(|e| e.name == name).count();
                    let has = c.env.iter().flatten().filter(|e| e.name == name).count();
                    prop_assert!(has <= had.max(1), "{} duplicated in {}", name, c.name);
                }
            }
        }
    }

    /// The webhook decodes reviews into a borrowed view; `wif mutate` converts a typed pod.
    /// Both must give the same mutation, whatever else the pod carries (other teams' keys, values
    /// with quotes, escapes and non-ASCII text).
    #[test]
    fn a_decoded_review_mutates_like_the_typed_pod(
        pod in pod_with_new_keys(),
        sa in sa_with_new_keys(),
        extra in vec((select(vec![
            "app",
            "azure.workload.identity/client_id",
            "azure.workload.identity/use",
            "azure.workload.identity/skip-containers",
            "kubectl.kubernetes.io/last-applied-configuration",
        ]), "\\PC{0,12}"), 0..4),
    ) {
        let cfg = MutationConfig::new("t", Cloud::Public);
        let mut pod = pod;
        for (k, v) in extra {
            pod.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(k.to_owned(), v.clone());
            pod.metadata.labels.get_or_insert_with(BTreeMap::new).insert(k.to_owned(), v);
        }
        let body = serde_json::to_vec(&serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE", "userInfo": {"username": "x"}, "object": pod,
            }
        })).unwrap();
        let request = decode(&body).unwrap();
        let view: &PodView<'_> = request.object.as_ref().unwrap();
        prop_assert_eq!(mutate_view(view, &MetaView::from(&sa), &cfg), mutate(&pod, &sa, &cfg));
    }
}

/// Found by the admission fuzz target: a request lists its keys in any order, a typed pod holds
/// them sorted; the warnings (and so the whole answer) must not depend on the order written.
#[test]
fn warnings_do_not_depend_on_the_order_keys_are_written_in() {
    let cfg = MutationConfig::new("t", Cloud::Public);
    let sa = ObjectMeta {
        name: Some("api".into()),
        namespace: Some("apps".into()),
        annotations: Some([("azure.workload.identity/client-id".to_owned(), "cid".to_owned())].into()),
        ..ObjectMeta::default()
    };
    // Written in reverse key order, as JSON allows; both keys are unknown, so both are warned about.
    let body = br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
        "uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
        "resource": {"group": "", "version": "v1", "resource": "pods"},
        "operation": "CREATE", "userInfo": {"username": "x"},
        "object": {"metadata": {"name": "p", "namespace": "apps", "labels": {
            "azure.workload.identity/usapp": "x", "azure.workload.identity/u": "y",
            "azure.workload.identity/use": "true"}},
          "spec": {"serviceAccountName": "api", "containers": [{"name": "c", "image": "i"}]}}}}"#;
    let request = decode(body).unwrap();
    let view: &PodView<'_> = request.object.as_ref().unwrap();
    let review: serde_json::Value = serde_json::from_slice(body).unwrap();
    let pod: Pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    let from_view = mutate_view(view, &MetaView::from(&sa), &cfg).unwrap();
    assert_eq!(from_view.warnings.len(), 2, "{:?}", from_view.warnings);
    assert_eq!(Ok(from_view), mutate(&pod, &sa, &cfg));
}
