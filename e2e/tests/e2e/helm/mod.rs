//! The Helm chart: rendered with every value set that matters, refused with bad values, and
//! installed, upgraded and uninstalled through the real API server. No kubelet runs here, so the
//! chart's pods never start; instead the chart's own Deployment arguments are run as a local
//! `wif webhook`, authenticated as the chart's ServiceAccount (so its RBAC is what is tested),
//! and the chart's webhook configuration is pointed at it with `webhook.urlOverride`.

mod certificates;
mod controller_rbac;
mod install;

use std::{path::Path, process::Stdio, time::Duration};

use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    apps::v1::Deployment,
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Pod, Secret, ServiceAccount},
};
use kube::{Api, api::PostParams};
use wif_e2e::{
    ChildGuard, TestNs,
    helm::{self, Helm, chart, container_args, kinds, set},
    tail,
    webhook::wait_until_called,
    wif_bin,
};

use crate::webhook::{CLIENT, assert_injected, labelled};

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const OTHER_TENANT: &str = "0d1e6a4c-55b1-4b0e-9f56-3c2f4b4b7f10";
/// The controller's own identity (required while the controller is enabled).
const CONTROLLER: &str = "controller.clientId=5e3ce6c0-2b1f-4285-8d4b-75ee78787346";

fn tenant() -> String {
    format!("azure.tenantId={TENANT}")
}

/// Stub CRDs for the optional integrations, so the API server can accept their objects.
fn ensure_stub_crds(ns: &TestNs) {
    let crd = |group: &str, kind: &str, plural: &str| {
        format!(
            r#"{{"apiVersion":"apiextensions.k8s.io/v1","kind":"CustomResourceDefinition",
            "metadata":{{"name":"{plural}.{group}"}},
            "spec":{{"group":"{group}","scope":"Namespaced",
              "names":{{"kind":"{kind}","plural":"{plural}","singular":"{}","listKind":"{kind}List"}},
              "versions":[{{"name":"v1","served":true,"storage":true,
                "schema":{{"openAPIV3Schema":{{"type":"object","x-kubernetes-preserve-unknown-fields":true}}}}}}]}}}}"#,
            kind.to_lowercase()
        )
    };
    for (group, kind, plural) in [
        ("cert-manager.io", "Certificate", "certificates"),
        ("cert-manager.io", "Issuer", "issuers"),
        ("monitoring.coreos.com", "ServiceMonitor", "servicemonitors"),
    ] {
        kubectl_stdin(
            ns,
            &["apply", "--server-side", "--force-conflicts", "-f", "-"],
            &crd(group, kind, plural),
        );
        kubectl(
            ns,
            &[
                "wait",
                "--for=condition=Established",
                &format!("crd/{plural}.{group}"),
                "--timeout=30s",
            ],
        );
    }
}

fn kubectl(ns: &TestNs, args: &[&str]) -> String {
    succeeded(args, ns.cp.kubectl().args(args).output().unwrap())
}

fn kubectl_stdin(ns: &TestNs, args: &[&str], input: &str) -> String {
    succeeded(args, ns.cp.kubectl_stdin(args, input))
}

/// What kubectl printed, which must have succeeded.
fn succeeded(args: &[&str], out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A release of the chart in `ns`, its webhooks limited to `app_ns` (and to objects labelled for
/// this test) so parallel tests never see them; uninstalled on drop.
struct Release {
    helm: Helm,
    name: String,
    ns: String,
}

impl Release {
    /// `values` are `--set`s; `args`, further flags (`--set-file`).
    fn install(release_ns: &TestNs, app_ns: &str, values: &[&str], extra: &[&str]) -> Self {
        Self::install_named(&release_name(), release_ns, app_ns, values, extra)
    }

    fn install_named(name: &str, release_ns: &TestNs, app_ns: &str, values: &[&str], extra: &[&str]) -> Self {
        let name = name.to_owned();
        let helm = helm::on(&release_ns.cp);
        let chart = chart();
        let mut args: Vec<String> = [
            "install",
            &name,
            chart.to_str().unwrap(),
            "--namespace",
            &release_ns.name,
        ]
        .into_iter()
        .map(String::from)
        .collect();
        args.extend(isolation(app_ns, &release_ns.name));
        args.extend(set(values));
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let run = helm.run(&args);
        assert!(run.ok, "helm install failed:\n{}\n{}", run.stdout, run.stderr);
        assert!(
            run.stdout.contains("wif doctor"),
            "NOTES.txt is shown:\n{}",
            run.stdout
        );
        Self {
            helm,
            name,
            ns: release_ns.name.clone(),
        }
    }

    fn upgrade(&self, app_ns: &str, values: &[&str]) {
        let chart = chart();
        let mut args: Vec<String> = [
            "upgrade",
            &self.name,
            chart.to_str().unwrap(),
            "--namespace",
            &self.ns,
            "--reuse-values",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        args.extend(isolation(app_ns, &self.ns));
        args.extend(set(values));
        self.helm.run(&args).success();
    }

    fn manifest(&self) -> String {
        self.helm
            .run(["get", "manifest", &self.name, "--namespace", &self.ns])
            .success()
            .stdout
    }

    /// `kind/name` of every object of the release the API server holds.
    fn live(&self, ns: &TestNs, manifest: &str) -> Vec<String> {
        let out = kubectl_stdin(
            ns,
            &["get", "-f", "-", "--ignore-not-found", "-o", "name"],
            manifest,
        );
        let mut v: Vec<String> = out.lines().map(str::to_owned).collect();
        v.sort();
        v
    }

    fn uninstall(&self) {
        self.helm
            .run(["uninstall", &self.name, "--namespace", &self.ns, "--wait"])
            .success();
    }

    fn webhook(&self) -> String {
        format!("{}-webhook", self.name)
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = self.helm.run(["uninstall", &self.name, "--namespace", &self.ns]);
    }
}

fn release_name() -> String {
    format!("wif-{:04x}", rand::random::<u16>())
}

/// Values that keep a test's release from affecting the rest of the shared control plane.
fn isolation(app_ns: &str, release_ns: &str) -> Vec<String> {
    vec![
        "--set-json".into(),
        format!(
            r#"webhook.namespaceSelector={{"matchLabels":{{"kubernetes.io/metadata.name":"{app_ns}"}}}}"#
        ),
        "--set-json".into(),
        format!(r#"validatingWebhook.objectSelector={{"matchLabels":{{"wif-e2e/release":"{release_ns}"}}}}"#),
    ]
}

/// A kubeconfig authenticating as a ServiceAccount (a TokenRequest token), so a process run with
/// it has exactly the permissions the chart's RBAC grants.
async fn service_account_kubeconfig(ns: &TestNs, sa: &str, dir: &Path) -> std::path::PathBuf {
    // No audience: the API server's own, so the token authenticates to it.
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: None,
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        }),
        ..TokenRequest::default()
    };
    let token = ns
        .api::<ServiceAccount>()
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .expect("TokenRequest for the chart's ServiceAccount")
        .status
        .and_then(|s| s.token)
        .expect("a token");
    let path = dir.join(format!("{sa}.kubeconfig"));
    let cfg = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "cp", "cluster": {"server": ns.cp.server, "certificate-authority": ns.cp.ca}}],
        "users": [{"name": sa, "user": {"token": token}}],
        "contexts": [{"name": sa, "context": {"cluster": "cp", "user": sa, "namespace": ns.name}}],
        "current-context": sa,
    });
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    path
}

/// A chart component's container, run here: its own arguments (so a flag the binary does not
/// know fails the test), listening on local ports, as the component's ServiceAccount (so its
/// RBAC is what is tested).
struct LocalComponent {
    process: ChildGuard,
    port: u16,
    dir: tempfile::TempDir,
}

impl LocalComponent {
    /// `files` replaces the certificate paths of the webhook's files mode; `extra` is appended.
    async fn start(ns: &TestNs, deployment: &str, extra: &[&str], files: Option<(&str, &str)>) -> Self {
        let deploy = ns.api::<Deployment>().get(deployment).await.unwrap();
        let deploy = serde_json::to_value(deploy).unwrap();
        let sa = deploy["spec"]["template"]["spec"]["serviceAccountName"]
            .as_str()
            .unwrap()
            .to_owned();
        let dir = tempfile::Builder::new()
            .prefix("wif-e2e-chart-")
            .tempdir()
            .unwrap();
        let chart_args = container_args(&deploy);
        let is_webhook = chart_args.first().map(String::as_str) == Some("webhook");
        let mut args: Vec<String> = chart_args
            .into_iter()
            .filter(|a| {
                !a.starts_with("--listen=") && !a.starts_with("--admin-listen=") && a != "--log-format=json"
            })
            .map(|a| {
                match (
                    a.strip_prefix("--tls-cert-file="),
                    a.strip_prefix("--tls-key-file="),
                    files,
                ) {
                    (Some(_), _, Some((cert, _))) => format!("--tls-cert-file={cert}"),
                    (_, Some(_), Some((_, key))) => format!("--tls-key-file={key}"),
                    _ => a,
                }
            })
            .collect();
        if is_webhook {
            args.push("--listen=127.0.0.1:0".into());
        }
        args.extend(["--admin-listen=127.0.0.1:0".into(), "--log-format=text".into()]);
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let kubeconfig = service_account_kubeconfig(ns, &sa, dir.path()).await;
        let log = dir.path().join("out.log");
        let child = std::process::Command::new(wif_bin())
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", &ns.name)
            .env("POD_NAME", format!("{deployment}-local"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("err.log")).unwrap())
            .spawn()
            .unwrap();
        let mut process = ChildGuard {
            child,
            name: deployment.to_owned(),
        };
        let err_log = dir.path().join("err.log");
        let (port, admin) = if is_webhook {
            let addrs = process.wait_listening(&err_log, "webhook listening", &["listen", "admin"]);
            (addrs[0].port(), addrs[1].port())
        } else {
            (
                0,
                process.wait_listening(&err_log, "admin server listening", &["admin"])[0].port(),
            )
        };
        let mut component = Self { process, port, dir };
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        for _ in 0..300 {
            assert!(
                !component.process.exited(),
                "the chart's arguments {args:?} failed:\n{}",
                component.logs()
            );
            // The webhook is ready once its caches synced and a certificate is loaded; a
            // controller replica is ready once settings resolved (the leader also waits for its
            // caches, which the binding's progress below proves anyway).
            let probe = if is_webhook { "readyz" } else { "healthz" };
            if let Ok(r) = http.get(format!("http://127.0.0.1:{admin}/{probe}")).send().await
                && r.status().is_success()
            {
                return component;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let why = match http.get(format!("http://127.0.0.1:{admin}/readyz")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        panic!("{deployment} never became ready ({why}):\n{}", component.logs());
    }

    fn logs(&self) -> String {
        format!(
            "{}\n{}",
            tail(&self.dir.path().join("out.log"), 40),
            tail(&self.dir.path().join("err.log"), 40)
        )
    }
}

async fn wait_for_ca_bundle(ns: &TestNs, name: &str) -> Vec<u8> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(ns.client.clone());
    for _ in 0..100 {
        let cfg = api.get(name).await.unwrap();
        if let Some(b) = cfg.webhooks.unwrap_or_default()[0]
            .client_config
            .ca_bundle
            .clone()
            && !b.0.is_empty()
        {
            return b.0;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("caBundle of {name} never published");
}

/// Names of the CRDs the chart ships (charts/wif/crds/*.yaml).
fn crd_names() -> Vec<String> {
    let dir = chart().join("crds");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap();
        for obj in wif_e2e::helm::objects(&text) {
            if obj["kind"] == "CustomResourceDefinition" {
                names.push(obj["metadata"]["name"].as_str().unwrap().to_owned());
            }
        }
    }
    names
}
