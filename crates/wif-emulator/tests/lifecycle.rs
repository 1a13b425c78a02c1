//! Start, discovery, restart (state, CA and signing key survive), the CLI entry point and the
//! issuer URL override.

mod common;

use std::time::Duration;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use wif_emulator::{Args, Emulator, EmulatorConfig};

async fn get_json(http: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = http.get(url).send().await.expect("send");
    let status = response.status();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn a_fresh_state_dir_gets_a_ca_a_signing_key_and_serves_discovery() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No preseeded key: this start generates everything.
    let handle = Emulator::start(EmulatorConfig::new(dir.path()).with_config(seed_config("https://unused")))
        .await
        .expect("starts");
    for file in ["ca.pem", "ca-key.pem", "signing-key.pem", "state.json"] {
        assert!(dir.path().join(file).is_file(), "{file} written");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for private in ["ca-key.pem", "signing-key.pem"] {
            let mode = std::fs::metadata(dir.path().join(private))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{private} is private: {mode:o}");
        }
    }
    assert_eq!(
        std::fs::read_to_string(handle.ca_pem_path()).expect("ca"),
        handle.ca_pem()
    );
    let http = handle.http_client().expect("client");
    let base = handle.base_url();

    let (status, doc) = get_json(
        &http,
        &format!("{base}/{TENANT}/v2.0/.well-known/openid-configuration"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["issuer"], format!("{base}/{TENANT}/v2.0"));
    assert_eq!(
        doc["token_endpoint"],
        format!("{base}/{TENANT}/oauth2/v2.0/token")
    );
    assert_eq!(doc["jwks_uri"], format!("{base}/{TENANT}/discovery/v2.0/keys"));
    assert_eq!(doc["id_token_signing_alg_values_supported"], json!(["RS256"]));

    // By domain name: the same tenant.
    let (_, by_domain) = get_json(
        &http,
        &format!("{base}/contoso.onmicrosoft.com/v2.0/.well-known/openid-configuration"),
    )
    .await;
    assert_eq!(by_domain["issuer"], doc["issuer"]);

    let (status, jwks) = get_json(&http, &format!("{base}/{TENANT}/discovery/v2.0/keys")).await;
    assert_eq!(status, StatusCode::OK);
    let keys = jwks["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "RSA");
    assert_eq!(keys[0]["use"], "sig");
    assert!(keys[0]["kid"].is_string() && keys[0]["n"].is_string() && keys[0]["e"] == "AQAB");

    let (_, common) = get_json(
        &http,
        &format!("{base}/common/v2.0/.well-known/openid-configuration"),
    )
    .await;
    assert_eq!(common["issuer"], format!("{base}/{{tenantid}}/v2.0"));

    let (status, instance) = get_json(
        &http,
        &format!(
            "{base}/common/discovery/instance?api-version=1.1&authorization_endpoint={base}/{TENANT}/oauth2/v2.0/authorize"
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        instance["tenant_discovery_endpoint"],
        format!("{base}/{TENANT}/v2.0/.well-known/openid-configuration")
    );
    let host = base.trim_start_matches("https://");
    assert_eq!(instance["metadata"][0]["aliases"], json!([host]));

    let (status, err) = get_json(
        &http,
        &format!("{base}/00000000-0000-0000-0000-00000000dead/v2.0/.well-known/openid-configuration"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(err["error"], "invalid_tenant");
    assert_eq!(err["error_codes"], json!([90002]));

    let (status, err) = get_json(&http, &format!("{base}/no/such/path")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(err["error"].is_string());
    handle.shutdown().await;
}

#[tokio::test]
async fn restart_keeps_directory_ca_and_signing_key() {
    let env = Env::start().await;
    let http = env.http.clone();
    let base = env.emulator.base_url().to_string();
    let (_, jwks_before) = get_json(&http, &format!("{base}/{TENANT}/discovery/v2.0/keys")).await;
    let ca_before = env.emulator.ca_pem().to_string();

    // Write through Graph and ARM.
    let graph = env.bearer(GRAPH).await;
    let response = http
        .post(env.graph("applications"))
        .bearer_auth(&graph)
        .json(&json!({"displayName": "survivor"}))
        .send()
        .await
        .expect("send");
    let app: Value = response.json().await.expect("json");
    let app_id = app["appId"].as_str().expect("appId").to_string();
    let response = http
        .post(env.graph(&format!(
            "applications(appId='{app_id}')/federatedIdentityCredentials"
        )))
        .bearer_auth(&graph)
        .json(&json!({"name": "kept", "issuer": env.issuer.url, "subject": SUBJECT, "audiences": [AUDIENCE]}))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::CREATED);
    let arm = env.bearer(ARM).await;
    let response = http
        .put(format!("{}?{ARM_API}", env.identity_url("survivor")))
        .bearer_auth(&arm)
        .json(&json!({"location": "westeurope"}))
        .send()
        .await
        .expect("send");
    let identity: Value = response.json().await.expect("json");

    let Env {
        issuer,
        emulator,
        dir,
        ..
    } = env;
    let old_token = graph;
    emulator.shutdown().await;

    let restarted = Emulator::start(EmulatorConfig::new(dir.path()).trust_ca_pem(issuer.ca_pem.clone()))
        .await
        .expect("restarts");
    assert_eq!(
        restarted.ca_pem(),
        ca_before,
        "same CA, so clients keep trusting it"
    );
    // The old client (trusting the old ca.pem) talks to the new instance.
    let base = restarted.base_url().to_string();
    let (_, jwks_after) = get_json(&http, &format!("{base}/{TENANT}/discovery/v2.0/keys")).await;
    assert_eq!(jwks_after["keys"][0]["kid"], jwks_before["keys"][0]["kid"]);
    assert_eq!(jwks_after["keys"][0]["n"], jwks_before["keys"][0]["n"]);
    // The old token's signature still verifies; only its issuer (old port) differs, so the
    // emulator refuses it as from another issuer rather than as forged.
    let response = http
        .get(format!("{}/v1.0/applications", restarted.graph_url()))
        .bearer_auth(&old_token)
        .send()
        .await
        .expect("send");
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["error"]["message"],
        "Access token validation failure. Invalid issuer."
    );

    let graph = restarted
        .admin()
        .mint_token(TENANT, CONTROLLER_APP_ID, GRAPH)
        .await
        .expect("mint");
    let (status, fics) = {
        let response = http
            .get(format!(
                "{}/v1.0/applications(appId='{app_id}')/federatedIdentityCredentials",
                restarted.graph_url()
            ))
            .bearer_auth(&graph)
            .send()
            .await
            .expect("send");
        (response.status(), response.json::<Value>().await.expect("json"))
    };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fics["value"][0]["name"], "kept");
    let arm = restarted
        .admin()
        .mint_token(TENANT, CONTROLLER_APP_ID, ARM)
        .await
        .expect("mint");
    let response = http
        .get(format!(
            "{}/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/survivor?{ARM_API}",
            restarted.arm_url()
        ))
        .bearer_auth(&arm)
        .send()
        .await
        .expect("send");
    let got: Value = response.json().await.expect("json");
    assert_eq!(got["properties"]["clientId"], identity["properties"]["clientId"]);

    // And the exchange for the application created before the restart works.
    let response = http
        .post(restarted.token_endpoint(TENANT))
        .form(&[
            ("client_id", app_id.as_str()),
            ("scope", "api://x/.default"),
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &issuer.rs256(&issuer.claims(SUBJECT))),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    restarted.shutdown().await;
}

#[tokio::test]
async fn run_serves_with_yaml_config_and_trust_ca_file_until_shutdown() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    preseed_key(&dir.path().join("state"));
    let config = dir.path().join("emulator.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
tenants:
  - id: {TENANT}
    applications:
      - displayName: workload
        appId: {APP_ID}
        federatedIdentityCredentials:
          - name: kind-demo-api
            issuer: {issuer}
            subject: {SUBJECT}
settings:
  tokenLifetimeSeconds: 7200
"#,
            issuer = issuer.url
        ),
    )
    .expect("config");
    let ca = dir.path().join("issuer-ca.pem");
    std::fs::write(&ca, &issuer.ca_pem).expect("ca");
    let args = <Args as clap::Parser>::try_parse_from([
        "emulator",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        dir.path().join("state").to_str().expect("utf8"),
        "--config",
        config.to_str().expect("utf8"),
        "--trust-ca",
        ca.to_str().expect("utf8"),
    ])
    .expect("args parse");
    // `run` prints the READY line on stdout (the test harness's); `serve`, which `run` calls,
    // reports the handle instead: the port it bound.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(wif_emulator::serve(
        args,
        move |handle| {
            let _ = ready_tx.send((handle.local_addr(), handle.ca_pem().to_owned()));
        },
        async {
            let _ = rx.await;
        },
    ));
    let (addr, ca_pem) = tokio::time::timeout(Duration::from_secs(30), ready_rx)
        .await
        .expect("emulator became ready")
        .expect("ready reported");
    let port = addr.port();
    let http = wif_emulator::http_client_trusting(&ca_pem).expect("client");
    let health = http
        .get(format!("https://127.0.0.1:{port}/admin/health"))
        .send()
        .await
        .expect("health");
    assert!(health.status().is_success());
    let response = http
        .post(format!("https://127.0.0.1:{port}/{TENANT}/oauth2/v2.0/token"))
        .form(&[
            ("client_id", APP_ID),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &issuer.rs256(&issuer.claims(SUBJECT))),
        ])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["expires_in"], 7200);
    assert_eq!(body["refresh_in"], 3600);

    tx.send(()).expect("signal");
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops")
        .expect("joins")
        .expect("run returns Ok");
}

#[tokio::test]
async fn run_refuses_bad_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    preseed_key(&dir.path().join("state"));
    let bad_config = dir.path().join("bad.yaml");
    std::fs::write(&bad_config, "tenants: [ { id: not-a-guid } ]\n").expect("write");
    let not_a_ca = dir.path().join("ca.pem");
    std::fs::write(&not_a_ca, "hello").expect("write");
    let parse = |extra: &[&str]| {
        let mut argv = vec![
            "emulator".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--state-dir".into(),
            dir.path().join("state").display().to_string(),
        ];
        argv.extend(extra.iter().map(|s| s.to_string()));
        <Args as clap::Parser>::try_parse_from(argv).expect("args")
    };
    let err = wif_emulator::run(parse(&["--config", bad_config.to_str().expect("utf8")]), async {})
        .await
        .expect_err("invalid config refused");
    assert!(matches!(err, wif_emulator::Error::InvalidConfig(_)), "{err:?}");
    let err = wif_emulator::run(parse(&["--trust-ca", not_a_ca.to_str().expect("utf8")]), async {})
        .await
        .expect_err("bad CA refused");
    assert!(matches!(err, wif_emulator::Error::TrustCa { .. }), "{err:?}");
    let err = wif_emulator::run(parse(&["--issuer-url", "http://127.0.0.1:1"]), async {})
        .await
        .expect_err("http issuer refused");
    assert!(matches!(err, wif_emulator::Error::IssuerUrl { .. }), "{err:?}");
}

#[tokio::test]
async fn issuer_url_override_is_advertised_and_in_the_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    preseed_key(dir.path());
    // The issuer URL names the port, so the port is known first: the test binds the listener and
    // hands it over (nothing else can take the port in between).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut config = EmulatorConfig::new(dir.path())
        .with_config(seed_config("https://unused"))
        .with_listener(listener);
    config.issuer_url = Some(format!("https://localhost:{port}/").parse().expect("url"));
    let handle = Emulator::start(config).await.expect("starts");
    assert_eq!(handle.base_url(), format!("https://localhost:{port}"));
    assert_eq!(handle.authority_host(), format!("https://localhost:{port}/"));
    let http = handle.http_client().expect("client");
    let (status, doc) = get_json(
        &http,
        &format!("https://localhost:{port}/{TENANT}/v2.0/.well-known/openid-configuration"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["issuer"], format!("https://localhost:{port}/{TENANT}/v2.0"));
    let token = handle
        .admin()
        .mint_token(TENANT, CONTROLLER_APP_ID, GRAPH)
        .await
        .expect("mint");
    assert_eq!(
        claims_of(&token)["iss"],
        format!("https://localhost:{port}/{TENANT}/v2.0")
    );
    handle.shutdown().await;
}
