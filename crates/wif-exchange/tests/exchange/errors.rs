//! Entra's errors become typed errors with hints; requests that cannot succeed send nothing.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_errors_map_to_typed_errors_with_hints_and_are_not_retried() {
    let cases: &[(u16, &str, u32, &str)] = &[
        (400, "invalid_request", 700211, "issuer"),
        (400, "invalid_request", 700212, "audience"),
        (400, "invalid_request", 700213, "subject"),
        (400, "invalid_request", 70021, "propagating"),
        (401, "invalid_client", 700024, "expired"),
        (401, "invalid_client", 90061, "OIDC"),
        (401, "invalid_client", 7000272, "JWKS"),
        (400, "unauthorized_client", 700016, "object id"),
        (400, "invalid_request", 90002, "AZURE_TENANT_ID"),
        (401, "invalid_client", 7000215, "AZURE_CLIENT_SECRET"),
        (400, "invalid_instance", 50049, "AZURE_AUTHORITY_HOST"),
        (400, "invalid_request", 900144, "parameter"),
        (400, "invalid_scope", 1002012, "/.default"),
    ];
    let server = TestServer::issuing().await;
    for &(status, class, code, hint_word) in cases {
        server.set_behavior(move |_, _| Reply::entra(status, class, code, "Entra says no."));
        let before = server.count();
        // A fresh credential per case: nothing cached.
        let err = server
            .credential()
            .get_token(&[SCOPE], &opts())
            .await
            .unwrap_err();
        assert_eq!(
            server.count() - before,
            1,
            "AADSTS{code}: HTTP {status} must not be retried"
        );
        let Error::Entra(e) = &err else {
            panic!("AADSTS{code}: expected Entra error, got {err:?}")
        };
        assert_eq!(e.status, status);
        assert_eq!(e.error.as_deref(), Some(class));
        assert_eq!(e.aadsts(), Some(code));
        assert_eq!(e.message(), Some("Entra says no."));
        assert_eq!(e.trace_id.as_deref(), Some(format!("trace-{code}").as_str()));
        assert_eq!(e.correlation_id.as_deref(), Some(format!("corr-{code}").as_str()));
        assert_eq!(e.attempts, 1);
        let hint = err.hint().unwrap_or_else(|| panic!("AADSTS{code} has no hint"));
        assert!(hint.contains(hint_word), "AADSTS{code}: {hint}");
        let shown = err.to_string();
        assert!(
            shown.contains(&format!("AADSTS{code}")) && shown.contains(hint),
            "{shown}"
        );
        assert!(!shown.contains('\n'), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_json_error_bodies_are_typed_and_5xx_are_retried() {
    let server = TestServer::start(|_, _| {
        Reply::raw(
            502,
            "text/html",
            "<html><head><title>502 Bad Gateway</title></head><body><hr>nginx</body></html>",
        )
    })
    .await;
    let err = server
        .credential()
        .get_token(&[SCOPE], &opts())
        .await
        .unwrap_err();
    assert_eq!(server.count(), 4, "3 retries");
    let Error::Entra(e) = &err else { panic!("{err:?}") };
    assert_eq!((e.status, e.attempts, e.aadsts()), (502, 4, None));
    assert_eq!(e.body_excerpt.as_deref(), Some("502 Bad Gateway"));
    assert!(err.is_transient());
    assert!(err.hint().is_some());

    server.set_behavior(|_, _| Reply::raw(404, "text/plain", "no such route"));
    let err = server
        .credential()
        .get_token(&[SCOPE], &opts())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert!(err.to_string().contains("no such route"), "{err}");
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_cannot_succeed_send_nothing() {
    let server = TestServer::issuing().await;
    let cred = server.credential();
    let err = cred
        .get_token(&[SCOPE], &opts().with_tenant_id("someone-else"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::TenantNotAllowed { .. }), "{err:?}");
    assert!(err.to_string().contains("additionally allowed tenants"), "{err}");
    let err = cred
        .get_token(&["https://graph.microsoft.com/User.Read"], &opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidScope { .. }), "{err:?}");
    let err = cred
        .get_token(&[SCOPE, "https://storage.azure.com/.default"], &opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidScope { .. }), "{err:?}");
    let err = cred
        .get_token(&[SCOPE], &opts().with_claims("{not json"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidClaims { .. }), "{err:?}");
    assert_eq!(server.count(), 0);
}
