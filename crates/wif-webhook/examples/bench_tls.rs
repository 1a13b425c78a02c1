//! Helpers of `make bench` (scripts/bench-webhook.sh):
//!
//! - `bench_tls certs DIR`: writes a CA and a serving certificate for 127.0.0.1 into DIR;
//! - `bench_tls bare ADDR DIR`: the same HTTPS transport as the webhook (axum + tokio-rustls +
//!   hyper, `server::serve_tls`) answering every POST with one fixed AdmissionReview, without
//!   decoding anything: the ceiling any admission webhook on this transport can reach.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use axum::{Router, http::header, routing::post};
use tokio_util::sync::CancellationToken;
use wif_webhook::{
    selfcert::{generate_ca, issue_cert},
    server::{self, Limits},
    tls::CertStore,
};

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
        Some("bare") => {
            let addr: SocketAddr = args.get(2).ok_or("usage: bench_tls bare ADDR DIR")?.parse()?;
            let dir = PathBuf::from(args.get(3).ok_or("usage: bench_tls bare ADDR DIR")?);
            let store = CertStore::new();
            store.set_pem(
                &std::fs::read(dir.join("tls.crt"))?,
                &std::fs::read(dir.join("tls.key"))?,
                "bench",
            )?;
            let router = Router::new().route(
                wif_api::MUTATE_PATH,
                post(|| async { ([(header::CONTENT_TYPE, "application/json")], FIXED) }),
            );
            let listener = tokio::net::TcpListener::bind(addr).await?;
            let stop = CancellationToken::new();
            let signal = stop.clone();
            tokio::spawn(async move {
                let _ = tokio::signal::ctrl_c().await;
                signal.cancel();
            });
            server::serve_tls(listener, store, router, Limits::default(), stop).await;
            Ok(())
        }
        _ => Err("usage: bench_tls certs DIR | bench_tls bare ADDR DIR".into()),
    }
}
