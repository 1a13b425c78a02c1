//! The real Python `azure-identity` (WorkloadIdentityCredential and DefaultAzureCredential),
//! unmodified, against the emulator. Needs `WIF_PYTHON`: a Python with azure-identity installed.

mod common;

use std::{process::Stdio, time::Duration};

use common::*;

const SETUP: &str = "WIF_PYTHON is not set: it must name a Python interpreter with azure-identity installed. \
Set it up with:\n  python3 -m venv .cache/venv && .cache/venv/bin/pip install azure-identity\n  \
export WIF_PYTHON=$PWD/.cache/venv/bin/python\nthen run `cargo test -p wif-emulator --test azure_identity`.";

async fn run_check(python: &str, env: &Env, client_id: &str, scope: &str) {
    let token_file = env.dir.path().join(format!("token-{client_id}"));
    std::fs::write(&token_file, env.issuer.rs256(&env.issuer.claims(SUBJECT))).expect("token file");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/check_azure_identity.py"
    );
    let mut command = tokio::process::Command::new(python);
    command.arg(script);
    // Nothing from the caller's Azure environment leaks in.
    for (key, _) in std::env::vars() {
        if key.starts_with("AZURE_") || key.starts_with("MSI_") || key.starts_with("IDENTITY_") {
            command.env_remove(key);
        }
    }
    command
        .env("AZURE_AUTHORITY_HOST", env.emulator.authority_host())
        .env("AZURE_TENANT_ID", TENANT)
        .env("AZURE_CLIENT_ID", client_id)
        .env("AZURE_FEDERATED_TOKEN_FILE", &token_file)
        .env("SSL_CERT_FILE", env.emulator.ca_pem_path())
        .env("REQUESTS_CA_BUNDLE", env.emulator.ca_pem_path())
        .env("AZURE_CONFIG_DIR", env.dir.path().join("az"))
        .env("WIF_CHECK_SCOPE", scope)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .expect("the check finishes within 3 minutes")
        .unwrap_or_else(|e| panic!("failed to run {python}: {e}\n{SETUP}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "check_azure_identity.py failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("OK: WorkloadIdentityCredential, DefaultAzureCredential and MSAL"),
        "{stdout}"
    );
}

#[tokio::test]
#[ignore = "needs WIF_PYTHON: a Python with azure-identity (make venv)"]
async fn azure_identity_python_gets_tokens_for_an_application_and_an_identity() {
    let python = std::env::var("WIF_PYTHON").unwrap_or_else(|_| panic!("{SETUP}"));
    let env = Env::start().await;
    let admin = env.emulator.admin();

    admin.reset().await.expect("reset");
    run_check(&python, &env, APP_ID, "https://management.azure.com/.default").await;
    let counters = admin.counters().await.expect("counters");
    // One token request per credential (two azure-identity, one MSAL); azure-identity makes no
    // discovery call, MSAL reads the tenant's OpenID configuration once.
    assert_eq!(counters.token.requests, 3, "{counters:?}");
    assert_eq!(counters.discovery.requests, 1, "{counters:?}");
    assert_eq!(counters.token.throttled + counters.token.server_errors, 0);

    run_check(
        &python,
        &env,
        IDENTITY_CLIENT_ID,
        "https://graph.microsoft.com/.default",
    )
    .await;
}
