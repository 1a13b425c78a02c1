//! Pods on a real node (kubelet + containerd + runc, `controlplane up --node`): the kubelet writes
//! the token the webhook asked for, and SDKs inside non-root containers exchange it with
//! `wif emulator` using nothing but what the webhook injected.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, PostParams};
use serde_json::{Value, json};
use wif_e2e::{
    WebhookOptions, WebhookProcess,
    entra::{TENANT, claims},
    node::{TEST_CLIENT_IMAGE, node, phase},
};

const CLIENT: &str = "0b5e1c8e-7d4a-4c6b-9e7f-0a1b2c3d4e5f";
const SCOPE: &str = "https://management.azure.com/.default";

/// Prints, as one JSON line: the uid, the AZURE_* environment, the token file's mode and owner
/// as this container sees them, and the access token DefaultAzureCredential got (or whether a
/// token volume is mounted at all when there is no token file).
const PYTHON: &str = r#"
import json, os, stat, sys
out = {"uid": os.getuid(), "env": {k: v for k, v in os.environ.items() if k.startswith("AZURE_")}}
path = os.environ.get("AZURE_FEDERATED_TOKEN_FILE")
if path:
    st = os.stat(path)
    out["mode"] = stat.S_IMODE(st.st_mode)
    out["owner"] = st.st_uid
    from azure.identity import DefaultAzureCredential
    out["token"] = DefaultAzureCredential().get_token(sys.argv[1]).token
else:
    out["mounted"] = os.path.exists("/var/run/secrets/azure/tokens")
print("RESULT " + json.dumps(out), flush=True)
if len(sys.argv) > 2:
    import time
    time.sleep(3600)
"#;

/// The venv whose Python (and azure-identity) the pods run, bind-mounted read-only from this
/// machine at the same path (with /usr, /lib, /lib64 it links against), and the installation
/// its `python` links to when that is outside /usr (pyenv's, say).
fn venv() -> (String, Option<String>) {
    let python = std::env::var("WIF_PYTHON").unwrap_or_else(|_| {
        wif_e2e::workspace_path(".cache/venv/bin/python")
            .display()
            .to_string()
    });
    let venv = std::path::Path::new(&python)
        .parent()
        .and_then(|bin| bin.parent())
        .expect("WIF_PYTHON is <venv>/bin/python");
    assert!(
        venv.join("bin/python").exists(),
        "no Python venv at {} (make venv)",
        venv.display()
    );
    let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).expect("pyvenv.cfg");
    let home = cfg
        .lines()
        .find_map(|l| l.strip_prefix("home = "))
        .expect("pyvenv.cfg names the base Python's home");
    let prefix = std::path::Path::new(home.trim()).parent().unwrap();
    let prefix = (!prefix.starts_with("/usr")).then(|| prefix.display().to_string());
    (std::fs::canonicalize(venv).unwrap().display().to_string(), prefix)
}

fn result(logs: &str) -> Value {
    let line = logs
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line in:\n{logs}"));
    serde_json::from_str(line).unwrap()
}

fn assert_entra_token(token: &str, what: &str) {
    let c = claims(token);
    assert_eq!(c["tid"], TENANT, "{what}: {c}");
    assert_eq!(c["appid"], CLIENT, "{what}: {c}");
}

#[tokio::test]
#[ignore = "needs root, the test node (make node-deps, make images) and the wif binary (make e2e)"]
async fn sdks_in_non_root_pods_get_tokens_with_only_what_the_webhook_injected() {
    let node = node();
    let ns = node.namespace("node-sdk").await;
    let (entra, _entra_dir) = node
        .emulator(json!({"tenants": [{"id": TENANT, "applications": [{
            "displayName": "e2e-node", "appId": CLIENT,
            "federatedIdentityCredentials": [{
                "name": "pod", "issuer": node.cp.issuer,
                "subject": format!("system:serviceaccount:{}:app", ns.name),
                "audiences": ["api://AzureADTokenExchange"]}]}]}]}))
        .await;
    let authority = entra.authority_host();
    assert!(
        authority.contains(&node.gateway.to_string()),
        "the emulator serves pods on the gateway: {authority}"
    );
    let _hook = WebhookProcess::start(
        &ns,
        WebhookOptions {
            tenant_id: TENANT.into(),
            cloud: authority.clone(),
            ..WebhookOptions::default()
        },
    )
    .await;
    ns.service_account("app", &[(wif_api::CLIENT_ID_ANNOTATION, CLIENT)])
        .await;
    // The emulator's CA, as a cluster would distribute a private CA.
    let ca: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "entra-ca"}, "data": {"ca.crt": entra.ca_pem()}}))
    .unwrap();
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &ca)
        .await
        .unwrap();

    let (venv, python_prefix) = venv();
    let python = format!("{venv}/bin/python");
    let ca_env = json!([
        {"name": "SSL_CERT_FILE", "value": "/etc/entra-ca/ca.crt"},
        {"name": "REQUESTS_CA_BUNDLE", "value": "/etc/entra-ca/ca.crt"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "HOME", "value": "/tmp"}
    ]);
    let mut mounts = json!([
        {"name": "usr", "mountPath": "/usr", "readOnly": true},
        {"name": "lib", "mountPath": "/lib", "readOnly": true},
        {"name": "lib64", "mountPath": "/lib64", "readOnly": true},
        {"name": "venv", "mountPath": venv, "readOnly": true},
        {"name": "entra-ca", "mountPath": "/etc/entra-ca", "readOnly": true},
        {"name": "tmp", "mountPath": "/tmp"}
    ]);
    let mut volumes = json!([
        {"name": "usr", "hostPath": {"path": "/usr", "type": "Directory"}},
        {"name": "lib", "hostPath": {"path": "/lib", "type": "Directory"}},
        {"name": "lib64", "hostPath": {"path": "/lib64", "type": "Directory"}},
        {"name": "venv", "hostPath": {"path": venv, "type": "Directory"}},
        {"name": "entra-ca", "configMap": {"name": "entra-ca"}},
        {"name": "tmp", "emptyDir": {}}
    ]);
    if let Some(prefix) = &python_prefix {
        mounts
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "python", "mountPath": prefix, "readOnly": true}));
        volumes
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "python", "hostPath": {"path": prefix, "type": "Directory"}}));
    }
    let hardened = json!({
        "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]}
    });
    let container = |name: &str, command: Value| {
        json!({"name": name, "image": TEST_CLIENT_IMAGE, "imagePullPolicy": "Never",
               "command": command, "env": ca_env, "volumeMounts": mounts,
               "securityContext": hardened})
    };
    let mut sidecar = container("sidecar", json!([python, "-c", PYTHON, SCOPE, "stay"]));
    sidecar["restartPolicy"] = json!("Always");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "sdk", "labels": {"azure.workload.identity/use": "true"},
                     "annotations": {"azure.workload.identity/skip-containers": "skipped"}},
        "spec": {
            "serviceAccountName": "app",
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": true,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [sidecar],
            "containers": [
                container("wif-token", json!(["/wif", "token", "--scope", SCOPE, "--output", "json"])),
                container("python", json!([python, "-c", PYTHON, SCOPE])),
                container("skipped", json!([python, "-c", PYTHON, SCOPE]))
            ],
            "volumes": volumes
        }
    }))
    .unwrap();
    let created = Instant::now();
    ns.api::<Pod>()
        .create(&PostParams::default(), &pod)
        .await
        .expect("create the pod");
    node.wait_pod(&ns, "sdk", "Running", Duration::from_secs(60), |p| {
        phase(p) == "Running" || phase(p) == "Succeeded"
    })
    .await;
    let running = created.elapsed();
    let done = node
        .wait_pod(&ns, "sdk", "Succeeded", Duration::from_secs(90), |p| {
            phase(p) == "Succeeded"
        })
        .await;
    eprintln!(
        "e2e: pod sdk Running after {running:?}, Succeeded after {:?}",
        created.elapsed()
    );
    let report = node.report(&ns, "sdk").await;

    // (a) wif token, with the environment the webhook injected.
    let out = node.logs(&ns, "sdk", "wif-token").await;
    let json_line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("wif token printed no JSON:\n{report}"));
    let token: Value = serde_json::from_str(json_line).unwrap();
    assert_entra_token(token["access_token"].as_str().unwrap(), "wif token");

    // (b) Python azure-identity's DefaultAzureCredential, and the file as the container sees it.
    for name in ["python", "sidecar"] {
        let r = result(&node.logs(&ns, "sdk", name).await);
        assert_eq!(r["uid"], 1000, "{name}: {r}");
        assert_eq!(
            r["env"]["AZURE_FEDERATED_TOKEN_FILE"],
            wif_api::TOKEN_FILE_PATH,
            "{name}: {r}"
        );
        assert_eq!(r["env"]["AZURE_AUTHORITY_HOST"], authority, "{name}: {r}");
        // The kubelet writes the token for the pod's single runAsUser: readable by it alone.
        assert_eq!(r["owner"], 1000, "{name}: token file owner: {r}");
        assert_eq!(r["mode"], 0o600, "{name}: token file mode: {r}");
        assert_entra_token(r["token"].as_str().unwrap(), name);
    }

    // A container listed in skip-containers gets neither the variables nor the file.
    let r = result(&node.logs(&ns, "sdk", "skipped").await);
    assert_eq!(r["env"], json!({}), "skipped: {r}");
    assert_eq!(r["mounted"], false, "skipped: {r}");

    // The spec the kubelet ran is the webhook's: the sidecar is still a native sidecar.
    let spec = done.spec.unwrap();
    let init = &spec.init_containers.unwrap()[0];
    assert_eq!(init.restart_policy.as_deref(), Some("Always"));
    ns.api::<Pod>()
        .delete("sdk", &DeleteParams::default())
        .await
        .unwrap();
}

#[test]
#[ignore = "needs root, the test node (make node-deps, make images) and the wif binary (make e2e)"]
fn the_node_is_ready_and_named_in_the_ready_line() {
    let node = node();
    assert_eq!(node.cp.node.as_deref(), Some(node.name.as_str()));
    let out = node
        .cp
        .kubectl()
        .args([
            "get",
            "node",
            &node.name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "True");
}

#[test]
#[ignore = "needs root, the test node (make node-deps, make images) and the wif binary (make e2e)"]
fn a_second_node_on_this_machine_fails_fast_and_leaves_the_first_alone() {
    let node = node();
    let bin = wif_e2e::cluster::binary().unwrap();
    let msg = crate::harness::start_fails_fast(&bin, &["--node"]);
    assert!(
        msg.contains("another `controlplane up --node` runs on this machine"),
        "{msg}"
    );
    // The first node still runs pods' infrastructure: Ready, its bridge still up.
    the_node_is_ready_and_named_in_the_ready_line();
    let gw = node.gateway.to_string();
    let addrs = Command::new("ip").args(["-4", "-br", "addr"]).output().unwrap();
    assert!(String::from_utf8_lossy(&addrs.stdout).contains(&gw));
}

#[test]
#[ignore = "needs root, the test node (make node-deps, make images) and the wif binary (make e2e)"]
fn a_missing_package_fails_fast_naming_it() {
    let bin = wif_e2e::cluster::binary().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = Command::new(&bin)
        .args(["up", "--node", "--dir"])
        .arg(dir.path())
        .env("PATH", empty.path())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        stderr.contains("containerd not found") && stderr.contains("apt-get install containerd"),
        "{stderr}"
    );
}

mod chart;
