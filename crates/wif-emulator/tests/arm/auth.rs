//! Bearer tokens: ARM wants a signed ARM token for the subscription's tenant.

use super::*;

#[tokio::test]
async fn arm_requires_an_arm_token_for_the_subscription_tenant() {
    let env = Env::start().await;
    let url = format!("{}?{ARM_API}", env.identity_url(IDENTITY));
    let send = |token: Option<String>| {
        let mut request = env.http.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let response = send(None).await.expect("send");
    assert!(response.headers().contains_key("www-authenticate"));
    assert_arm_response(response, 401, "AuthenticationFailed").await;

    let graph = env.bearer(GRAPH).await;
    let response = send(Some(graph)).await.expect("send");
    assert_arm_response(response, 401, "InvalidAuthenticationTokenAudience").await;

    let mut foreign = env.issuer.claims(SUBJECT);
    foreign["aud"] = json!(ARM);
    let response = send(Some(env.issuer.rs256(&foreign))).await.expect("send");
    assert_arm_response(response, 401, "InvalidAuthenticationToken").await;

    let other = env.other_tenant_bearer(ARM).await;
    let response = send(Some(other)).await.expect("send");
    assert_arm_response(response, 401, "InvalidAuthenticationTokenTenant").await;

    let response = send(Some(env.bearer(ARM).await)).await.expect("send");
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn unsigned_tokens_are_refused_by_arm_and_graph_with_a_challenge() {
    let env = Env::start().await;
    // The emulator's own token with its signature dropped and `alg: none`.
    let real = env.bearer(ARM).await;
    let claims = real.split('.').nth(1).expect("payload").to_string();
    let header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    for token in [format!("{header}.{claims}."), format!("{header}.{claims}")] {
        let response = env
            .get(&format!("{}?{ARM_API}", env.identity_url(IDENTITY)), &token)
            .await;
        assert!(response.headers().contains_key("www-authenticate"));
        assert_arm_response(response, 401, "InvalidAuthenticationToken").await;

        let response = env.get(&env.graph("applications"), &token).await;
        assert!(response.headers().contains_key("www-authenticate"));
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
