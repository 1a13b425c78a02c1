//! The injection: a labelled pod gets the token volume, its mounts and the variables in every
//! container; anything else is left alone; what the user set is kept.

use super::*;

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
