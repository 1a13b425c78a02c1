//! Secrets never appear in Debug or Display.

use super::*;

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
