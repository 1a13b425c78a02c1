//! Tests of `credential`.

use super::*;

fn builder() -> WorkloadIdentityCredentialBuilder {
    WorkloadIdentityCredential::builder()
        .tenant_id("tenant-a")
        .client_id("client")
        .assertion("a.b.c")
}

#[test]
fn scopes_are_validated() {
    assert_eq!(
        validate_scopes(&["https://vault.azure.net/.default"]).ok(),
        Some("https://vault.azure.net/.default")
    );
    assert_eq!(
        validate_scopes(&["api://a-b_c:1/.default"]).ok(),
        Some("api://a-b_c:1/.default")
    );
    for (scopes, reason) in [
        (&[][..], "no scope"),
        (&["https://a/.default", "https://b/.default"][..], "exactly one"),
        (&["https://graph.microsoft.com/User.Read"][..], "/.default"),
        (&["/.default"][..], "no resource"),
        (&["https://a b/.default"][..], "only letters"),
    ] {
        let e = validate_scopes(scopes).expect_err("invalid");
        assert!(matches!(e, Error::InvalidScope { .. }));
        assert!(e.to_string().contains(reason), "{e}");
        assert!(e.hint().is_some());
    }
}

#[test]
fn authority_is_normalised_and_must_be_https() {
    assert_eq!(
        normalize_authority("https://login.microsoftonline.com/")
            .ok()
            .as_deref(),
        Some("https://login.microsoftonline.com")
    );
    assert_eq!(
        normalize_authority("login.microsoftonline.us").ok().as_deref(),
        Some("https://login.microsoftonline.us")
    );
    assert_eq!(
        normalize_authority("https://adfs.contoso.com/adfs/")
            .ok()
            .as_deref(),
        Some("https://adfs.contoso.com/adfs")
    );
    assert!(matches!(
        normalize_authority("http://login.microsoftonline.com/"),
        Err(Error::InsecureAuthority { .. })
    ));
    let e = normalize_authority("http://127.0.0.1:8443").expect_err("http");
    assert!(e.to_string().contains("only https://"), "{e}");
    for bad in ["ftp://x", "https://", "https://x/?a=b", "https://u:p@x/"] {
        assert!(
            matches!(
                normalize_authority(bad),
                Err(Error::InvalidSetting {
                    setting: "AZURE_AUTHORITY_HOST",
                    ..
                })
            ),
            "{bad}"
        );
    }
}

#[test]
fn claims_merge_with_cae() {
    assert_eq!(merge_claims(None, false).expect("ok"), None);
    let cp1: Value = serde_json::json!({"access_token": {"xms_cc": {"values": ["CP1"]}}});
    let merged = merge_claims(None, true).expect("ok").expect("some");
    assert_eq!(serde_json::from_str::<Value>(&merged).expect("json"), cp1);
    let challenge = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
    let merged = merge_claims(Some(challenge), true).expect("ok").expect("some");
    assert_eq!(
        serde_json::from_str::<Value>(&merged).expect("json"),
        serde_json::json!({"access_token": {"nbf": {"essential": true, "value": "1700000000"}, "xms_cc": {"values": ["CP1"]}}})
    );
    // base64 form, as found in WWW-Authenticate
    let b64 = base64::engine::general_purpose::STANDARD.encode(challenge);
    let merged = merge_claims(Some(&b64), false).expect("ok").expect("some");
    assert_eq!(
        serde_json::from_str::<Value>(&merged).expect("json"),
        serde_json::from_str::<Value>(challenge).expect("json")
    );
    for bad in ["not json", "[1]", r#"{"access_token": 5}"#] {
        assert!(
            matches!(merge_claims(Some(bad), true), Err(Error::InvalidClaims { .. })),
            "{bad}"
        );
    }
}

#[test]
fn tenants_resolve_like_azure_identity() {
    let c = builder().build().expect("build");
    assert_eq!(c.inner.resolve_tenant(None).ok(), Some("tenant-a"));
    assert_eq!(c.inner.resolve_tenant(Some("TENANT-A")).ok(), Some("tenant-a"));
    let e = c.inner.resolve_tenant(Some("tenant-b")).expect_err("not allowed");
    assert!(matches!(e, Error::TenantNotAllowed { .. }), "{e}");
    assert!(matches!(
        c.inner.resolve_tenant(Some("bad/tenant")),
        Err(Error::InvalidSetting { .. })
    ));

    let c = builder()
        .additionally_allowed_tenants(["tenant-b"])
        .build()
        .expect("build");
    assert_eq!(c.inner.resolve_tenant(Some("tenant-b")).ok(), Some("tenant-b"));
    assert!(c.inner.resolve_tenant(Some("tenant-c")).is_err());
    let c = builder()
        .additionally_allowed_tenants(["*"])
        .build()
        .expect("build");
    assert_eq!(c.inner.resolve_tenant(Some("tenant-c")).ok(), Some("tenant-c"));
    let c = builder()
        .additionally_allowed_tenants(["*"])
        .disable_multitenant(true)
        .build()
        .expect("build");
    assert_eq!(c.inner.resolve_tenant(Some("tenant-c")).ok(), Some("tenant-a"));
}

#[test]
fn missing_settings_name_the_variable() {
    let e = WorkloadIdentityCredential::builder()
        .build()
        .expect_err("missing");
    assert!(e.to_string().contains("AZURE_TENANT_ID"), "{e}");
    let e = WorkloadIdentityCredential::builder()
        .tenant_id("t")
        .build()
        .expect_err("missing");
    assert!(e.to_string().contains("AZURE_CLIENT_ID"), "{e}");
    let e = WorkloadIdentityCredential::builder()
        .tenant_id("t")
        .client_id("c")
        .build()
        .expect_err("missing");
    assert!(e.to_string().contains("AZURE_FEDERATED_TOKEN_FILE"), "{e}");
    let e = builder().tenant_id("not a tenant").build().expect_err("invalid");
    assert!(
        matches!(
            e,
            Error::InvalidSetting {
                setting: "AZURE_TENANT_ID",
                ..
            }
        ),
        "{e}"
    );
    let e = builder()
        .add_root_certificates_pem("garbage")
        .build()
        .expect_err("bad pem");
    assert!(matches!(e, Error::TrustStore { .. }), "{e}");
}

#[test]
fn debug_shows_configuration_but_not_the_assertion() {
    let b = builder().assertion("SECRET-ASSERTION");
    let shown = format!("{b:?}");
    assert!(!shown.contains("SECRET-ASSERTION"), "{shown}");
    let c = b.build().expect("build");
    let shown = format!("{c:?}");
    assert!(!shown.contains("SECRET-ASSERTION"), "{shown}");
    assert!(shown.contains("tenant-a") && shown.contains("client"), "{shown}");
}

#[test]
fn request_ids_look_like_uuid_v4() {
    let id = request_id();
    assert_eq!(id.len(), 36);
    assert_eq!(&id[14..15], "4");
    assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
    assert_ne!(id, request_id());
}
