//! `wif mutate`, run as users run it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{io::Write, process::Command};

const POD: &str = "../../examples/pod.yaml";
const SA: &str = "../../examples/serviceaccount.yaml";

fn wif(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wif"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("AZURE_TENANT_ID")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn prints_the_mutated_pod_as_yaml() {
    let out = wif(
        &[
            "mutate",
            "--pod",
            POD,
            "--service-account",
            SA,
            "--tenant-id",
            "t-1",
        ],
        None,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pod: serde_json::Value = serde_saphyr::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    for c in pod["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .chain(pod["spec"]["initContainers"].as_array().unwrap())
    {
        let env = c["env"].as_array().unwrap();
        assert!(
            env.iter()
                .any(|e| e["name"] == "AZURE_TENANT_ID" && e["value"] == "t-1"),
            "{c}"
        );
        assert!(env.iter().any(|e| e["name"] == "AZURE_CLIENT_ID"), "{c}");
    }
    assert_eq!(pod["spec"]["volumes"][0]["name"], "azure-identity-token");
}

#[test]
fn prints_the_patch_and_reads_stdin() {
    let pod = std::fs::read_to_string(format!("{}/{POD}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let out = wif(
        &["mutate", "--pod", "-", "--service-account", SA, "-o", "patch"],
        Some(&pod),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let patch: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(patch.iter().all(|op| op["op"] == "add"));
    assert!(patch.iter().any(|op| op["path"] == "/spec/volumes"));
}

#[test]
fn a_refusal_exits_1_with_the_message() {
    let pod = std::fs::read_to_string(format!("{}/{POD}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .replace(
            "  labels:",
            "  annotations:\n    azure.workload.identity/service-account-token-expiration: \"60\"\n  labels:",
        );
    let out = wif(&["mutate", "--pod", "-", "--service-account", SA], Some(&pod));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("between 3600 and 86400"), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn warnings_go_to_stderr() {
    let pod = std::fs::read_to_string(format!("{}/{POD}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .replace(
            "  labels:",
            "  annotations:\n    azure.workload.identity/clientId: x\n  labels:",
        );
    let out = wif(
        &["mutate", "--pod", "-", "--service-account", SA, "-o", "json"],
        Some(&pod),
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: unknown annotation"));
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap();
}

#[test]
fn bad_input_names_the_file() {
    let out = wif(
        &["mutate", "--pod", "-", "--service-account", SA],
        Some("{not json"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not valid JSON"));
    let out = wif(&["mutate", "--pod", SA, "--service-account", SA], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds a ServiceAccount, expected a Pod"));
}

#[test]
fn named_identities_container_identities_and_audience() {
    let dir = tempfile::tempdir().unwrap();
    let sa = dir.path().join("sa.yaml");
    let sa_text = std::fs::read_to_string(format!("{}/{SA}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .replace(
            "  annotations:\n",
            "  annotations:\n    azure.workload.identity/client-id.logs: 22222222-2222-2222-2222-222222222222\n    \
             azure.workload.identity/audience: api://sa-audience\n",
        );
    std::fs::write(&sa, sa_text).unwrap();
    let pod = std::fs::read_to_string(format!("{}/{POD}", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .replace(
            "  labels:",
            "  annotations:\n    azure.workload.identity/container-identities: log-shipper=logs\n  labels:",
        );
    let out = wif(
        &[
            "mutate",
            "--pod",
            "-",
            "--service-account",
            sa.to_str().unwrap(),
            "-o",
            "json",
        ],
        Some(&pod),
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pod: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let env = |i: usize, name: &str| {
        pod["spec"]["containers"][i]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        env(0, "AZURE_CLIENT_ID").as_deref(),
        Some("5b1f3c8e-0000-4000-8000-000000000de0")
    );
    assert_eq!(
        env(1, "AZURE_CLIENT_ID").as_deref(),
        Some("22222222-2222-2222-2222-222222222222")
    );
    assert_eq!(
        env(0, "AZURE_CLIENT_ID_LOGS").as_deref(),
        Some("22222222-2222-2222-2222-222222222222")
    );
    assert_eq!(
        pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "api://sa-audience"
    );

    // The install's audience, as the webhook's --audience gives it.
    let plain = std::fs::read_to_string(format!("{}/{POD}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let out = wif(
        &[
            "mutate",
            "--pod",
            "-",
            "--service-account",
            SA,
            "-o",
            "json",
            "--audience",
            "api://install",
        ],
        Some(&plain),
    );
    let pod: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        pod["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
        "api://install"
    );

    // An unknown identity: refused, naming container and identity.
    let bad = plain.replace(
        "  labels:",
        "  annotations:\n    azure.workload.identity/container-identities: api=nobody\n  labels:",
    );
    let out = wif(&["mutate", "--pod", "-", "--service-account", SA], Some(&bad));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("container \"api\"") && stderr.contains("identity \"nobody\""),
        "{stderr}"
    );
}

/// The webhook and the exchange library name a named identity's variable the same way.
#[test]
fn webhook_and_exchange_agree_on_variable_names() {
    for name in ["storage", "read-only", "a1-b2"] {
        assert_eq!(
            wif_api::named_client_id_env(name),
            wif_exchange::env::named_client_id(name)
        );
        assert_eq!(
            wif_api::named_tenant_id_env(name),
            wif_exchange::env::named_tenant_id(name)
        );
    }
}
