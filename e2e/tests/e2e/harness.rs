//! The harness itself: a control plane that cannot start fails fast and says why.

use std::time::{Duration, Instant};

#[test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
fn a_taken_port_fails_within_60_seconds_with_the_logs() {
    let bin =
        std::env::var("WIF_CONTROLPLANE_BIN").expect("run through `make e2e` (sets WIF_CONTROLPLANE_BIN)");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let msg = start_fails_fast(bin.as_ref(), &["--port", &port]);
    assert!(msg.contains("apiserver.log (tail)"), "{msg}");
    assert!(
        msg.contains("address already in use") || msg.contains(&port),
        "the cause is in the logs: {msg}"
    );
}

/// Starts a control plane that cannot run: it must fail within 60 seconds, saying it exited.
/// Returns the error with its causes.
pub fn start_fails_fast(bin: &std::path::Path, args: &[&str]) -> String {
    let started = Instant::now();
    let err = wif_e2e::cluster::start(bin, args).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(msg.contains("the control plane exited"), "{msg}");
    msg
}

#[test]
fn a_missing_binary_is_an_error_not_a_hang() {
    let err = wif_e2e::cluster::start("/nonexistent/controlplane".as_ref(), &[]).unwrap_err();
    assert!(format!("{err:#}").contains("failed to start /nonexistent/controlplane"));
}
