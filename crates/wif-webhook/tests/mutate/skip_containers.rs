//! `azure.workload.identity/skip-containers`: named containers are left untouched.

use super::*;

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
