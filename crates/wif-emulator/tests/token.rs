//! The token endpoint: federated client assertions from a real HTTPS OIDC issuer, every
//! validation failure's AADSTS code, client secrets, and malformed requests.

mod common;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use common::*;
use reqwest::StatusCode;
use ring::signature;
use serde_json::{Value, json};
use wif_emulator::{CredentialSeed, SettingsPatch};

async fn verify_with_jwks(env: &Env, token: &str) {
    let jwks: Value = env
        .http
        .get(format!(
            "{}/{TENANT}/discovery/v2.0/keys",
            env.emulator.base_url()
        ))
        .send()
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().expect("header"))
            .expect("b64"),
    )
    .expect("json");
    let key = jwks["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["kid"] == header["kid"])
        .expect("kid published in JWKS");
    let field = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(key[name].as_str().expect("field"))
            .expect("b64")
    };
    let (input, sig) = token.rsplit_once('.').expect("signature");
    signature::RsaPublicKeyComponents {
        n: field("n"),
        e: field("e"),
    }
    .verify(
        &signature::RSA_PKCS1_2048_8192_SHA256,
        input.as_bytes(),
        &URL_SAFE_NO_PAD.decode(sig).expect("b64"),
    )
    .expect("access token verifies against the JWKS");
}

#[tokio::test]
async fn application_exchange_with_rs256_assertion_returns_a_signed_access_token() {
    let env = Env::start().await;
    let assertion = env.issuer.rs256(&env.issuer.claims(SUBJECT));
    let (status, body) = env.exchange(APP_ID, &assertion).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    assert!(
        body.get("refresh_in").is_none(),
        "short-lived tokens carry no refresh_in"
    );
    let token = body["access_token"].as_str().expect("access_token");
    let claims = claims_of(token);
    assert_eq!(claims["aud"], GRAPH);
    assert_eq!(claims["iss"], env.emulator.issuer(TENANT));
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(claims["appid"], APP_ID);
    assert_eq!(claims["azp"], APP_ID);
    assert_eq!(claims["azpacr"], "2");
    assert_eq!(claims["ver"], "2.0");
    assert!(claims["oid"].is_string());
    assert_eq!(claims["sub"], claims["oid"]);
    let exp = claims["exp"].as_i64().expect("exp");
    assert_eq!(exp - claims["iat"].as_i64().expect("iat"), 3599);
    assert!(claims["nbf"].as_i64().is_some());
    verify_with_jwks(&env, token).await;
}

#[tokio::test]
async fn identity_exchange_with_es256_assertion_via_tenant_domain() {
    let env = Env::start().await;
    let assertion = env.issuer.es256(&env.issuer.claims(SUBJECT));
    let (status, body) = env
        .token(
            "contoso.onmicrosoft.com",
            &[
                ("client_id", IDENTITY_CLIENT_ID),
                ("scope", "https://management.azure.com//.default"),
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", &assertion),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    let claims = claims_of(body["access_token"].as_str().expect("token"));
    assert_eq!(claims["aud"], "https://management.azure.com/");
    assert_eq!(claims["tid"], TENANT);
    assert_eq!(claims["appid"], IDENTITY_CLIENT_ID);
    let mirid = claims["xms_mirid"].as_str().expect("xms_mirid");
    assert!(
        mirid.ends_with(&format!("/userAssignedIdentities/{IDENTITY}")),
        "{mirid}"
    );
}

#[tokio::test]
async fn long_lived_tokens_carry_refresh_in_like_entra() {
    let env = Env::start().await;
    env.emulator
        .admin()
        .patch_settings(&SettingsPatch {
            token_lifetime_seconds: Some(86_400),
            ..SettingsPatch::default()
        })
        .await
        .expect("settings");
    let (status, body) = env
        .exchange(APP_ID, &env.issuer.rs256(&env.issuer.claims(SUBJECT)))
        .await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(body["expires_in"], 86_400);
    assert_eq!(body["refresh_in"], 43_200);
}

#[tokio::test]
async fn tenant_path_errors() {
    let env = Env::start().await;
    let form = [("grant_type", "client_credentials")];
    let (status, body) = env.token("00000000-0000-0000-0000-00000000dead", &form).await;
    assert_aad(status, &body, 400, "invalid_request", 90002);
    let (status, body) = env.token("not_a_tenant", &form).await;
    assert_aad(status, &body, 400, "invalid_request", 900023);
    let (status, body) = env.token("common", &form).await;
    assert_aad(status, &body, 400, "invalid_request", 9001023);
}

#[tokio::test]
async fn request_parameter_errors() {
    let env = Env::start().await;
    let assertion = env.issuer.rs256(&env.issuer.claims(SUBJECT));
    let full = [
        ("client_id", APP_ID),
        ("scope", "https://graph.microsoft.com/.default"),
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion.as_str()),
    ];
    let without = |name: &str| {
        full.iter()
            .copied()
            .filter(|(k, _)| *k != name)
            .collect::<Vec<_>>()
    };
    let with = |name: &str, value: &'static str| {
        full.iter()
            .map(|&(k, v)| if k == name { (k, value) } else { (k, v) })
            .collect::<Vec<_>>()
    };
    for missing in ["grant_type", "client_id", "scope", "client_assertion_type"] {
        let (status, body) = env.token(TENANT, &without(missing)).await;
        assert_aad(status, &body, 400, "invalid_request", 900144);
        let description = body["error_description"].as_str().expect("description");
        assert!(description.contains(&format!("'{missing}'")), "{description}");
    }
    let (status, body) = env.token(TENANT, &with("grant_type", "password")).await;
    assert_aad(status, &body, 400, "unsupported_grant_type", 70003);
    let (status, body) = env
        .token(TENANT, &with("scope", "https://graph.microsoft.com/User.Read"))
        .await;
    assert_aad(status, &body, 400, "invalid_scope", 1002012);
    let (status, body) = env.token(TENANT, &with("scope", "/.default")).await;
    assert_aad(status, &body, 400, "invalid_scope", 70011);
    let (status, body) = env
        .token(TENANT, &with("scope", "api://a/.default api://b/.default"))
        .await;
    assert_aad(status, &body, 400, "invalid_scope", 700022);
    let (status, body) = env
        .token(TENANT, &with("client_id", "00000000-0000-0000-0000-000000000404"))
        .await;
    assert_aad(status, &body, 400, "unauthorized_client", 700016);
    let (status, body) = env.token(TENANT, &without("client_assertion")).await;
    assert_aad(status, &body, 401, "invalid_client", 7000218);
    let (status, body) = env
        .token(TENANT, &with("client_assertion_type", "urn:other"))
        .await;
    assert_aad(status, &body, 400, "invalid_request", 90011);
}

#[tokio::test]
async fn client_secrets_are_checked() {
    let env = Env::start().await;
    let form = |client: &'static str, secret: &'static str| {
        vec![
            ("client_id", client),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
            ("client_secret", secret),
        ]
    };
    let (status, body) = env
        .token(TENANT, &form(CONTROLLER_APP_ID, "controller-secret"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert_eq!(
        claims_of(body["access_token"].as_str().expect("token"))["azpacr"],
        "1"
    );
    let (status, body) = env.token(TENANT, &form(CONTROLLER_APP_ID, "wrong")).await;
    assert_aad(status, &body, 401, "invalid_client", 7000215);
    let (status, body) = env.token(TENANT, &form(IDENTITY_CLIENT_ID, "anything")).await;
    assert_aad(status, &body, 401, "invalid_client", 7000215);
}

#[tokio::test]
async fn client_without_federated_credentials_gets_70025() {
    let env = Env::start().await;
    let (status, body) = env
        .exchange(CONTROLLER_APP_ID, &env.issuer.rs256(&env.issuer.claims(SUBJECT)))
        .await;
    assert_aad(status, &body, 401, "invalid_client", 70025);
}

#[tokio::test]
async fn malformed_assertions_get_50027() {
    let env = Env::start().await;
    let none_alg = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(env.issuer.claims(SUBJECT).to_string())
    );
    let mut no_sub = env.issuer.claims(SUBJECT);
    no_sub.as_object_mut().expect("object").remove("sub");
    for assertion in [
        "not-a-jwt".to_string(),
        "a.b.c".to_string(),
        none_alg,
        env.issuer.rs256(&no_sub),
        env.issuer.rs256(&json!("just a string")),
    ] {
        let (status, body) = env.exchange(APP_ID, &assertion).await;
        assert_aad(status, &body, 400, "invalid_request", 50027);
    }
}

#[tokio::test]
async fn lifetime_rules_70023_and_700024() {
    let env = Env::start().await;
    let now = now();
    let mut too_long = env.issuer.claims(SUBJECT);
    too_long["exp"] = json!(now + 25 * 3600 + 60);
    let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&too_long)).await;
    assert_aad(status, &body, 401, "invalid_client", 70023);

    let mut no_iat = env.issuer.claims(SUBJECT);
    no_iat.as_object_mut().expect("object").remove("iat");
    let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&no_iat)).await;
    assert_aad(status, &body, 401, "invalid_client", 70023);

    let mut extreme = env.issuer.claims(SUBJECT);
    extreme["exp"] = json!(i64::MAX);
    extreme["iat"] = json!(i64::MIN);
    let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&extreme)).await;
    assert_aad(status, &body, 401, "invalid_client", 70023);
    extreme["exp"] = json!(1e300);
    extreme["iat"] = json!(-1e300);
    let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&extreme)).await;
    assert_aad(status, &body, 401, "invalid_client", 70023);

    let mut expired = env.issuer.claims(SUBJECT);
    expired["iat"] = json!(now - 7200);
    expired["nbf"] = json!(now - 7200);
    expired["exp"] = json!(now - 3600);
    let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&expired)).await;
    assert_aad(status, &body, 401, "invalid_client", 700024);
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("not within its valid time range"))
    );

    let mut future = env.issuer.claims(SUBJECT);
    future["nbf"] = json!(now + 3600);
    future["exp"] = json!(now + 7200);
    let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&future)).await;
    assert_aad(status, &body, 401, "invalid_client", 700024);

    // Within the default 5-minute skew an expired assertion is still accepted.
    let mut skewed = env.issuer.claims(SUBJECT);
    skewed["exp"] = json!(now - 60);
    skewed["iat"] = json!(now - 3660);
    let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&skewed)).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
}

#[tokio::test]
async fn issuer_audience_and_subject_are_matched_exactly() {
    let env = Env::start().await;
    // Trailing slash: a different issuer, byte for byte.
    let mut claims = env.issuer.claims(SUBJECT);
    claims["iss"] = json!(format!("{}/", env.issuer.url));
    let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&claims)).await;
    assert_aad(status, &body, 401, "invalid_client", 700211);
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains("issuer"))
    );

    let mut claims = env.issuer.claims(SUBJECT);
    claims["aud"] = json!(["api://SomethingElse"]);
    let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&claims)).await;
    assert_aad(status, &body, 401, "invalid_client", 700212);

    // A string `aud` is as good as an array.
    let mut claims = env.issuer.claims(SUBJECT);
    claims["aud"] = json!(AUDIENCE);
    let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&claims)).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");

    let (status, body) = env
        .exchange(
            APP_ID,
            &env.issuer
                .rs256(&env.issuer.claims("system:serviceaccount:demo:other")),
        )
        .await;
    assert_aad(status, &body, 401, "invalid_client", 700213);

    let (status, body) = env
        .exchange(
            APP_ID,
            &env.issuer.rs256(&env.issuer.claims(&SUBJECT.to_uppercase())),
        )
        .await;
    assert_aad(status, &body, 401, "invalid_client", 7002138);
}

#[tokio::test]
async fn signature_and_key_failures() {
    let env = Env::start_with(|config| {
        // A credential whose issuer does not answer (port 1 on loopback).
        config.tenants[0].applications[0]
            .federated_identity_credentials
            .push(CredentialSeed {
                name: "unreachable".into(),
                issuer: "https://127.0.0.1:1".into(),
                subject: SUBJECT.into(),
                ..CredentialSeed::default()
            });
    })
    .await;
    let claims = env.issuer.claims(SUBJECT);

    let (status, body) = env
        .exchange(APP_ID, &env.issuer.es256_unpublished(&claims, "unknown-kid"))
        .await;
    assert_aad(status, &body, 401, "invalid_client", 7000272);

    // Published kid, wrong key.
    let (status, body) = env
        .exchange(APP_ID, &env.issuer.es256_unpublished(&claims, "ec-1"))
        .await;
    assert_aad(status, &body, 401, "invalid_client", 700027);

    // Payload swapped after signing.
    let genuine = env.issuer.rs256(&claims);
    let other = env
        .issuer
        .rs256(&env.issuer.claims("system:serviceaccount:demo:x"));
    let parts: Vec<&str> = genuine.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        other.split('.').nth(1).expect("payload"),
        parts[2]
    );
    let (status, body) = env.exchange(APP_ID, &forged).await;
    assert_aad(status, &body, 401, "invalid_client", 700027);

    let mut unreachable = env.issuer.claims(SUBJECT);
    unreachable["iss"] = json!("https://127.0.0.1:1");
    let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&unreachable)).await;
    assert_aad(status, &body, 400, "invalid_request", 90061);
}

#[tokio::test]
async fn issuer_signed_by_an_untrusted_ca_is_unreachable() {
    let env = Env::start().await;
    let stranger = TestIssuer::start().await; // its CA is not trusted by the emulator
    env.emulator
        .admin()
        .seed(&wif_emulator::Seed {
            tenants: vec![wif_emulator::TenantSeed {
                id: TENANT.into(),
                applications: vec![wif_emulator::ApplicationSeed {
                    display_name: "workload".into(),
                    app_id: Some(APP_ID.into()),
                    federated_identity_credentials: vec![CredentialSeed {
                        name: "stranger".into(),
                        issuer: stranger.url.clone(),
                        subject: SUBJECT.into(),
                        ..CredentialSeed::default()
                    }],
                    ..wif_emulator::ApplicationSeed::default()
                }],
                ..wif_emulator::TenantSeed::default()
            }],
        })
        .await
        .expect("seed");
    let (status, body) = env
        .exchange(APP_ID, &stranger.rs256(&stranger.claims(SUBJECT)))
        .await;
    assert_aad(status, &body, 400, "invalid_request", 90061);
    assert_eq!(
        stranger.requests(),
        0,
        "the TLS handshake must fail before any request"
    );
}

#[tokio::test]
async fn issuer_keys_are_cached_and_refetched_on_unknown_kid() {
    let env = Env::start().await;
    let claims = env.issuer.claims(SUBJECT);
    for _ in 0..3 {
        let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&claims)).await;
        assert_eq!(status, StatusCode::OK, "{body:#}");
    }
    assert_eq!(
        env.issuer.requests(),
        2,
        "one discovery + one JWKS fetch, then cached"
    );

    // Key rotation: the RSA key disappears from the JWKS; a token with an unknown kid forces a
    // refetch, which now also lacks rsa-1.
    env.issuer.set_jwks(json!({ "keys": [] }));
    let (status, body) = env
        .exchange(APP_ID, &env.issuer.es256_unpublished(&claims, "new-kid"))
        .await;
    assert_aad(status, &body, 401, "invalid_client", 7000272);
    assert_eq!(env.issuer.requests(), 4);
    let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&claims)).await;
    assert_aad(status, &body, 401, "invalid_client", 7000272);
    env.issuer.restore_jwks();
    let (status, body) = env.exchange(APP_ID, &env.issuer.rs256(&claims)).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
}

#[tokio::test]
async fn malformed_requests_get_entra_errors_never_500() {
    let env = Env::start().await;
    let url = env.emulator.token_endpoint(TENANT);
    // JSON instead of a form: no parameters are read.
    let response = env
        .http
        .post(&url)
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .expect("send");
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_aad(status, &body, 400, "invalid_request", 900144);

    for raw in [
        &b""[..],
        b"%%%%",
        b"grant_type",
        b"\xff\xfe\x00garbage",
        b"grant_type=client_credentials&client_id=&scope=",
    ] {
        let response = env
            .http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(raw.to_vec())
            .send()
            .await
            .expect("send");
        let status = response.status();
        let body: Value = response.json().await.expect("json");
        assert_aad(status, &body, 400, "invalid_request", 900144);
    }

    let response = env.http.get(&url).send().await.expect("send");
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_aad(status, &body, 400, "invalid_request", 900561);

    // A tenant segment that is not valid UTF-8 once decoded.
    let response = env
        .http
        .post(format!("{}/%FF%FE/oauth2/v2.0/token", env.emulator.base_url()))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("send");
    let status = response.status();
    let body: Value = response.json().await.expect("json");
    assert_aad(status, &body, 400, "invalid_request", 900023);

    // A client-request-id is echoed as the correlation id.
    let id = "2d4a1bd6-3f36-4b0e-9d5f-b2dc1c2e9f00";
    let response = env
        .http
        .post(&url)
        .header("client-request-id", id)
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("send");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["correlation_id"], id);
}
