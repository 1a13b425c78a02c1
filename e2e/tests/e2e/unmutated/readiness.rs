//! The webhook is not ready before its ServiceAccount cache has synced.

use super::*;

/// Readiness: `/readyz` fails while the ServiceAccount cache has not synced (here: an API
/// server that never answers), though the process is alive and holds a certificate. A probe
/// that passed earlier would let `helm --wait` and pod creation race the webhook.
#[tokio::test]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn webhook_is_not_ready_before_its_service_account_cache_syncs() {
    let cp = wif_e2e::control_plane();
    let dir = tempfile::Builder::new()
        .prefix("wif-e2e-ready-")
        .tempdir()
        .unwrap();
    let (_, leaf) = wif_e2e::webhook::localhost_pki("wif-e2e", Duration::from_secs(3600));
    std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
    // The test cluster's kubeconfig, pointed at a port where nothing listens (port 1 is
    // privileged: no test process can hold it).
    let kubeconfig = std::fs::read_to_string(&cp.kubeconfig)
        .unwrap()
        .replace(&cp.server, "https://127.0.0.1:1");
    std::fs::write(dir.path().join("kubeconfig"), kubeconfig).unwrap();
    let log = dir.path().join("webhook.log");
    let child = std::process::Command::new(wif_bin())
        .args(["webhook", "--tenant-id", "72f988bf-86f1-41af-91ab-2d7cd011db47"])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .arg("--tls-cert-file")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key-file")
        .arg(dir.path().join("tls.key"))
        .args(["--log-format", "json"])
        .env("KUBECONFIG", dir.path().join("kubeconfig"))
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start wif webhook");
    let _guard = wif_e2e::ChildGuard {
        child,
        name: "wif webhook (unreachable API server)".into(),
    };
    // The process reports the address it bound.
    let admin = eventually(
        "the webhook's admin address in its log",
        Duration::from_secs(20),
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let line = text.lines().find(|l| l.contains("webhook listening"))?;
            let at = line.find("\"admin\":\"")? + "\"admin\":\"".len();
            Some(line[at..].split('"').next()?.to_owned())
        },
    )
    .await;
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let health = http.get(format!("http://{admin}/healthz")).send().await.unwrap();
    assert!(health.status().is_success(), "alive");
    for _ in 0..10 {
        let ready = http.get(format!("http://{admin}/readyz")).send().await.unwrap();
        assert_eq!(ready.status().as_u16(), 503, "ready before its cache synced");
        let body = ready.text().await.unwrap();
        assert!(body.contains("ServiceAccount cache not synced"), "{body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
