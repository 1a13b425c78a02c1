//! Beyond upstream: `container-identities` gives each listed container its own client and tenant.

use super::*;

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
    assert_invalid_annotation(&err, "azure.workload.identity/container-identities", value);
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
