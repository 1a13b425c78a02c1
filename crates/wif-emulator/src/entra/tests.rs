//! Tests of `entra`.

use super::*;

#[test]
fn scopes() {
    assert_eq!(
        resource_from_scope("https://graph.microsoft.com/.default").ok(),
        Some("https://graph.microsoft.com".into())
    );
    assert_eq!(
        resource_from_scope("https://management.core.windows.net//.default").ok(),
        Some("https://management.core.windows.net/".into())
    );
    assert_eq!(
        resource_from_scope("api://x/.default openid offline_access").ok(),
        Some("api://x".into())
    );
    assert_eq!(
        resource_from_scope("api://x/read").err().map(|e| e.code),
        Some(1002012)
    );
    assert_eq!(
        resource_from_scope("/.default").err().map(|e| e.code),
        Some(70011)
    );
    assert_eq!(resource_from_scope("openid").err().map(|e| e.code), Some(70011));
    assert_eq!(
        resource_from_scope("api://a/.default api://b/.default")
            .err()
            .map(|e| e.code),
        Some(700022)
    );
}

#[test]
fn tenant_syntax() {
    assert!(valid_tenant_syntax("contoso.onmicrosoft.com"));
    assert!(valid_tenant_syntax("72f988bf-86f1-41af-91ab-2d7cd011db47"));
    assert!(!valid_tenant_syntax("a b"));
    assert!(!valid_tenant_syntax(""));
}
