//! `wif token` (the `cli` module) end to end: `from_env()` and `SSL_CERT_FILE` are exercised in a
//! child process (this test binary re-run with a filter), since tests may not set variables in
//! their own process.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::*;
use wif_exchange::cli::{OutputFormat, TokenArgs};

const CHILD: &str = "WIF_EXCHANGE_CLI_CHILD";
/// Set in the child: `--identity <value>`.
const IDENTITY: &str = "WIF_EXCHANGE_CLI_IDENTITY";

/// Entry point of the child process: runs `cli::run` and exits with its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "runs only as the child process of the other tests"]
async fn child_entry() {
    let Ok(output) = std::env::var(CHILD) else { return };
    let output = if output == "json" {
        OutputFormat::Json
    } else {
        OutputFormat::Text
    };
    let mut args = TokenArgs::new(SCOPE).with_output(output);
    if let Ok(name) = std::env::var(IDENTITY) {
        args = args.with_identity(name);
    }
    let code = wif_exchange::cli::run(args).await;
    std::process::exit(code);
}

struct ChildRun {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run_child(server: &TestServer, output: &str, env: &[(&str, &str)]) -> ChildRun {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("azure-identity-token");
    std::fs::write(&token_file, ASSERTION).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child_entry",
        "--exact",
        "--ignored",
        "--quiet",
        "--test-threads=1",
    ])
    .env_remove("SSL_CERT_FILE")
    .env_remove("SSL_CERT_DIR")
    .env_remove("AZURE_ADDITIONALLY_ALLOWED_TENANTS")
    .env(CHILD, output)
    .env("AZURE_TENANT_ID", TENANT)
    .env("AZURE_CLIENT_ID", CLIENT)
    .env("AZURE_FEDERATED_TOKEN_FILE", &token_file)
    .env("AZURE_AUTHORITY_HOST", &server.authority);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    ChildRun {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ca_file(server: &TestServer) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &server.pki.ca_pem).unwrap();
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_from_env_trusting_ssl_cert_file() {
    let server = TestServer::start(|_, _| Reply::token("cli-access-token", 3600, Some(1200))).await;
    let ca = ca_file(&server);
    let run = run_child(&server, "json", &[("SSL_CERT_FILE", ca.path().to_str().unwrap())]);
    assert_eq!(
        run.code,
        Some(0),
        "stdout: {}\nstderr: {}",
        run.stdout,
        run.stderr
    );
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON in {}", run.stdout));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["access_token"], "cli-access-token");
    assert_eq!(v["token_type"], "Bearer");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (exp, refresh) = (
        v["expires_on"].as_u64().unwrap(),
        v["refresh_on"].as_u64().unwrap(),
    );
    assert!(
        exp.abs_diff(now + 3600) < 10 && refresh.abs_diff(now + 1200) < 10,
        "{v}"
    );

    // from_env() sent what the variables say.
    let r = &server.requests()[0];
    assert_eq!(r.tenant, TENANT);
    assert_eq!(r.form["client_id"], CLIENT);
    assert_eq!(r.form["client_assertion"], ASSERTION);
    assert_eq!(r.form["scope"], SCOPE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_output_is_the_bare_token() {
    let server = TestServer::start(|_, _| Reply::token("bare-token", 3600, None)).await;
    let ca = ca_file(&server);
    let run = run_child(&server, "text", &[("SSL_CERT_FILE", ca.path().to_str().unwrap())]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(run.stdout.lines().any(|l| l == "bare-token"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_prints_one_line_with_code_message_and_hint() {
    let server = TestServer::start(|_, _| {
        Reply::entra(
            400,
            "invalid_request",
            700213,
            "No matching federated identity record found for presented assertion subject 'system:serviceaccount:default:api'.",
        )
    })
    .await;
    let ca = ca_file(&server);
    let run = run_child(&server, "text", &[("SSL_CERT_FILE", ca.path().to_str().unwrap())]);
    assert_eq!(run.code, Some(1));
    assert!(!run.stdout.contains("Bearer"));
    let lines: Vec<_> = run.stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    let line = lines[0];
    assert!(line.starts_with("error: AADSTS700213: No matching federated identity record found for presented assertion subject 'system:serviceaccount:default:api'."), "{line}");
    assert!(line.contains("hint: subject mismatch"), "{line}");
    assert!(
        !line.contains("Trace ID"),
        "only the first line of Entra's message: {line}"
    );
    assert!(!run.stderr.contains(ASSERTION));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ssl_cert_file_the_private_ca_is_not_trusted() {
    let server = TestServer::issuing().await;
    let run = run_child(&server, "text", &[]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("TLS handshake failed") && run.stderr.contains("SSL_CERT_FILE"),
        "{}",
        run.stderr
    );
    assert_eq!(server.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_variable_is_named() {
    let server = TestServer::issuing().await;
    let run = run_child(&server, "text", &[("AZURE_CLIENT_ID", "")]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr
            .contains("missing client id: set the AZURE_CLIENT_ID environment variable"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_a_builder_in_process() {
    let server = TestServer::issuing().await;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = wif_exchange::cli::run_with(TokenArgs::new(SCOPE), server.builder(), &mut out, &mut err).await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    assert_eq!(String::from_utf8(out).unwrap(), "token-1\n");
}

const STORAGE_CLIENT: &str = "22222222-3333-4444-5555-666666666666";
const STORAGE_TENANT: &str = "33333333-4444-5555-6666-777777777777";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_identity_uses_its_own_client_id_and_tenant() {
    let server = TestServer::issuing().await;
    let ca = ca_file(&server);
    let ca = ca.path().to_str().unwrap();
    let run = run_child(
        &server,
        "text",
        &[
            ("SSL_CERT_FILE", ca),
            (IDENTITY, "read-only"),
            ("AZURE_CLIENT_ID_READ_ONLY", STORAGE_CLIENT),
            ("AZURE_TENANT_ID_READ_ONLY", STORAGE_TENANT),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = &server.requests()[0];
    assert_eq!(r.form["client_id"], STORAGE_CLIENT, "not AZURE_CLIENT_ID");
    assert_eq!(r.tenant, STORAGE_TENANT);
    assert_eq!(r.form["client_assertion"], ASSERTION, "the same token file");

    // Without a tenant of its own, the shared AZURE_TENANT_ID.
    let run = run_child(
        &server,
        "text",
        &[
            ("SSL_CERT_FILE", ca),
            (IDENTITY, "storage"),
            ("AZURE_CLIENT_ID_STORAGE", STORAGE_CLIENT),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let r = &server.requests()[1];
    assert_eq!(r.form["client_id"], STORAGE_CLIENT);
    assert_eq!(r.tenant, TENANT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_named_identity_names_its_variable_and_annotation() {
    let server = TestServer::issuing().await;
    let run = run_child(&server, "text", &[(IDENTITY, "storage")]);
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains("AZURE_CLIENT_ID_STORAGE")
            && run.stderr.contains("azure.workload.identity/client-id.storage"),
        "{}",
        run.stderr
    );
    assert_eq!(server.count(), 0, "AZURE_CLIENT_ID is not used instead");
    let run = run_child(&server, "text", &[(IDENTITY, "Storage")]);
    assert_eq!(run.code, Some(1));
    assert!(run.stderr.contains("identity name"), "{}", run.stderr);
}
