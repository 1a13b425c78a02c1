//! Warnings: misspelt keys get the nearest known name, misplaced ones say where they belong.

use super::*;

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
