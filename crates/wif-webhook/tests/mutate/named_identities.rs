//! Beyond upstream: named identities (`client-id.<name>`) add a variable per name.

use super::*;

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
