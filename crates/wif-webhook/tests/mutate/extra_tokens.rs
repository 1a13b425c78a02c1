//! Beyond upstream: `extra-token-audiences` projects more token files into the same volume.

use super::*;

#[test]
fn extra_token_audiences_project_more_files_into_the_same_volume() {
    let p = pod()
        .annotate(
            "azure.workload.identity/extra-token-audiences",
            "aws=sts.amazonaws.com; gcp = //iam.googleapis.com/projects/1/pools/p",
        )
        .annotate("azure.workload.identity/service-account-token-expiration", "7200");
    let (out, warnings) = mutated(&p, &annotated_sa(), &cfg());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        sources(&out),
        vec![
            (
                "azure-identity-token".into(),
                "api://AzureADTokenExchange".into(),
                7200
            ),
            ("aws-token".into(), "sts.amazonaws.com".into(), 7200),
            (
                "gcp-token".into(),
                "//iam.googleapis.com/projects/1/pools/p".into(),
                7200
            ),
        ]
    );
    assert_eq!(env_of(find(&out, "app")), expected_env(Some(CLIENT), TENANT));
    assert!(has_token_mount(find(&out, "app")));
}

#[rstest]
#[case::no_equals("aws")]
#[case::bad_name("AWS=sts.amazonaws.com")]
#[case::bad_audience("aws=a b")]
#[case::star("aws=*")]
#[case::empty_audience("aws=")]
#[case::azure_file("azure-identity=x")]
#[case::twice("aws=a;aws=b")]
fn malformed_extra_token_audiences_are_refused(#[case] value: &str) {
    let p = pod().annotate("azure.workload.identity/extra-token-audiences", value);
    let err = mutate(&p, &annotated_sa(), &cfg()).unwrap_err();
    assert_invalid_annotation(&err, "azure.workload.identity/extra-token-audiences", value);
    assert!(err.to_string().contains(value), "{err}");
}

#[test]
fn extra_tokens_and_the_users_own_volume() {
    let key = "azure.workload.identity/extra-token-audiences";
    // The pod's own token volume without the extra file: refused, naming it.
    let own = pod().annotate(key, "aws=sts.amazonaws.com").with_spec(|s| {
        s.volumes = Some(vec![token_projection(
            "azure-identity-token",
            "azure-identity-token",
        )])
    });
    let msg = mutate(&own, &annotated_sa(), &cfg()).unwrap_err().to_string();
    assert!(msg.contains("\"aws-token\"") && msg.contains(key), "{msg}");
    // With it: kept as it is.
    let own = own.with_spec(|s| {
        let v = &mut s.volumes.as_mut().unwrap()[0];
        let sources = v.projected.as_mut().unwrap().sources.as_mut().unwrap();
        let mut extra = sources[0].clone();
        extra.service_account_token.as_mut().unwrap().path = "aws-token".into();
        sources.push(extra);
    });
    let (out, _) = mutated(&own, &annotated_sa(), &cfg());
    assert_eq!(sources(&out).len(), 2);
    // Another volume projecting our file is refused as today.
    let clash = pod()
        .annotate(key, "aws=sts.amazonaws.com")
        .with_spec(|s| s.volumes = Some(vec![token_projection("mine", "azure-identity-token")]));
    assert!(matches!(
        mutate(&clash, &annotated_sa(), &cfg()),
        Err(Denial::TokenPathCollision { .. })
    ));
}
