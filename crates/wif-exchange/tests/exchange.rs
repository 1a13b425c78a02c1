//! The exchange against an in-process HTTPS token endpoint: request shape, error mapping,
//! retries, timeouts, caching, refresh, token-file rotation, and redaction.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use common::*;
use wif_exchange::{Error, TokenRequestOptions, TransportErrorKind, WorkloadIdentityCredential};

fn opts() -> TokenRequestOptions {
    TokenRequestOptions::default()
}

fn near(t: SystemTime, expected: SystemTime) -> bool {
    let d = t.duration_since(expected).unwrap_or_else(|e| e.duration());
    d < Duration::from_secs(5)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_sends_the_documented_form_and_returns_the_token() {
    let server = TestServer::issuing().await;
    let cred = server.credential();
    let before = SystemTime::now();
    let token = cred.get_token(&[SCOPE], &opts()).await.unwrap();
    assert_eq!(token.token().expose_secret(), "token-1");
    assert_eq!(token.token_type(), "Bearer");
    assert!(near(token.expires_on(), before + Duration::from_secs(3600)));
    // No refresh_in: refresh at half the lifetime.
    assert!(near(token.refresh_on(), before + Duration::from_secs(1800)));

    let reqs = server.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.tenant, TENANT);
    let field = |k: &str| r.form.get(k).map(String::as_str);
    assert_eq!(field("client_assertion"), Some(ASSERTION));
    assert_eq!(
        field("client_assertion_type"),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    assert_eq!(field("client_id"), Some(CLIENT));
    assert_eq!(field("grant_type"), Some("client_credentials"));
    assert_eq!(field("scope"), Some(SCOPE));
    assert_eq!(field("claims"), None);
    assert_eq!(r.form.len(), 5, "{:?}", r.form.keys());
    assert_eq!(r.headers["content-type"], "application/x-www-form-urlencoded");
    assert_eq!(r.headers["client-request-id"].len(), 36);

    // Second call: cache.
    let again = cred.get_token(&[SCOPE], &opts()).await.unwrap();
    assert_eq!(again.token().expose_secret(), "token-1");
    assert_eq!(server.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_in_from_entra_sets_refresh_on() {
    let server = TestServer::start(|_, _| Reply::token("t", 86_399, Some(600))).await;
    let before = SystemTime::now();
    let token = server.credential().get_token(&[SCOPE], &opts()).await.unwrap();
    assert!(near(token.refresh_on(), before + Duration::from_secs(600)));
    assert!(near(token.expires_on(), before + Duration::from_secs(86_399)));
}

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
async fn retry_after_integer_seconds_is_honoured() {
    let server = TestServer::start(|n, _| {
        if n == 1 {
            Reply::entra(429, "temporarily_unavailable", 90055, "throttled").header("retry-after", "1")
        } else {
            Reply::token("after-429", 3600, None)
        }
    })
    .await;
    let start = Instant::now();
    let token = server.credential().get_token(&[SCOPE], &opts()).await.unwrap();
    assert_eq!(token.token().expose_secret(), "after-429");
    assert_eq!(server.count(), 2);
    let reqs = server.requests();
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_secs(1), "waited only {gap:?}");
    assert!(gap < Duration::from_millis(1500), "waited {gap:?}");
    assert!(start.elapsed() >= Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_fractional_seconds_is_honoured() {
    let server = TestServer::start(|n, _| {
        if n <= 2 {
            Reply::raw(503, "text/plain", "busy").header("retry-after", "0.4")
        } else {
            Reply::token("ok", 3600, None)
        }
    })
    .await;
    server.credential().get_token(&[SCOPE], &opts()).await.unwrap();
    assert_eq!(server.count(), 3);
    let reqs = server.requests();
    for w in reqs.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(gap >= Duration::from_millis(400), "{gap:?}");
        assert!(gap < Duration::from_millis(900), "{gap:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_http_date_is_honoured() {
    let server = TestServer::start(|n, _| {
        if n == 1 {
            let at = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(2);
            let date = jiff::fmt::rfc2822::DateTimePrinter::new()
                .timestamp_to_rfc9110_string(&at)
                .unwrap();
            Reply::raw(429, "text/plain", "slow down").header("retry-after", &date)
        } else {
            Reply::token("ok", 3600, None)
        }
    })
    .await;
    server.credential().get_token(&[SCOPE], &opts()).await.unwrap();
    let reqs = server.requests();
    // The date has one-second resolution: at least 1 s, at most 2 s (+ slack).
    let gap = reqs[1].at - reqs[0].at;
    assert!(
        gap >= Duration::from_millis(1000) && gap < Duration::from_millis(2600),
        "{gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_capped_by_max_delay() {
    let server = TestServer::start(|n, _| {
        if n == 1 {
            Reply::raw(429, "text/plain", "x").header("retry-after", "3600")
        } else {
            Reply::token("ok", 3600, None)
        }
    })
    .await;
    let cred = server
        .builder()
        .retry_policy(fast_retries(1).with_max_delay(Duration::from_millis(300)))
        .build()
        .unwrap();
    let start = Instant::now();
    cred.get_token(&[SCOPE], &opts()).await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(server.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded() {
    let server = TestServer::start(|_, _| Reply::entra(503, "temporarily_unavailable", 90033, "down")).await;
    let cred = server.builder().retry_policy(fast_retries(2)).build().unwrap();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert_eq!(server.count(), 3);
    let Error::Entra(e) = &err else { panic!("{err:?}") };
    assert_eq!(e.attempts, 3);
    assert!(err.to_string().contains("after 3 attempts"), "{err}");

    // No retries at all.
    let cred = server
        .builder()
        .retry_policy(wif_exchange::RetryPolicy::none())
        .build()
        .unwrap();
    let before = server.count();
    cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert_eq!(server.count() - before, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_retry_on_400_even_with_retry_after() {
    let server = TestServer::start(|_, _| {
        Reply::entra(400, "invalid_request", 700213, "subject").header("retry-after", "0")
    })
    .await;
    server
        .credential()
        .get_token(&[SCOPE], &opts())
        .await
        .unwrap_err();
    assert_eq!(server.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_callers_on_a_cold_cache_make_one_request() {
    let server = TestServer::start(|n, _| {
        Reply::token(&format!("token-{n}"), 3600, None).delay(Duration::from_millis(200))
    })
    .await;
    let cred = server.credential();
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let cred = cred.clone();
            tokio::spawn(async move { cred.get_token(&[SCOPE], &TokenRequestOptions::default()).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().token().expose_secret(), "token-1");
    }
    assert_eq!(server.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_refresh_serves_the_cached_token_with_one_request() {
    let server = TestServer::start(|n, _| {
        let reply = Reply::token(&format!("token-{n}"), 3600, Some(1));
        if n == 1 {
            reply
        } else {
            reply.delay(Duration::from_millis(500))
        }
    })
    .await;
    let cred = server.credential();
    assert_eq!(
        cred.get_token(&[SCOPE], &opts())
            .await
            .unwrap()
            .token()
            .expose_secret(),
        "token-1"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Past refresh_on: 200 callers, all answered from the cache without waiting for the 500 ms
    // refresh, which is sent exactly once.
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let cred = cred.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                let t = cred
                    .get_token(&[SCOPE], &TokenRequestOptions::default())
                    .await
                    .unwrap();
                (t.token().expose_secret().to_owned(), start.elapsed())
            })
        })
        .collect();
    for t in tasks {
        let (token, waited) = t.await.unwrap();
        assert_eq!(token, "token-1");
        assert!(waited < Duration::from_millis(100), "a caller waited {waited:?}");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(server.count(), 2, "exactly one background refresh");
    assert_eq!(
        cred.get_token(&[SCOPE], &opts())
            .await
            .unwrap()
            .token()
            .expose_secret(),
        "token-2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_background_refresh_keeps_serving_the_cached_token() {
    let server = TestServer::start(|n, _| {
        if n == 1 {
            Reply::token("token-1", 3600, Some(1))
        } else {
            Reply::entra(500, "server_error", 50033, "boom")
        }
    })
    .await;
    let cred = server.builder().retry_policy(fast_retries(0)).build().unwrap();
    cred.get_token(&[SCOPE], &opts()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..20 {
        assert_eq!(
            cred.get_token(&[SCOPE], &opts())
                .await
                .unwrap()
                .token()
                .expose_secret(),
            "token-1"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.count(), 2, "one failed refresh, then a back-off");
}

/// Kubelet's atomic writer: `token -> ..data/token`, `..data -> ..<timestamp>`, swapped by rename.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_token_file_is_read_again() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let write_version = |name: &str, content: &str| {
        let v = dir.path().join(name);
        std::fs::create_dir(&v).unwrap();
        std::fs::write(v.join("azure-identity-token"), content).unwrap();
        let tmp = dir.path().join("..data_tmp");
        symlink(name, &tmp).unwrap();
        std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
    };
    write_version("..2026_01_01_first", "jwt-version-one");
    symlink(
        "..data/azure-identity-token",
        dir.path().join("azure-identity-token"),
    )
    .unwrap();

    let server = TestServer::issuing().await;
    let cred = server
        .builder()
        .token_file(dir.path().join("azure-identity-token"))
        .build()
        .unwrap();
    let other_scope = "https://storage.azure.com/.default";
    cred.get_token(&[SCOPE], &opts()).await.unwrap();
    // Unchanged file: the next exchange presents the same assertion.
    cred.get_token(&["https://management.azure.com/.default"], &opts())
        .await
        .unwrap();
    write_version("..2026_01_01_second", "jwt-version-two-rotated");
    cred.get_token(&[other_scope], &opts()).await.unwrap();

    let seen: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.form["client_assertion"].clone())
        .collect();
    assert_eq!(
        seen,
        ["jwt-version-one", "jwt-version-one", "jwt-version-two-rotated"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_problems_are_typed_and_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-token");
    let server = TestServer::issuing().await;
    let cred = server.builder().token_file(&path).build().unwrap();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert!(matches!(err, Error::TokenFileUnreadable { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));
    std::fs::write(&path, "").unwrap();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert!(matches!(err, Error::TokenFileInvalid { .. }), "{err:?}");
    assert_eq!(server.count(), 0);
    // It appears later: works without rebuilding the credential.
    std::fs::write(&path, "late.jwt").unwrap();
    cred.get_token(&[SCOPE], &opts()).await.unwrap();
    assert_eq!(server.requests()[0].form["client_assertion"], "late.jwt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_keys_separate_tenant_claims_and_cae() {
    let server = TestServer::issuing().await;
    let cred = server
        .builder()
        .additionally_allowed_tenants(["other-tenant.onmicrosoft.com"])
        .build()
        .unwrap();
    let get = |o: TokenRequestOptions| {
        let cred = cred.clone();
        async move {
            cred.get_token(&[SCOPE], &o)
                .await
                .unwrap()
                .token()
                .expose_secret()
                .to_owned()
        }
    };
    let challenge = r#"{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}"#;
    assert_eq!(get(opts()).await, "token-1");
    assert_eq!(
        get(opts().with_tenant_id("other-tenant.onmicrosoft.com")).await,
        "token-2"
    );
    assert_eq!(get(opts().with_claims(challenge)).await, "token-3");
    assert_eq!(get(opts().with_cae(true)).await, "token-4");
    assert_eq!(get(opts().with_cae(true).with_claims(challenge)).await, "token-5");
    // Same keys again: all cached.
    assert_eq!(get(opts()).await, "token-1");
    assert_eq!(get(opts().with_tenant_id(TENANT)).await, "token-1");
    assert_eq!(
        get(opts().with_tenant_id("other-tenant.onmicrosoft.com")).await,
        "token-2"
    );
    assert_eq!(get(opts().with_claims(challenge)).await, "token-3");
    assert_eq!(get(opts().with_cae(true)).await, "token-4");
    assert_eq!(server.count(), 5);

    let reqs = server.requests();
    assert_eq!(reqs[1].tenant, "other-tenant.onmicrosoft.com");
    let claims = |i: usize| -> serde_json::Value { serde_json::from_str(&reqs[i].form["claims"]).unwrap() };
    assert_eq!(
        claims(2),
        serde_json::from_str::<serde_json::Value>(challenge).unwrap()
    );
    assert_eq!(
        claims(3),
        serde_json::json!({"access_token": {"xms_cc": {"values": ["CP1"]}}})
    );
    assert_eq!(
        claims(4),
        serde_json::json!({"access_token": {"nbf": {"essential": true, "value": "1700000000"}, "xms_cc": {"values": ["CP1"]}}})
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_times_out_with_a_typed_error() {
    let (authority, connections) = dead_server().await;
    let pki = Pki::new();
    let cred = WorkloadIdentityCredential::builder()
        .tenant_id(TENANT)
        .client_id(CLIENT)
        .assertion(ASSERTION)
        .authority_host(&authority)
        .add_root_certificates_pem(pki.ca_pem.as_bytes())
        .timeout(Duration::from_millis(300))
        .retry_policy(fast_retries(1))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    let Error::Transport { kind, attempts, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((*kind, *attempts), (TransportErrorKind::Timeout, 2));
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert!(err.hint().is_some());
    assert!(!format!("{err} {err:?}").contains(ASSERTION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_endpoint_times_out() {
    let server =
        TestServer::start(|_, _| Reply::token("late", 3600, None).delay(Duration::from_secs(3))).await;
    let cred = server
        .builder()
        .timeout(Duration::from_millis(300))
        .retry_policy(fast_retries(0))
        .build()
        .unwrap();
    let start = Instant::now();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportErrorKind::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection_is_retried_then_typed() {
    // Bound but never listening: connections are refused, and no other process can take the
    // port while the socket is held.
    let closed = tokio::net::TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = closed.local_addr().unwrap().port();
    let cred = WorkloadIdentityCredential::builder()
        .tenant_id(TENANT)
        .client_id(CLIENT)
        .assertion(ASSERTION)
        .authority_host(format!("https://127.0.0.1:{port}"))
        .retry_policy(fast_retries(2))
        .build()
        .unwrap();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportErrorKind::Connect,
                attempts: 3,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_and_malformed_answers_are_typed() {
    let pki = Pki::new();
    let build = |authority: &str, retries| {
        WorkloadIdentityCredential::builder()
            .tenant_id(TENANT)
            .client_id(CLIENT)
            .assertion(ASSERTION)
            .authority_host(authority)
            .add_root_certificates_pem(pki.ca_pem.as_bytes())
            .retry_policy(fast_retries(retries))
            .build()
            .unwrap()
    };

    // Content-Length promises 500 bytes; the connection closes after 16.
    let (authority, count) = raw_server(
        &pki,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"access_token\":",
    )
    .await;
    let err = build(&authority, 1)
        .get_token(&[SCOPE], &opts())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportErrorKind::Body,
                attempts: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 2, "a cut-off answer is retried");

    // A complete 200 that is not a token response: not retried, body not quoted.
    let (authority, count) = raw_server(
        &pki,
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 26\r\nConnection: close\r\n\r\n<html>captive portal</html",
    )
    .await;
    let err = build(&authority, 3)
        .get_token(&[SCOPE], &opts())
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidResponse { status: 200, .. }),
        "{err:?}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 1);

    // Not HTTP at all.
    let (authority, _) = raw_server(&pki, b"SSH-2.0-OpenSSH_9.6\r\n").await;
    let err = build(&authority, 0)
        .get_token(&[SCOPE], &opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err:?}");

    // 200 with a JSON error and no token.
    let (authority, _) = raw_server(
        &pki,
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 25\r\nConnection: close\r\n\r\n{\"error\":\"invalid_grant\"}",
    )
    .await;
    let err = build(&authority, 0)
        .get_token(&[SCOPE], &opts())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("access_token is missing (error \"invalid_grant\")"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_is_a_tls_error_and_not_retried() {
    let server = TestServer::issuing().await;
    let cred = WorkloadIdentityCredential::builder()
        .tenant_id(TENANT)
        .client_id(CLIENT)
        .assertion(ASSERTION)
        .authority_host(&server.authority)
        .retry_policy(fast_retries(3))
        .build()
        .unwrap();
    let err = cred.get_token(&[SCOPE], &opts()).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Transport {
                kind: TransportErrorKind::Tls,
                attempts: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.hint().is_some_and(|h| h.contains("SSL_CERT_FILE")));
    assert_eq!(server.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_authority_is_refused() {
    let err = WorkloadIdentityCredential::builder()
        .tenant_id(TENANT)
        .client_id(CLIENT)
        .assertion(ASSERTION)
        .authority_host("http://127.0.0.1:8080/")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::InsecureAuthority { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assertion_callback_runs_for_each_exchange() {
    let server = TestServer::issuing().await;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let cred = server
        .builder()
        .assertion_callback(move || {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            async move { Ok::<_, std::io::Error>(format!("callback-assertion-{n}")) }
        })
        .build()
        .unwrap();
    cred.get_token(&[SCOPE], &opts()).await.unwrap();
    cred.get_token(&[SCOPE], &opts()).await.unwrap(); // cached: no callback
    cred.get_token(&["https://storage.azure.com/.default"], &opts())
        .await
        .unwrap();
    let seen: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.form["client_assertion"].clone())
        .collect();
    assert_eq!(seen, ["callback-assertion-1", "callback-assertion-2"]);
}

/// Debug and Display of every public type, and every error produced on the way, leave out the
/// access token and the assertion, even when the endpoint echoes the request back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_debug_or_display() {
    const TOKEN: &str = "eyJ0eXAiOiJKV1QifQ.SECRET-ACCESS-TOKEN.sig";
    let server = TestServer::start(|n, r| match n {
        1 => Reply::token(TOKEN, 3600, None),
        // An endpoint that echoes the whole form into its error, the assertion included.
        _ => Reply::json(
            400,
            serde_json::json!({"error": "invalid_request", "error_description": format!("AADSTS50027: bad request {:?}", r.form), "trace_id": ASSERTION}),
        ),
    })
    .await;
    let builder = server.builder();
    let mut shown = vec![format!("{builder:?}")];
    let cred = builder.build().unwrap();
    shown.push(format!("{cred:?}"));
    let token = cred.get_token(&[SCOPE], &opts()).await.unwrap();
    assert_eq!(token.token().expose_secret(), TOKEN);
    shown.extend([
        format!("{token:?}"),
        format!("{token:#?}"),
        format!("{:?} {}", token.token(), token.token()),
    ]);
    let err = cred
        .get_token(&["https://storage.azure.com/.default"], &opts())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Entra(_)));
    shown.extend([format!("{err}"), format!("{err:?}"), format!("{err:#?}")]);
    if let Error::Entra(e) = &err {
        shown.push(format!("{:?}", e.error_description));
    }
    shown.push(wif_exchange::cli::error_line(&err));
    shown.push(format!("{:?}", TokenRequestOptions::new().with_cae(true)));
    shown.push(format!("{:?}", wif_exchange::RetryPolicy::default()));
    let all = shown.join("\n");
    assert!(!all.contains("SECRET-ACCESS-TOKEN"), "{all}");
    assert!(!all.contains("SECRET-ASSERTION-PAYLOAD"), "{all}");
    assert!(all.contains("[REDACTED]"));
}
