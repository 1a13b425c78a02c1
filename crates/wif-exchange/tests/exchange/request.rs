//! The request: the documented form, the answer's expiry and refresh time, the assertion callback.

use super::*;

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
