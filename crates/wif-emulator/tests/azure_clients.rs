//! The emulator as real Azure clients see it: the unmodified Python packages from PyPI, at the
//! versions pinned in requirements-test.txt (azure-identity, MSAL, azure-mgmt-msi, msgraph-sdk)
//! and requirements-az.txt (azure-cli, in its own virtualenv).
//!
//! Needs `WIF_PYTHON` (a Python with requirements-test.txt installed) and `WIF_AZ` (the `az` of a
//! virtualenv with requirements-az.txt installed); `make venv venv-az` sets both up under
//! `.cache/` and `make unit` exports them.

mod common;

use std::{path::Path, process::Stdio, time::Duration};

use common::*;
use serde_json::Value;

const SETUP: &str = "WIF_PYTHON / WIF_AZ are not set: they must name a Python with requirements-test.txt \
installed and the `az` of a virtualenv with requirements-az.txt installed. Set them up with\n  \
make venv venv-az\n  export WIF_PYTHON=$PWD/.cache/venv/bin/python WIF_AZ=$PWD/.cache/venv-az/bin/az\n\
then run `cargo test -p wif-emulator --test azure_clients`.";

fn env_path(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{SETUP}"))
}

/// A command with nothing from the caller's Azure environment, trusting the emulator's CA.
fn clean_command(program: &str, env: &Env) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    for (key, _) in std::env::vars() {
        if key.starts_with("AZURE_") || key.starts_with("MSI_") || key.starts_with("IDENTITY_") {
            command.env_remove(key);
        }
    }
    command
        .env("SSL_CERT_FILE", env.emulator.ca_pem_path())
        .env("REQUESTS_CA_BUNDLE", env.emulator.ca_pem_path())
        .env("AZURE_CONFIG_DIR", env.dir.path().join("az"))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

async fn run(mut command: tokio::process::Command, what: &str, limit: Duration) -> Output {
    let output = tokio::time::timeout(limit, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
        .unwrap_or_else(|e| panic!("failed to run {what}: {e}\n{SETUP}"));
    Output {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn token_file(env: &Env, name: &str) -> std::path::PathBuf {
    let path = env.dir.path().join(name);
    std::fs::write(&path, env.issuer.rs256(&env.issuer.claims(SUBJECT))).expect("token file");
    path
}

async fn application_object_id(env: &Env, app_id: &str) -> String {
    let state = env.emulator.admin().state().await.expect("state");
    state["tenants"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|t| t["applications"].as_array().into_iter().flatten())
        .find(|a| a["appId"] == app_id)
        .and_then(|a| a["id"].as_str())
        .expect("application in state")
        .to_string()
}

// === azure-identity and MSAL =====================================================================

async fn run_identity_check(python: &str, env: &Env, client_id: &str, scope: &str) {
    let token_file = token_file(env, &format!("token-{client_id}"));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/check_azure_identity.py"
    );
    let mut command = clean_command(python, env);
    command
        .arg(script)
        .env("AZURE_AUTHORITY_HOST", env.emulator.authority_host())
        .env("AZURE_TENANT_ID", TENANT)
        .env("AZURE_CLIENT_ID", client_id)
        .env("AZURE_FEDERATED_TOKEN_FILE", &token_file)
        .env("WIF_CHECK_SCOPE", scope);
    let out = run(command, "check_azure_identity.py", Duration::from_secs(180)).await;
    println!("{}", out.stdout);
    assert!(
        out.success,
        "check_azure_identity.py failed:\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stdout
            .contains("OK: WorkloadIdentityCredential, DefaultAzureCredential and MSAL"),
        "{}",
        out.stdout
    );
}

#[tokio::test]
#[ignore = "needs WIF_PYTHON: a Python with azure-identity (make venv)"]
async fn azure_identity_python_gets_tokens_for_an_application_and_an_identity() {
    let python = env_path("WIF_PYTHON");
    let env = Env::start().await;
    let admin = env.emulator.admin();

    admin.reset().await.expect("reset");
    run_identity_check(&python, &env, APP_ID, "https://management.azure.com/.default").await;
    let counters = admin.counters().await.expect("counters");
    // One token request per credential (two azure-identity, one MSAL); azure-identity makes no
    // discovery call; MSAL asks the emulator's instance discovery (a custom authority with
    // `instance_discovery` set to its URL), then reads the tenant's OpenID configuration.
    assert_eq!(counters.token.requests, 3, "{counters:?}");
    assert_eq!(counters.discovery.requests, 2, "{counters:?}");
    assert_eq!(counters.token.throttled + counters.token.server_errors, 0);

    run_identity_check(
        &python,
        &env,
        IDENTITY_CLIENT_ID,
        "https://graph.microsoft.com/.default",
    )
    .await;
}

// === azure-mgmt-msi and msgraph-sdk ==============================================================

async fn run_sdk_check(mode: &str) {
    let python = env_path("WIF_PYTHON");
    // No artificial hold on ARM writes except for the concurrency check, which needs overlap.
    let env = Env::start_with(|config| config.settings.arm_write_hold_ms = 300).await;
    let token_file = token_file(&env, "token-sdk");
    let foreign = env
        .emulator
        .admin()
        .mint_token(TENANT, CONTROLLER_APP_ID, "https://vault.azure.net")
        .await
        .expect("mint");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/check_sdks.py");
    let mut command = clean_command(&python, &env);
    command
        .arg(script)
        .arg(mode)
        .env("WIF_BASE", env.emulator.base_url())
        .env("AZURE_TENANT_ID", TENANT)
        .env("AZURE_CLIENT_ID", APP_ID)
        .env("AZURE_FEDERATED_TOKEN_FILE", &token_file)
        .env("WIF_SUBSCRIPTION", SUBSCRIPTION)
        .env("WIF_RESOURCE_GROUP", "rg")
        .env("WIF_IDENTITY", IDENTITY)
        .env("WIF_APP_ID", APP_ID)
        .env("WIF_APP_OBJECT_ID", application_object_id(&env, APP_ID).await)
        .env("WIF_FOREIGN_TOKEN", foreign);
    let out = run(command, "check_sdks.py", Duration::from_secs(300)).await;
    println!("{}", out.stdout);
    assert!(
        out.success,
        "check_sdks.py {mode} failed:\nstdout:\n{}\nstderr:\n{}",
        out.stdout, out.stderr
    );
    assert!(out.stdout.contains(&format!("OK: {mode}")), "{}", out.stdout);
    assert!(!out.stdout.contains("FAIL"), "{}", out.stdout);
}

#[tokio::test]
#[ignore = "needs WIF_PYTHON: a Python with azure-mgmt-msi (make venv)"]
async fn azure_mgmt_msi_crud_paging_and_errors_parse_as_arm_errors() {
    run_sdk_check("arm").await;
}

#[tokio::test]
#[ignore = "needs WIF_PYTHON: a Python with msgraph-sdk (make venv)"]
async fn msgraph_sdk_crud_paging_and_errors_parse_as_odata_errors() {
    run_sdk_check("graph").await;
}

// === azure-cli ===================================================================================

struct Az<'a> {
    bin: String,
    env: &'a Env,
}

impl Az<'_> {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = clean_command(&self.bin, self.env);
        command
            .args(args)
            // A custom cloud's authority is not one Microsoft knows: MSAL would ask
            // login.microsoftonline.com to validate it. The README documents these.
            .env("AZURE_CORE_INSTANCE_DISCOVERY", "false")
            .env("AZURE_CORE_COLLECT_TELEMETRY", "false")
            .env("AZURE_CORE_SURVEY_MESSAGE", "false")
            .env("AZURE_CORE_ONLY_SHOW_ERRORS", "true")
            .env("AZURE_CORE_NO_COLOR", "true")
            .env("AZURE_CORE_OUTPUT", "json")
            .env("AZURE_EXTENSION_USE_DYNAMIC_INSTALL", "no");
        command
    }

    /// Runs `az args…`, which must succeed; returns its JSON output (`Null` when empty).
    async fn ok(&self, args: &[&str]) -> Value {
        let out = run(
            self.command(args),
            &format!("az {}", args.join(" ")),
            Duration::from_secs(120),
        )
        .await;
        assert!(
            out.success,
            "az {} failed:\nstdout:\n{}\nstderr:\n{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        if out.stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&out.stdout)
                .unwrap_or_else(|e| panic!("az {}: not JSON ({e}): {}", args.join(" "), out.stdout))
        }
    }

    /// Runs `az args…`, which must fail; returns its stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let out = run(
            self.command(args),
            &format!("az {}", args.join(" ")),
            Duration::from_secs(120),
        )
        .await;
        assert!(
            !out.success,
            "az {} succeeded but should fail:\n{}",
            args.join(" "),
            out.stdout
        );
        out.stderr
    }
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
#[ignore = "needs WIF_AZ: azure-cli in its own virtualenv (make venv-az)"]
async fn azure_cli_registers_the_emulator_cloud_logs_in_with_a_federated_token_and_manages_credentials() {
    let az = Az {
        bin: env_path("WIF_AZ"),
        env: &Env::start().await,
    };
    let env = az.env;
    let base = env.emulator.base_url().to_string();
    let assertion = env.issuer.rs256(&env.issuer.claims(SUBJECT));

    // The custom cloud: az reads {arm}/metadata/endpoints anonymously.
    az.ok(&[
        "cloud",
        "register",
        "--name",
        "WifEmulator",
        "--endpoint-resource-manager",
        &format!("{base}/arm"),
    ])
    .await;
    az.ok(&["cloud", "set", "--name", "WifEmulator"]).await;
    let cloud = az.ok(&["cloud", "show", "--name", "WifEmulator"]).await;
    assert_eq!(
        cloud["endpoints"]["activeDirectory"],
        format!("{base}/"),
        "{cloud:#}"
    );
    assert_eq!(
        cloud["endpoints"]["microsoftGraphResourceId"],
        format!("{base}/graph/"),
        "{cloud:#}"
    );

    // Login with the federated token of the workload application: az lists the subscriptions.
    let subscriptions = az
        .ok(&[
            "login",
            "--service-principal",
            "--username",
            APP_ID,
            "--tenant",
            TENANT,
            "--federated-token",
            &assertion,
        ])
        .await;
    assert_eq!(subscriptions[0]["id"], SUBSCRIPTION, "{subscriptions:#}");
    assert_eq!(subscriptions[0]["tenantId"], TENANT, "{subscriptions:#}");
    let account = az.ok(&["account", "show"]).await;
    assert_eq!(account["id"], SUBSCRIPTION, "{account:#}");
    assert_eq!(account["user"]["name"], APP_ID, "{account:#}");
    assert_eq!(account["environmentName"], "WifEmulator", "{account:#}");

    // ARM: az identity federated-credential create/list/show/delete.
    let fic = ["--identity-name", IDENTITY, "--resource-group", "rg"];
    let created = az
        .ok(&[
            &["identity", "federated-credential", "create", "--name", "az-fic"][..],
            &fic,
            &[
                "--issuer",
                "https://issuer.example.com/az",
                "--subject",
                "system:serviceaccount:az:cli",
                "--audiences",
                AUDIENCE,
            ],
        ]
        .concat())
        .await;
    assert_eq!(created["name"], "az-fic", "{created:#}");
    assert_eq!(created["issuer"], "https://issuer.example.com/az", "{created:#}");
    let listed = az
        .ok(&[&["identity", "federated-credential", "list"][..], &fic].concat())
        .await;
    assert_eq!(names(&listed), ["kind-demo-api", "az-fic"], "{listed:#}");
    let shown = az
        .ok(&[
            &["identity", "federated-credential", "show", "--name", "az-fic"][..],
            &fic,
        ]
        .concat())
        .await;
    assert_eq!(shown["subject"], "system:serviceaccount:az:cli", "{shown:#}");
    az.ok(&[
        &[
            "identity",
            "federated-credential",
            "delete",
            "--name",
            "az-fic",
            "--yes",
        ][..],
        &fic,
    ]
    .concat())
        .await;
    let listed = az
        .ok(&[&["identity", "federated-credential", "list"][..], &fic].concat())
        .await;
    assert_eq!(names(&listed), ["kind-demo-api"], "{listed:#}");
    let missing_group = az
        .fails(&[
            "identity",
            "federated-credential",
            "list",
            "--identity-name",
            IDENTITY,
            "--resource-group",
            "no-such-group",
        ])
        .await;
    assert!(missing_group.contains("ResourceGroupNotFound"), "{missing_group}");

    // Graph: az ad app federated-credential create/list/show/delete, with a token for the
    // cloud's Graph URL (the emulator's own /graph/).
    let parameters = env.dir.path().join("fic.json");
    std::fs::write(
        &parameters,
        serde_json::json!({
            "name": "az-app-fic",
            "issuer": "https://issuer.example.com/az",
            "subject": "system:serviceaccount:az:app",
            "audiences": [AUDIENCE],
            "description": "made by az",
        })
        .to_string(),
    )
    .expect("parameters");
    let parameters = format!("@{}", parameters.display());
    let created = az
        .ok(&[
            "ad",
            "app",
            "federated-credential",
            "create",
            "--id",
            APP_ID,
            "--parameters",
            &parameters,
        ])
        .await;
    assert_eq!(created["name"], "az-app-fic", "{created:#}");
    let id = created["id"].as_str().expect("id").to_string();
    let listed = az
        .ok(&["ad", "app", "federated-credential", "list", "--id", APP_ID])
        .await;
    assert_eq!(names(&listed), ["kind-demo-api", "az-app-fic"], "{listed:#}");
    let shown = az
        .ok(&[
            "ad",
            "app",
            "federated-credential",
            "show",
            "--id",
            APP_ID,
            "--federated-credential-id",
            &id,
        ])
        .await;
    assert_eq!(shown["description"], "made by az", "{shown:#}");
    az.ok(&[
        "ad",
        "app",
        "federated-credential",
        "delete",
        "--id",
        APP_ID,
        "--federated-credential-id",
        &id,
    ])
    .await;
    let listed = az
        .ok(&["ad", "app", "federated-credential", "list", "--id", APP_ID])
        .await;
    assert_eq!(names(&listed), ["kind-demo-api"], "{listed:#}");
    let missing = az
        .fails(&[
            "ad",
            "app",
            "federated-credential",
            "show",
            "--id",
            APP_ID,
            "--federated-credential-id",
            "nope",
        ])
        .await;
    assert!(missing.contains("does not exist"), "{missing}");

    // Every token az used came from the emulator; nothing was asked elsewhere (the test would
    // hang or fail otherwise: only loopback is reachable).
    let counters = env.emulator.admin().counters().await.expect("counters");
    assert!(counters.token.requests >= 2, "{counters:?}");
    assert!(Path::new(&env.dir.path().join("az")).is_dir());
}
