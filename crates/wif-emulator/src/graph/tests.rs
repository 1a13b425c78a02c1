//! Tests of `graph`.

use super::*;

fn segs(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn targets() {
    assert_eq!(
        parse_target(&segs("applications")).ok(),
        Some(Target::Applications)
    );
    assert_eq!(
        parse_target(&segs("applications/abc")).ok(),
        Some(Target::Application(AppKey::Id("abc".into())))
    );
    assert_eq!(
        parse_target(&segs("applications(appId='x')/federatedIdentityCredentials/")).ok(),
        Some(Target::Credentials(AppKey::AppId("x".into())))
    );
    assert_eq!(
        parse_target(&segs(
            "applications/abc/federatedIdentityCredentials(name='o''k')"
        ))
        .ok(),
        Some(Target::Credential(
            AppKey::Id("abc".into()),
            FicKey::Name("o'k".into())
        ))
    );
    assert_eq!(
        parse_target(&segs(
            "applications(uniqueName='u')/federatedIdentityCredentials/n1"
        ))
        .ok(),
        Some(Target::Credential(
            AppKey::UniqueName("u".into()),
            FicKey::IdOrName("n1".into())
        ))
    );
    assert!(parse_target(&segs("users")).is_err());
    assert!(parse_target(&segs("applications/abc/owners")).is_err());
    assert!(parse_target(&segs("applications/abc/federatedIdentityCredentials/a/b")).is_err());
}

#[test]
fn filters() {
    let clauses = parse_filter(
        "appId eq 'a''b' and displayName eq 'x y'",
        &["appId", "displayName"],
        "Application",
    )
    .expect("parses");
    assert_eq!(
        clauses,
        vec![("appId", "a'b".to_string()), ("displayName", "x y".to_string())]
    );
    assert_eq!(
        parse_filter("startswith(name,'a')", &["name"], FIC_RESOURCE)
            .err()
            .map(|e| e.status),
        Some(StatusCode::BAD_REQUEST)
    );
    assert_eq!(
        parse_filter("owner eq 'a'", &["name"], FIC_RESOURCE)
            .err()
            .map(|e| e.code),
        Some("Request_UnsupportedQuery".to_string())
    );
    assert!(parse_filter("name eq 'a", &["name"], FIC_RESOURCE).is_err());
    assert!(parse_filter("name eq 'a' or name eq 'b'", &["name"], FIC_RESOURCE).is_err());
}
