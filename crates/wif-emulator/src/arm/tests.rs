//! Tests of `arm`.

use super::*;

fn segs(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

const SUB: &str = "0b1f6471-1bf0-4dda-aec3-cb9272f09590";

#[test]
fn targets() {
    let base = format!(
        "subscriptions/{SUB}/resourcegroups/rg/providers/microsoft.managedidentity/userAssignedIdentities"
    );
    assert!(matches!(parse_target(&segs(&base)), Ok(Target::Identities(_))));
    assert!(matches!(parse_target(&segs(&format!("{base}/mi"))), Ok(Target::Identity(_, n)) if n == "mi"));
    assert!(matches!(
        parse_target(&segs(&format!("{base}/mi/federatedIdentityCredentials/f1"))),
        Ok(Target::Credential(_, n, f)) if n == "mi" && f == "f1"
    ));
    assert!(parse_target(&segs(&format!("{base}/mi/other"))).is_err());
    assert!(parse_target(&segs("subscriptions/not-a-guid/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities")).is_err());
}

#[test]
fn api_versions() {
    let q = |v: &str| {
        let mut m = Map::new();
        m.insert("api-version".into(), Value::from(v));
        m
    };
    assert_eq!(check_api_version(&q("2023-01-31")).ok(), Some("2023-01-31"));
    assert_eq!(
        check_api_version(&Map::new()).err().map(|e| e.code),
        Some("MissingApiVersionParameter".to_string())
    );
    assert_eq!(
        check_api_version(&q("2020-01-01")).err().map(|e| e.code),
        Some("NoRegisteredProviderFound".to_string())
    );
    assert_eq!(
        check_api_version(&q("latest")).err().map(|e| e.code),
        Some("InvalidApiVersionParameter".to_string())
    );
}
