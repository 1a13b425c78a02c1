//! Fault injection (429 + Retry-After, 5xx, latency), propagation delay, counters and reset.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use wif_emulator::{FaultRule, Faults, ServerError, SettingsPatch, Throttle};

fn throttle_once(retry_after_seconds: f64) -> FaultRule {
    FaultRule {
        throttle: Some(Throttle {
            every_nth: Some(1),
            limit: Some(1),
            retry_after_seconds,
            ..Throttle::default()
        }),
        ..FaultRule::default()
    }
}

#[tokio::test]
async fn throttling_answers_429_with_retry_after_in_each_apis_shape() {
    let env = Env::start().await;
    let admin = env.emulator.admin();
    admin
        .set_faults(&Faults {
            token: throttle_once(2.0),
            graph: throttle_once(2.128),
            arm: throttle_once(3.0),
            ..Faults::default()
        })
        .await
        .expect("faults");
    let assertion = env.issuer.rs256(&env.issuer.claims(SUBJECT));

    // Token endpoint: Entra shape, integer Retry-After; the next request goes through.
    let response = env
        .http
        .post(env.emulator.token_endpoint(TENANT))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "2");
    let body: Value = response.json().await.expect("json");
    assert_aad(
        StatusCode::TOO_MANY_REQUESTS,
        &body,
        429,
        "temporarily_unavailable",
        90055,
    );
    let (status, body) = env.exchange(APP_ID, &assertion).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");

    // Graph: fractional Retry-After, innerError with code/status 429.
    let graph_token = env.bearer(GRAPH).await;
    let url = env.graph("applications");
    let response = env.get(&url, &graph_token).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "2.128");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "TooManyRequests");
    assert_eq!(body["error"]["innerError"]["status"], "429");
    let response = env.get(&url, &graph_token).await;
    assert_eq!(response.status(), StatusCode::OK);

    // ARM.
    let arm_token = env.bearer(ARM).await;
    let url = format!("{}?{ARM_API}", env.identity_url(IDENTITY));
    let response = env.get(&url, &arm_token).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "3");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "TooManyRequests");
    let response = env.get(&url, &arm_token).await;
    assert_eq!(response.status(), StatusCode::OK);

    let counters = admin.counters().await.expect("counters");
    assert_eq!((counters.token.requests, counters.token.throttled), (2, 1));
    assert_eq!((counters.graph.requests, counters.graph.throttled), (2, 1));
    assert_eq!((counters.arm.requests, counters.arm.throttled), (2, 1));
}

#[tokio::test]
async fn every_nth_and_probability_triggers() {
    let env = Env::start().await;
    let admin = env.emulator.admin();
    admin
        .set_faults(&Faults {
            discovery: FaultRule {
                server_error: Some(ServerError {
                    every_nth: Some(3),
                    status: 500,
                    ..ServerError::default()
                }),
                ..FaultRule::default()
            },
            ..Faults::default()
        })
        .await
        .expect("faults");
    let url = format!("{}/{TENANT}/discovery/v2.0/keys", env.emulator.base_url());
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(env.http.get(&url).send().await.expect("send").status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 500, 200, 200, 500]);

    admin
        .set_faults(&Faults {
            graph: FaultRule {
                throttle: Some(Throttle {
                    probability: Some(1.0),
                    ..Throttle::default()
                }),
                ..FaultRule::default()
            },
            ..Faults::default()
        })
        .await
        .expect("faults");
    let token = env.bearer(GRAPH).await;
    for _ in 0..3 {
        let response = env.get(&env.graph("applications"), &token).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "1");
    }
}

#[tokio::test]
async fn server_errors_use_each_apis_shape() {
    let env = Env::start().await;
    let error = |status: u16| FaultRule {
        server_error: Some(ServerError {
            every_nth: Some(1),
            status,
            ..ServerError::default()
        }),
        ..FaultRule::default()
    };
    env.emulator
        .admin()
        .set_faults(&Faults {
            token: error(503),
            graph: error(503),
            arm: error(500),
            ..Faults::default()
        })
        .await
        .expect("faults");
    let (status, body) = env.exchange(APP_ID, "irrelevant").await;
    assert_aad(status, &body, 503, "temporarily_unavailable", 50033);

    let graph = env.bearer(GRAPH).await;
    let (status, body) = env
        .call(&graph, Method::GET, &env.graph("applications"), None)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["code"], "serviceNotAvailable");

    let arm = env.bearer(ARM).await;
    let url = format!("{}?{ARM_API}", env.identity_url(IDENTITY));
    let (status, body) = env.call(&arm, Method::GET, &url, None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["error"]["code"], "InternalServerError");
}

#[tokio::test]
async fn latency_is_added() {
    let env = Env::start().await;
    env.emulator
        .admin()
        .set_faults(&Faults {
            token: FaultRule {
                latency_ms: 400,
                ..FaultRule::default()
            },
            ..Faults::default()
        })
        .await
        .expect("faults");
    let assertion = env.issuer.rs256(&env.issuer.claims(SUBJECT));
    let started = Instant::now();
    let (status, body) = env.exchange(APP_ID, &assertion).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn counters_count_per_api_and_reset_restores_the_start() {
    let env = Env::start().await;
    let admin = env.emulator.admin();
    admin.reset().await.expect("reset");
    let base = env.emulator.base_url().to_string();
    env.http
        .get(format!("{base}/{TENANT}/v2.0/.well-known/openid-configuration"))
        .send()
        .await
        .expect("send");
    env.exchange(APP_ID, &env.issuer.rs256(&env.issuer.claims(SUBJECT)))
        .await;
    env.exchange(APP_ID, "x").await;
    env.http
        .get(env.graph("applications"))
        .send()
        .await
        .expect("send");
    let counters = admin.counters().await.expect("counters");
    assert_eq!(counters.discovery.requests, 1);
    assert_eq!(counters.token.requests, 2);
    assert_eq!(counters.graph.requests, 1);
    assert_eq!(counters.arm.requests, 0);

    admin
        .set_faults(&Faults {
            token: throttle_once(1.0),
            ..Faults::default()
        })
        .await
        .expect("faults");
    admin
        .patch_settings(&SettingsPatch {
            propagation_delay_ms: Some(60_000),
            ..SettingsPatch::default()
        })
        .await
        .expect("settings");
    admin.reset().await.expect("reset");
    assert_eq!(admin.counters().await.expect("counters"), Default::default());
    assert_eq!(admin.faults().await.expect("faults"), Faults::default());
    assert_eq!(admin.settings().await.expect("settings").propagation_delay_ms, 0);
}

#[tokio::test]
async fn propagation_delay_answers_70021_until_the_credential_is_honoured() {
    let env = Env::start().await;
    let admin = env.emulator.admin();
    admin
        .patch_settings(&SettingsPatch {
            propagation_delay_ms: Some(1500),
            ..SettingsPatch::default()
        })
        .await
        .expect("settings");
    let graph = env.bearer(GRAPH).await;
    let new_subject = "system:serviceaccount:demo:new";
    let credentials = env.graph(&format!(
        "applications(appId='{APP_ID}')/federatedIdentityCredentials"
    ));
    let body =
        json!({"name": "new-sa", "issuer": env.issuer.url, "subject": new_subject, "audiences": [AUDIENCE]});
    let (status, _) = env.call(&graph, Method::POST, &credentials, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let created = Instant::now();
    let assertion = env.issuer.rs256(&env.issuer.claims(new_subject));
    let (status, body) = env.exchange(APP_ID, &assertion).await;
    assert_aad(status, &body, 400, "invalid_request", 70021);
    assert!(
        body["error_description"]
            .as_str()
            .is_some_and(|d| d.contains(&format!("Assertion Subject: '{new_subject}'")))
    );
    // The seeded credential is unaffected.
    let (status, _) = env
        .exchange(APP_ID, &env.issuer.rs256(&env.issuer.claims(SUBJECT)))
        .await;
    assert_eq!(status, StatusCode::OK);

    tokio::time::sleep(
        Duration::from_millis(1500).saturating_sub(created.elapsed()) + Duration::from_millis(100),
    )
    .await;
    let (status, body) = env.exchange(APP_ID, &assertion).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");

    // An update keeps the old values honoured until the new ones propagate.
    let moved = "system:serviceaccount:demo:moved";
    let url = format!("{credentials}/new-sa");
    let (status, _) = env
        .call(&graph, Method::PATCH, &url, Some(json!({"subject": moved})))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = env.exchange(APP_ID, &assertion).await;
    assert_eq!(status, StatusCode::OK, "old subject still honoured");
    let moved_assertion = env.issuer.rs256(&env.issuer.claims(moved));
    let (status, body) = env.exchange(APP_ID, &moved_assertion).await;
    assert_aad(status, &body, 400, "invalid_request", 70021);

    // The admin API can end the delay at once.
    admin.propagate().await.expect("propagate");
    let (status, body) = env.exchange(APP_ID, &moved_assertion).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    let (status, body) = env.exchange(APP_ID, &assertion).await;
    assert_aad(status, &body, 401, "invalid_client", 700213);

    // ARM credentials propagate the same way.
    let arm = env.bearer(ARM).await;
    let url = format!(
        "{}/federatedIdentityCredentials/arm-new?{ARM_API}",
        env.identity_url(IDENTITY)
    );
    let body =
        json!({"properties": {"issuer": env.issuer.url, "subject": new_subject, "audiences": [AUDIENCE]}});
    let (status, _) = env.call(&arm, Method::PUT, &url, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = env.exchange(IDENTITY_CLIENT_ID, &assertion).await;
    assert_aad(status, &body, 400, "invalid_request", 70021);
}
