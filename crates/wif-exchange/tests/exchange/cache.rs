//! The token cache: one request for many callers, background refresh, and what separates keys.

use super::*;

/// The token `cred` answers `o` with (the call must succeed).
async fn token(cred: &wif_exchange::WorkloadIdentityCredential, o: &TokenRequestOptions) -> String {
    cred.get_token(&[SCOPE], o)
        .await
        .unwrap()
        .token()
        .expose_secret()
        .to_owned()
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
    assert_eq!(token(&cred, &opts()).await, "token-1");
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
    assert_eq!(token(&cred, &opts()).await, "token-2");
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
        assert_eq!(token(&cred, &opts()).await, "token-1");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.count(), 2, "one failed refresh, then a back-off");
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
        async move { token(&cred, &o).await }
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
