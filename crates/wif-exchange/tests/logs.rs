//! Logs carry the structured fields and never a secret. One test per binary: it installs the
//! global subscriber.
#![allow(clippy::unwrap_used)]

mod common;

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use common::*;
use wif_exchange::TokenRequestOptions;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_have_fields_and_no_secrets() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    const TOKEN: &str = "eyJ0eXAi.LOGGED-ACCESS-TOKEN.sig";
    let server = TestServer::start(|n, r| match n {
        1 => Reply::entra(429, "temporarily_unavailable", 90055, "throttled").header("retry-after", "0"),
        2 => Reply::token(TOKEN, 3600, Some(1)),
        _ => Reply::json(
            401,
            serde_json::json!({"error": "invalid_client", "error_codes": [700024], "error_description": format!("AADSTS700024: expired {}", r.form["client_assertion"])}),
        ),
    })
    .await;
    let cred = server.credential();
    cred.get_token(&[SCOPE], &TokenRequestOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Past refresh_on: background refresh fails with 401 (logged at warn).
    cred.get_token(&[SCOPE], &TokenRequestOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    cred.get_token(
        &["https://storage.azure.com/.default"],
        &TokenRequestOptions::default(),
    )
    .await
    .unwrap_err();

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(!logs.contains("LOGGED-ACCESS-TOKEN"), "{logs}");
    assert!(!logs.contains("SECRET-ASSERTION-PAYLOAD"), "{logs}");
    for field in [
        format!("tenant={TENANT}"),
        format!("client_id={CLIENT}"),
        format!("scope={SCOPE}"),
        "status=429".into(),
        "aadsts=90055".into(),
        "attempt=1".into(),
        "aadsts=700024".into(),
        "background token refresh failed".into(),
    ] {
        assert!(logs.contains(&field), "missing {field} in:\n{logs}");
    }
}
