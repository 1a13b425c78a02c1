//! The user's own token volume and mounts: kept when they agree with ours, refused naming the
//! clash when they do not.

use super::*;

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
