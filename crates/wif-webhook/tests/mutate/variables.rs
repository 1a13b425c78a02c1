//! Client id, tenant and authority host: where each variable's value comes from.

use super::*;

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
