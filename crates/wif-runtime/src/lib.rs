//! Runtime plumbing the wif webhook and controller share, written once: the plain-HTTP admin
//! server ([`admin`]: `/healthz`, `/readyz`, `/metrics`) and binding listeners with an error that
//! names the address.
//!
//! Why not kubert (what linkerd's policy controller uses for the same): kubert 0.25, its newest
//! release, is built on kube 1.1 while wif is on kube 5. With its admin, client, runtime, server
//! and lease features beside kube 5 the dependency graph grows from 141 to 172 crates, among them
//! a second kube-client, kube-core, kube-runtime (1.1) and k8s-openapi (0.25 beside 0.29, the
//! largest crate to compile). The admin server here is about a hundred lines on the axum wif
//! already serves with.

pub mod admin;

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Binds a TCP listener; the error names the address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("failed to listen on {addr}: {e}")))
}
