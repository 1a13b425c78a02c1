//! The workload side through the real API server: a TokenRequest token for a ServiceAccount is
//! exchanged at the emulator, which validates it against the API server's discovery and JWKS.

use std::time::Duration;

use wif_e2e::{
    TestNs,
    entra::{Entra, TENANT, claims, service_account_token},
    wif_bin,
};
use wif_exchange::{TokenRequestOptions, WorkloadIdentityCredential};

use crate::webhook::CLIENT;

const SCOPE: &str = "https://management.azure.com/.default";

struct Workload {
    ns: TestNs,
    entra: Entra,
    dir: tempfile::TempDir,
}

impl Workload {
    /// A namespace with ServiceAccount `api` trusted by the emulator, and `sa`'s token on disk.
    async fn new(prefix: &str, token_of: &str) -> Self {
        let ns = TestNs::new(prefix).await;
        ns.service_account("api", &[("azure.workload.identity/client-id", CLIENT)])
            .await;
        ns.service_account("other", &[]).await;
        let entra = Entra::trusting(&ns, CLIENT, "api").await;
        let dir = tempfile::tempdir().unwrap();
        let token = service_account_token(&ns, token_of, Duration::from_secs(3600)).await;
        std::fs::write(dir.path().join("token"), token).unwrap();
        std::fs::write(dir.path().join("ca.pem"), entra.handle.ca_pem()).unwrap();
        Self { ns, entra, dir }
    }

    /// `wif token` with the environment the webhook injects.
    fn wif_token(&self, extra: &[&str]) -> std::process::Output {
        std::process::Command::new(wif_bin())
            .args(["token", "--scope", SCOPE])
            .args(extra)
            .env("AZURE_CLIENT_ID", CLIENT)
            .env("AZURE_TENANT_ID", TENANT)
            .env("AZURE_FEDERATED_TOKEN_FILE", self.dir.path().join("token"))
            .env("AZURE_AUTHORITY_HOST", self.entra.handle.authority_host())
            .env("SSL_CERT_FILE", self.dir.path().join("ca.pem"))
            .output()
            .unwrap()
    }
}

fn assert_access_token(jwt: &str) {
    let c = claims(jwt);
    assert_eq!(c["aud"], "https://management.azure.com");
    assert_eq!(c["tid"], TENANT);
    assert_eq!(c["appid"], CLIENT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn library_exchanges_a_service_account_token_for_an_access_token() {
    let w = Workload::new("xlib", "api").await;
    let credential = WorkloadIdentityCredential::builder()
        .tenant_id(TENANT)
        .client_id(CLIENT)
        .token_file(w.dir.path().join("token"))
        .authority_host(w.entra.handle.authority_host())
        .add_root_certificates_pem(w.entra.handle.ca_pem().as_bytes().to_vec())
        .build()
        .unwrap();
    let token = credential
        .get_token(&[SCOPE], &TokenRequestOptions::default())
        .await
        .unwrap();
    assert_access_token(token.token().expose_secret());
    assert!(token.expires_on() > std::time::SystemTime::now());
    // The emulator really fetched the API server's discovery and JWKS to validate it.
    let counters = w.entra.handle.admin().counters().await.unwrap();
    assert_eq!(counters.token.requests, 1, "{counters:?}");
    drop(w.ns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn wif_token_prints_the_access_token() {
    let w = Workload::new("xcli", "api").await;
    let out = w.wif_token(&["--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_access_token(json["access_token"].as_str().unwrap());
    assert!(json["expires_on"].as_u64().unwrap() > 0);
    let text = w.wif_token(&[]);
    assert!(text.status.success());
    assert_access_token(String::from_utf8(text.stdout).unwrap().trim());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the test control plane and the wif binary (make e2e)"]
async fn token_of_another_service_account_is_refused_with_the_subject_hint() {
    let w = Workload::new("xsub", "other").await;
    let out = w.wif_token(&[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("AADSTS700213"), "{stderr}");
    assert!(stderr.to_lowercase().contains("subject"), "{stderr}");
    assert!(out.stdout.is_empty());
    // Never the assertion itself.
    let token = std::fs::read_to_string(w.dir.path().join("token")).unwrap();
    assert!(!stderr.contains(&token[..40]));
}
