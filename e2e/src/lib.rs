//! Harness of wif's end-to-end tests: a real control plane (embedded etcd + kube-apiserver built
//! from the Kubernetes Go modules), a namespace per test, `wif` processes started as they would
//! run in a cluster, and webhook configurations pointing the API server at them.
//!
//! Nothing is left behind: the control plane exits when this process's end closes its stdin,
//! child processes are killed when their guard drops (also while a failing test unwinds), and
//! cluster objects are deleted the same way.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test harness: a panic is the report

pub mod cluster;
pub mod controller;
pub mod entra;
pub mod helm;
pub mod node;
pub mod process;
pub mod webhook;

pub use cluster::{ControlPlane, TestNs, control_plane};
pub use process::ChildGuard;
pub use webhook::{WebhookOptions, WebhookProcess};

/// Installs the rustls provider once (reqwest and kube share it).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Path of a workspace-relative file.
pub fn workspace_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// The `wif` binary under test: `$WIF_BIN`, else the debug build in the target directory.
pub fn wif_bin() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("WIF_BIN") {
        return p.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| workspace_path("target"));
    let bin = target.join("debug").join("wif");
    assert!(
        bin.exists(),
        "wif binary not found at {}: run `cargo build -p wif` or set WIF_BIN",
        bin.display()
    );
    bin
}

/// Last `n` lines of a file, for failure reports.
pub fn tail(path: &std::path::Path, n: usize) -> String {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
