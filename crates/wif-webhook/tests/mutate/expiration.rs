//! The projected token's lifetime: pod over service account over the default, and its bounds.

use super::*;

#[rstest]
#[case::default(None, None, 3600)]
#[case::sa_only(None, Some("7200"), 7200)]
#[case::pod_wins(Some("86400"), Some("7200"), 86400)]
#[case::empty_pod_falls_back_to_sa(Some(""), Some("4000"), 4000)]
#[case::lower_bound(Some("3600"), None, 3600)]
#[case::whitespace(Some(" 5000 "), None, 5000)]
fn token_expiration_precedence(#[case] on_pod: Option<&str>, #[case] on_sa: Option<&str>, #[case] want: i64) {
    let key = "azure.workload.identity/service-account-token-expiration";
    let mut p = pod();
    if let Some(v) = on_pod {
        p = p.annotate(key, v);
    }
    let mut s = annotated_sa();
    if let Some(v) = on_sa {
        s.annotations.as_mut().unwrap().insert(key.into(), v.into());
    }
    let (out, _) = mutated(&p, &s, &cfg());
    assert_eq!(expiration(&out), want);
}

#[rstest]
#[case::too_small("3599", "pod apps/web")]
#[case::too_large("86401", "pod apps/web")]
#[case::negative("-1", "pod apps/web")]
fn out_of_range_expiration_is_refused_naming_the_bounds(#[case] value: &str, #[case] object: &str) {
    let p = pod().annotate("azure.workload.identity/service-account-token-expiration", value);
    let err = mutate(&p, &annotated_sa(), &cfg()).unwrap_err();
    assert_eq!(
        err,
        Denial::TokenExpirationOutOfRange {
            object: object.into(),
            value: value.parse().unwrap()
        }
    );
    let msg = err.to_string();
    assert!(msg.contains("between 3600 and 86400"), "{msg}");
    assert!(msg.contains(object), "{msg}");
}

#[test]
fn out_of_range_expiration_on_the_service_account_names_it() {
    let mut s = annotated_sa();
    s.annotations.as_mut().unwrap().insert(
        "azure.workload.identity/service-account-token-expiration".into(),
        "100".into(),
    );
    let msg = mutate(&pod(), &s, &cfg()).unwrap_err().to_string();
    assert!(
        msg.contains("ServiceAccount apps/api") && msg.contains("3600"),
        "{msg}"
    );
}

#[test]
fn non_numeric_expiration_is_refused() {
    let p = pod().annotate(
        "azure.workload.identity/service-account-token-expiration",
        "3600s",
    );
    let err = mutate(&p, &annotated_sa(), &cfg()).unwrap_err();
    assert_eq!(
        err,
        Denial::InvalidTokenExpiration {
            object: "pod apps/web".into(),
            value: "3600s".into()
        }
    );
    assert!(err.to_string().contains("3600s"));
}
