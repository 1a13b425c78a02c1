//! Helpers of `make bench` (scripts/bench-webhook.sh):
//!
//! - `bench_tls certs DIR`: writes a CA and a serving certificate for 127.0.0.1 into DIR;
//! - `bench_tls bare ADDR DIR [ANSWER]` (ADDR may have port 0; the bound address is printed as
//!   `listening on ADDR`): the same HTTPS transport as the webhook (axum +
//!   tokio-rustls + hyper, `server::serve_tls`, the same body limit) that reads each request body
//!   and answers with one fixed AdmissionReview without decoding anything: the ceiling any
//!   admission webhook on this transport can reach. `ANSWER` is a file holding the answer
//!   (`make bench` gives it the webhook's own answer to the benchmark pod, so both servers move
//!   the same bytes); without it, a bare `allowed: true`;
//! - `bench_tls scan ADDR DIR ANSWER`: the same, but each body is also read through
//!   `serde_json` (skipping every value): the floor of any webhook that reads the review at all.
//! - `bench_tls allow ADDR DIR [PATCH]`: a webhook that decides nothing, over HTTP/1.1 only: each
//!   review is read through `serde_json` and allowed, answering its `uid` (which the API server
//!   checks), unchanged or with the fixed JSON patch in the file `PATCH`. `make bench-burst`
//!   registers it with the API server to measure what calling any webhook, and applying wif's
//!   patch, costs there.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use axum::{Router, http::header, response::IntoResponse, routing::post};
use tokio_util::sync::CancellationToken;
use wif_webhook::{
    selfcert::{generate_ca, issue_cert},
    server::{self, Limits},
    tls::CertStore,
};

/// The one field of a review a do-nothing webhook needs; the rest is parsed and skipped.
#[derive(serde::Deserialize)]
struct Review {
    request: ReviewRequest,
}

#[derive(serde::Deserialize)]
struct ReviewRequest {
    uid: String,
}

/// `allowed: true` for the review in `body`, with `patch` (base64) when there is one.
fn allow(body: &[u8], patch: Option<&str>) -> Option<Vec<u8>> {
    let review: Review = serde_json::from_slice(body).ok()?;
    let mut response = serde_json::json!({"uid": review.request.uid, "allowed": true});
    if let Some(patch) = patch {
        response["patchType"] = "JSONPatch".into();
        response["patch"] = patch.into();
    }
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": response,
    }))
    .ok()
}

const FIXED: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("certs") => {
            let dir = PathBuf::from(args.get(2).ok_or("usage: bench_tls certs DIR")?);
            std::fs::create_dir_all(&dir)?;
            let now = time::OffsetDateTime::now_utc();
            let ca = generate_ca("wif-bench", now, Duration::from_secs(86400))?;
            let leaf = issue_cert(
                &ca.cert_pem,
                &ca.key_pem,
                &["localhost".to_owned()],
                &["127.0.0.1".parse()?],
                now,
                Duration::from_secs(86400),
            )?;
            std::fs::write(dir.join("ca.crt"), ca.cert_pem)?;
            std::fs::write(dir.join("tls.crt"), leaf.cert_pem)?;
            std::fs::write(dir.join("tls.key"), leaf.key_pem)?;
            Ok(())
        }
        Some(mode @ ("bare" | "scan" | "allow")) => {
            let addr: SocketAddr = args.get(2).ok_or("usage: bench_tls bare ADDR DIR")?.parse()?;
            let dir = PathBuf::from(args.get(3).ok_or("usage: bench_tls bare ADDR DIR")?);
            let answer = match args.get(4) {
                Some(file) => axum::body::Bytes::from(std::fs::read(file)?),
                None => axum::body::Bytes::from_static(FIXED.as_bytes()),
            };
            let max = Limits::default().max_body_bytes;
            let scan = mode == "scan";
            let echo_uid = mode == "allow";
            let patch: Option<std::sync::Arc<str>> = match args.get(4) {
                Some(file) if echo_uid => {
                    use base64::Engine;
                    Some(
                        base64::engine::general_purpose::STANDARD
                            .encode(std::fs::read(file)?)
                            .into(),
                    )
                }
                _ => None,
            };
            let store = CertStore::new();
            store.set_pem(
                &std::fs::read(dir.join("tls.crt"))?,
                &std::fs::read(dir.join("tls.key"))?,
                "bench",
            )?;
            let router = Router::new().route(
                wif_api::MUTATE_PATH,
                post(move |body: axum::body::Body| {
                    let answer = answer.clone();
                    let patch = patch.clone();
                    async move {
                        match axum::body::to_bytes(body, max).await {
                            Ok(body) if echo_uid => match allow(&body, patch.as_deref()) {
                                Some(answer) => {
                                    ([(header::CONTENT_TYPE, "application/json")], answer).into_response()
                                }
                                None => axum::http::StatusCode::BAD_REQUEST.into_response(),
                            },
                            Ok(body) => {
                                if scan && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
                                    return axum::http::StatusCode::BAD_REQUEST.into_response();
                                }
                                ([(header::CONTENT_TYPE, "application/json")], answer).into_response()
                            }
                            Err(_) => axum::http::StatusCode::BAD_REQUEST.into_response(),
                        }
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind(addr).await?;
            // `make bench` binds port 0 and reads the address from here.
            println!("listening on {}", listener.local_addr()?);
            let stop = CancellationToken::new();
            let signal = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                signal.cancel();
            });
            let limits = Limits {
                http2: !echo_uid,
                ..Limits::default()
            };
            server::serve_tls(listener, store, router, limits, stop).await;
            Ok(())
        }
        _ => Err("usage: bench_tls certs DIR | bench_tls bare|scan|allow ADDR DIR [ANSWER]".into()),
    }
}
