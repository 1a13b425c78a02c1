//! Mutating a mutated pod changes nothing; a container added later is mutated on reinvocation.

use super::*;

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
