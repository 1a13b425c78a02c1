//! Beyond upstream: the token audience, its precedence and its validation.

use super::*;

#[rstest]
#[case::default(None, None, "api://AzureADTokenExchange")]
#[case::sa(None, Some("sts.amazonaws.com"), "sts.amazonaws.com")]
#[case::pod_wins(Some("api://custom"), Some("sts.amazonaws.com"), "api://custom")]
#[case::empty_pod_falls_back(Some(""), Some("sts.amazonaws.com"), "sts.amazonaws.com")]
fn audience_precedence(#[case] on_pod: Option<&str>, #[case] on_sa: Option<&str>, #[case] want: &str) {
    let key = "azure.workload.identity/audience";
    let mut p = pod();
    if let Some(v) = on_pod {
        p = p.annotate(key, v);
    }
    let mut s = annotated_sa();
    if let Some(v) = on_sa {
        s.annotations.as_mut().unwrap().insert(key.into(), v.into());
    }
    let (out, warnings) = mutated(&p, &s, &cfg());
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(
        sources(&out),
        vec![("azure-identity-token".into(), want.into(), 3600)]
    );
    // The file and the variables do not move.
    assert_eq!(env_of(find(&out, "app")), expected_env(Some(CLIENT), TENANT));
}

#[test]
fn audience_annotation_wins_over_the_installs_audience() {
    let mut c = cfg();
    c.audience = "api://install-wide".into();
    let (out, _) = mutated(&pod(), &annotated_sa(), &c);
    assert_eq!(sources(&out)[0].1, "api://install-wide");
    let p = pod().annotate("azure.workload.identity/audience", "api://mine");
    let (out, _) = mutated(&p, &annotated_sa(), &c);
    assert_eq!(sources(&out)[0].1, "api://mine");
}

#[rstest]
#[case::space("api://a b", "whitespace", "pod apps/web")]
#[case::tab("api://a\tb", "whitespace", "pod apps/web")]
#[case::star("api://*", "'*'", "pod apps/web")]
#[case::long(&"a".repeat(601), "600", "pod apps/web")]
fn invalid_audiences_are_refused_with_the_reason(
    #[case] value: &str,
    #[case] why: &str,
    #[case] object: &str,
) {
    let p = pod().annotate("azure.workload.identity/audience", value);
    let err = mutate(&p, &annotated_sa(), &cfg()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Denial::InvalidAnnotation { key, value: v, object: o, .. }
            if *key == "azure.workload.identity/audience" && v == value && o == object),
        "{err:?}"
    );
    assert!(msg.contains(why) && msg.contains(object), "{msg}");
}

#[test]
fn an_invalid_audience_on_the_service_account_names_it() {
    let mut s = annotated_sa();
    s.annotations
        .as_mut()
        .unwrap()
        .insert("azure.workload.identity/audience".into(), "a*".into());
    let msg = mutate(&pod(), &s, &cfg()).unwrap_err().to_string();
    assert!(
        msg.contains("ServiceAccount apps/api") && msg.contains("\"a*\""),
        "{msg}"
    );
}
