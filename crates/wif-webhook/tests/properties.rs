//! Property tests: on any pod, mutation never panics, its patch applied to the input gives the
//! pod it describes, and mutating that result again changes nothing.
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
        pod in pod(),
        sa in sa(),
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
