//! The Helm chart: rendered with every value set that matters, refused with bad values, and
//! installed, upgraded and uninstalled through the real API server. No kubelet runs here, so the
//! chart's pods never start; instead the chart's own Deployment arguments are run as a local
//! `wif webhook`, authenticated as the chart's ServiceAccount (so its RBAC is what is tested),
//! and the chart's webhook configuration is pointed at it with `webhook.urlOverride`.

use std::{path::Path, process::Stdio, time::Duration};

use base64::Engine;
use k8s_openapi::api::{
    admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
    apps::v1::Deployment,
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::{Pod, Secret, ServiceAccount},
};
use kube::{Api, api::PostParams};
use serde_json::Value;
use wif_e2e::{
    ChildGuard, TestNs,
    helm::{Helm, chart, find, kinds},
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

fn set(args: &[&str]) -> Vec<String> {
    args.iter()
        .flat_map(|a| ["--set".to_owned(), (*a).to_owned()])
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn container_args(deploy: &Value) -> Vec<String> {
    deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn chart_lints_and_renders_with_every_value_set() {
    let helm = Helm::offline();
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for extra in [
        vec![],
        set(&["certs.mode=certManager"]),
        set(&[
            "certs.mode=existingSecret",
            "certs.existingSecret.name=tls",
            "certs.existingSecret.caBundle=-----BEGIN CERTIFICATE-----x",
        ]),
        set(&["metrics.serviceMonitor.enabled=true", "controller.enabled=false"]),
    ] {
        let mut args = vec![
            "lint",
            chart,
            "--strict",
            "--set",
            "azure.tenantId=contoso.onmicrosoft.com",
            "--set",
            CONTROLLER,
        ];
        args.extend(strs(&extra));
        helm.run(args).success();
    }

    // Default: self-managed certificates.
    let objs = helm.template("wif", "wif-system", &["--set", &tenant(), "--set", CONTROLLER]);
    let webhook = find(&objs, "Deployment", "wif-webhook");
    let spec = &webhook["spec"]["template"]["spec"];
    assert_eq!(webhook["spec"]["replicas"], 2);
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert!(!spec["topologySpreadConstraints"].as_array().unwrap().is_empty());
    let c = &spec["containers"][0];
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["drop"],
        serde_json::json!(["ALL"])
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    assert!(c["resources"]["limits"]["memory"].is_string() && c["resources"]["requests"]["cpu"].is_string());
    let args = container_args(webhook);
    for want in [
        "webhook",
        "--cert-mode=self-managed",
        &format!("--tenant-id={TENANT}"),
        "--webhook-config=wif-webhook",
    ] {
        assert!(args.iter().any(|a| a == want), "{want} not in {args:?}");
    }
    find(&objs, "PodDisruptionBudget", "wif-webhook");
    find(&objs, "Secret", "wif-webhook-tls");
    let mwc = find(&objs, "MutatingWebhookConfiguration", "wif-webhook");
    let hook = &mwc["webhooks"][0];
    assert_eq!(
        hook["objectSelector"]["matchLabels"]["azure.workload.identity/use"],
        "true"
    );
    assert_eq!(hook["failurePolicy"], "Fail");
    assert_eq!(hook["sideEffects"], "None");
    assert_eq!(hook["reinvocationPolicy"], "IfNeeded");
    assert_eq!(hook["timeoutSeconds"], 5);
    assert_eq!(hook["clientConfig"]["service"]["path"], "/mutate-v1-pod");
    assert!(
        hook["clientConfig"].get("caBundle").is_none(),
        "the webhook publishes it"
    );
    let excluded = &hook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(excluded["operator"], "NotIn");
    assert_eq!(
        excluded["values"],
        serde_json::json!(["kube-system", "wif-system"])
    );
    find(&objs, "ValidatingWebhookConfiguration", "wif-webhook");
    let controller = find(&objs, "Deployment", "wif-controller");
    assert!(
        container_args(controller)
            .iter()
            .any(|a| a == "--leader-elect=true")
    );
    // Least privilege: the webhook may update only its own Secret and patch only its own configurations.
    let role = find(&objs, "Role", "wif-webhook");
    assert_eq!(
        role["rules"][0]["resourceNames"],
        serde_json::json!(["wif-webhook-tls"])
    );
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get", "update"]));
    let cluster_role = find(&objs, "ClusterRole", "wif-webhook");
    for rule in cluster_role["rules"].as_array().unwrap() {
        let verbs = rule["verbs"].as_array().unwrap();
        if verbs.iter().any(|v| v == "patch") {
            assert_eq!(
                rule["resourceNames"],
                serde_json::json!(["wif-webhook"]),
                "{rule}"
            );
        }
        assert!(
            !rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r == "secrets"),
            "{rule}"
        );
    }
    assert!(
        !kinds(&objs)
            .iter()
            .any(|k| k.starts_with("Certificate/") || k.starts_with("ServiceMonitor/"))
    );

    // cert-manager: Certificate + Issuer, CA injection into both configurations, files mode.
    let objs = helm.template(
        "wif",
        "wif-system",
        &[
            "--set",
            &tenant(),
            "--set",
            CONTROLLER,
            "--set",
            "certs.mode=certManager",
        ],
    );
    let cert = find(&objs, "Certificate", "wif-webhook");
    assert_eq!(cert["spec"]["secretName"], "wif-webhook-tls");
    assert_eq!(cert["spec"]["dnsNames"][0], "wif-webhook.wif-system.svc");
    find(&objs, "Issuer", "wif-webhook-selfsigned");
    for kind in ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"] {
        let cfg = find(&objs, kind, "wif-webhook");
        assert_eq!(
            cfg["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "wif-system/wif-webhook"
        );
    }
    let deploy = find(&objs, "Deployment", "wif-webhook");
    assert!(container_args(deploy).iter().any(|a| a == "--cert-mode=files"));
    assert_eq!(
        deploy["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "wif-webhook-tls"
    );
    assert!(
        !kinds(&objs)
            .iter()
            .any(|k| k == "Secret/wif-webhook-tls" || k == "Role/wif-webhook")
    );
    // ... or the operator's own issuer.
    let objs = helm.template(
        "wif",
        "wif-system",
        &[
            "--set",
            &tenant(),
            "--set",
            CONTROLLER,
            "--set",
            "certs.mode=certManager",
            "--set",
            "certs.certManager.issuerRef.name=corp-ca",
            "--set",
            "certs.certManager.issuerRef.kind=ClusterIssuer",
        ],
    );
    let cert = find(&objs, "Certificate", "wif-webhook");
    assert_eq!(cert["spec"]["issuerRef"]["name"], "corp-ca");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert!(!kinds(&objs).iter().any(|k| k.starts_with("Issuer/")));

    // An existing Secret: its CA is published as the caBundle.
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let objs = helm.template(
        "wif",
        "wif-system",
        &[
            "--set",
            &tenant(),
            "--set",
            CONTROLLER,
            "--set",
            "certs.mode=existingSecret",
            "--set",
            "certs.existingSecret.name=my-tls",
            "--set",
            &format!("certs.existingSecret.caBundle={pem}"),
        ],
    );
    let mwc = find(&objs, "MutatingWebhookConfiguration", "wif-webhook");
    assert_eq!(
        mwc["webhooks"][0]["clientConfig"]["caBundle"],
        base64::engine::general_purpose::STANDARD.encode(pem)
    );
    let deploy = find(&objs, "Deployment", "wif-webhook");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "my-tls"
    );

    // Custom tenant and cloud reach both components; another release name prefixes every object.
    let objs = helm.template(
        "team-a",
        "identity",
        &[
            "--set",
            &format!("azure.tenantId={OTHER_TENANT}"),
            "--set",
            CONTROLLER,
            "--set",
            "azure.cloud=AzureUSGovernmentCloud",
        ],
    );
    for name in ["team-a-wif-webhook", "team-a-wif-controller"] {
        let args = container_args(find(&objs, "Deployment", name));
        assert!(args.contains(&format!("--tenant-id={OTHER_TENANT}")), "{args:?}");
        assert!(
            args.contains(&"--cloud=AzureUSGovernmentCloud".to_owned()),
            "{args:?}"
        );
    }
    let mwc = find(&objs, "MutatingWebhookConfiguration", "team-a-wif-webhook");
    assert_eq!(
        mwc["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        serde_json::json!(["kube-system", "identity"])
    );

    // ServiceMonitor on: one monitor over both components' metrics ports.
    let objs = helm.template(
        "wif",
        "wif-system",
        &[
            "--set",
            &tenant(),
            "--set",
            CONTROLLER,
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ],
    );
    let sm = find(&objs, "ServiceMonitor", "wif");
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "metrics");
    for svc in ["wif-webhook", "wif-controller-metrics"] {
        let ports = find(&objs, "Service", svc)["spec"]["ports"]
            .as_array()
            .unwrap()
            .clone();
        assert!(ports.iter().any(|p| p["name"] == "metrics"), "{svc}: {ports:?}");
    }

    // One replica: no PodDisruptionBudget (it would block every drain). Controller off: none of it.
    let objs = helm.template(
        "wif",
        "wif-system",
        &[
            "--set",
            &tenant(),
            "--set",
            "webhook.replicas=1",
            "--set",
            "controller.enabled=false",
        ],
    );
    let names = kinds(&objs);
    assert!(
        !names.iter().any(|k| k.starts_with("PodDisruptionBudget/")),
        "{names:?}"
    );
    assert!(
        !names
            .iter()
            .any(|k| k.contains("controller") || k.starts_with("ValidatingWebhookConfiguration/")),
        "{names:?}"
    );
}

#[test]
fn schema_rejects_bad_values_and_names_them() {
    let helm = Helm::offline();
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&[CONTROLLER], "tenantId"),
        (&["azure.tenantId=not a tenant!", CONTROLLER], "/azure/tenantId"),
        (
            &["azure.tenantId=contoso.onmicrosoft.com"],
            "/controller/clientId",
        ),
        (
            &[
                "azure.tenantId=contoso.onmicrosoft.com",
                CONTROLLER,
                "azure.cloud=Mars",
            ],
            "/azure/cloud",
        ),
        (
            &[
                "azure.tenantId=contoso.onmicrosoft.com",
                CONTROLLER,
                "webhook.replicas=two",
            ],
            "/webhook/replicas",
        ),
        (
            &[
                "azure.tenantId=contoso.onmicrosoft.com",
                CONTROLLER,
                "webhook.failurePolicy=Maybe",
            ],
            "/webhook/failurePolicy",
        ),
        (
            &[
                "azure.tenantId=contoso.onmicrosoft.com",
                CONTROLLER,
                "webhook.timeoutSeconds=60",
            ],
            "/webhook/timeoutSeconds",
        ),
        (
            &[
                "azure.tenantId=contoso.onmicrosoft.com",
                CONTROLLER,
                "certs.mode=vault",
            ],
            "/certs/mode",
        ),
        (
            &[
                "azure.tenantId=contoso.onmicrosoft.com",
                CONTROLLER,
                "certs.mode=existingSecret",
            ],
            "/certs/existingSecret",
        ),
        (
            &[
                "azure.tenantId=contoso.onmicrosoft.com",
                CONTROLLER,
                "logFormat=xml",
            ],
            "/logFormat",
        ),
        (
            &[
                "azure.tenantId=contoso.onmicrosoft.com",
                CONTROLLER,
                "controller.clientId=my-app",
            ],
            "/controller/clientId",
        ),
        (
            &[
                "azure.tenantId=contoso.onmicrosoft.com",
                CONTROLLER,
                "metrics.serviceMonitor.enabled=yes please",
            ],
            "/metrics/serviceMonitor/enabled",
        ),
        (
            &[
                "azure.tenantId=contoso.onmicrosoft.com",
                CONTROLLER,
                "webhook.resources.limits.memory=lots",
            ],
            "/webhook/resources/limits/memory",
        ),
        (
            &[
                "azure.tenantId=contoso.onmicrosoft.com",
                CONTROLLER,
                "webhhook.replicas=3",
            ],
            "webhhook",
        ),
    ];
    for (values, names) in cases {
        let mut args = vec!["template", "wif", chart];
        let sets = set(values);
        args.extend(strs(&sets));
        let run = helm.run(args);
        assert!(!run.ok, "{values:?} was accepted");
        assert!(
            run.stderr
                .contains("values don't meet the specifications of the schema"),
            "{values:?}: {}",
            run.stderr
        );
        assert!(
            run.stderr.contains(names),
            "{values:?}: the message does not name {names}: {}",
            run.stderr
        );
    }
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
    let out = ns.cp.kubectl().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn kubectl_stdin(ns: &TestNs, args: &[&str], input: &str) -> String {
    use std::io::Write;
    let mut child = ns
        .cp
        .kubectl()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
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
        let helm = Helm::new(&release_ns.cp);
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

#[tokio::test]
async fn install_upgrade_and_uninstall_through_the_api_server_and_the_chart_webhook_mutates_pods() {
    let release_ns = TestNs::new("helm").await;
    let app = TestNs::new("helm-app").await;
    let release = Release::install(&release_ns, &app.name, &[&tenant(), CONTROLLER], &[]);

    // Every object of the release was accepted and is there; so are the CRDs.
    let manifest = release.manifest();
    let rendered = wif_e2e::helm::objects(&manifest);
    let live = release.live(&release_ns, &manifest);
    assert_eq!(
        live.len(),
        rendered.len(),
        "live {live:?}\nrendered {:?}",
        kinds(&rendered)
    );
    for kind in [
        "deployment.apps/",
        "mutatingwebhookconfiguration.",
        "validatingwebhookconfiguration.",
        "secret/",
        "poddisruptionbudget.policy/",
    ] {
        assert!(live.iter().any(|l| l.starts_with(kind)), "no {kind} in {live:?}");
    }
    let crds = crd_names();
    for crd in &crds {
        kubectl(&release_ns, &["get", "crd", crd]);
    }

    // The chart's webhook, run with the Deployment's arguments and the chart's RBAC: it fills
    // the chart's Secret and publishes the caBundle in the chart's configuration.
    let hook = LocalComponent::start(
        &release_ns,
        &release.webhook(),
        &["--cert-extra-hosts=127.0.0.1"],
        None,
    )
    .await;
    let ca_bundle = wait_for_ca_bundle(&release_ns, &release.webhook()).await;
    let secret = release_ns
        .api::<Secret>()
        .get(&format!("{}-tls", release.webhook()))
        .await
        .unwrap();
    assert!(secret.data.unwrap_or_default().contains_key("tls.crt"));

    // `wif doctor` on the chart's configuration as installed (behind its Service): no webhook
    // pod can be ready here, and it says so, and what the API server answers.
    app.service_account("api", &[("azure.workload.identity/client-id", CLIENT)])
        .await;
    let kubeconfig = app.cp.kubeconfig.clone();
    let doctor_args = [
        "doctor",
        "-n",
        app.name.as_str(),
        "--service-account",
        "api",
        "--webhook-config",
    ]
    .map(str::to_owned);
    let config_name = release.webhook();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(wif_bin())
            .args(doctor_args)
            .arg(config_name)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("✗ caBundle: no ready endpoint behind Service"),
        "{report}"
    );
    assert!(report.contains("✗ API server calls the webhook"), "{report}");

    // Upgrade with changed values, pointing the configuration at the local webhook: the caBundle
    // the webhook wrote survives Helm's three-way merge.
    release.upgrade(
        &app.name,
        &[
            "webhook.replicas=3",
            "logLevel=debug",
            &format!("webhook.urlOverride=https://127.0.0.1:{}", hook.port),
        ],
    );
    let deploy = release_ns
        .api::<Deployment>()
        .get(&release.webhook())
        .await
        .unwrap();
    assert_eq!(deploy.spec.as_ref().unwrap().replicas, Some(3));
    let args = container_args(&serde_json::to_value(&deploy).unwrap());
    assert!(args.contains(&"--log-level=debug".to_owned()), "{args:?}");
    let cfg = Api::<MutatingWebhookConfiguration>::all(app.client.clone())
        .get(&release.webhook())
        .await
        .unwrap();
    let client_config = &cfg.webhooks.unwrap()[0].client_config;
    assert_eq!(
        client_config.url.as_deref(),
        Some(format!("https://127.0.0.1:{}/mutate-v1-pod", hook.port).as_str())
    );
    assert_eq!(
        client_config.ca_bundle.as_ref().map(|b| b.0.clone()),
        Some(ca_bundle.clone())
    );

    // Through the API server, the chart's configuration mutates a labelled pod.
    wait_until_called(&app).await;
    let pod = app
        .api::<Pod>()
        .create(&PostParams::default(), &labelled("web", "api"))
        .await
        .unwrap();
    for c in pod.spec.as_ref().unwrap().containers.iter() {
        assert_injected(c, TENANT);
    }

    // The chart's ValidatingWebhookConfiguration got the same caBundle and refuses, at apply,
    // a binding no policy grants (objects labelled for this release only: the plane is shared).
    let vwc = Api::<ValidatingWebhookConfiguration>::all(app.client.clone())
        .get(&release.webhook())
        .await
        .unwrap();
    for w in vwc.webhooks.unwrap() {
        assert_eq!(
            w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()),
            Some(ca_bundle.clone()),
            "{}",
            w.name
        );
    }
    let binding = serde_json::json!({
        "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityBinding",
        "metadata": {"name": "api", "labels": {"wif-e2e/release": release_ns.name}},
        "spec": {"serviceAccountName": "api", "identity": {"application": {"clientId": CLIENT}}}});
    let mut refused = String::new();
    for _ in 0..50 {
        let out = app
            .cp
            .kubectl()
            .args(["apply", "-n", &app.name, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(binding.to_string().as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(!out.status.success(), "an ungranted binding was accepted");
        refused = String::from_utf8_lossy(&out.stderr).into_owned();
        if refused.contains("denied the request") {
            break;
        }
        // The API server's webhook cache may not have the new url yet.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        refused.contains("no FederatedIdentityPolicy grants"),
        "not refused by the chart's validating webhook: {refused}"
    );
    drop(hook);

    // Uninstall removes every object of the release, the self-managed Secret included, and
    // leaves the CRDs.
    release.uninstall();
    let left = release.live(&release_ns, &manifest);
    assert!(left.is_empty(), "left behind: {left:?}");
    for crd in &crds {
        kubectl(&release_ns, &["get", "crd", crd]);
    }
}

#[tokio::test]
async fn cert_manager_mode_with_service_monitor_installs_and_uninstalls() {
    let release_ns = TestNs::new("helm-cm").await;
    ensure_stub_crds(&release_ns);
    let release = Release::install(
        &release_ns,
        "e2e-nothing",
        &[
            &tenant(),
            CONTROLLER,
            "certs.mode=certManager",
            "metrics.serviceMonitor.enabled=true",
        ],
        &[],
    );
    let manifest = release.manifest();
    let rendered = wif_e2e::helm::objects(&manifest);
    let live = release.live(&release_ns, &manifest);
    assert_eq!(
        live.len(),
        rendered.len(),
        "live {live:?}\nrendered {:?}",
        kinds(&rendered)
    );
    for kind in [
        "certificate.cert-manager.io/",
        "issuer.cert-manager.io/",
        "servicemonitor.monitoring.coreos.com/",
    ] {
        assert!(live.iter().any(|l| l.starts_with(kind)), "no {kind} in {live:?}");
    }
    release.uninstall();
    assert!(release.live(&release_ns, &manifest).is_empty());
}

#[tokio::test]
async fn existing_secret_mode_serves_the_operators_certificate() {
    let release_ns = TestNs::new("helm-es").await;
    let app = TestNs::new("helm-es-app").await;
    // The operator's certificate, in a Secret the chart mounts, and its CA as the caBundle.
    let now = time::OffsetDateTime::now_utc();
    let ca = wif_webhook::selfcert::generate_ca("operator-ca", now, Duration::from_secs(86400)).unwrap();
    let leaf = wif_webhook::selfcert::issue_cert(
        &ca.cert_pem,
        &ca.key_pem,
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap()],
        now,
        Duration::from_secs(86400),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, &ca.cert_pem).unwrap();
    kubectl(
        &release_ns,
        &[
            "-n",
            &release_ns.name,
            "create",
            "secret",
            "tls",
            "operator-tls",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let release = Release::install(
        &release_ns,
        &app.name,
        &[
            &format!("azure.tenantId={OTHER_TENANT}"),
            "certs.mode=existingSecret",
            "certs.existingSecret.name=operator-tls",
            "controller.enabled=false",
        ],
        &[
            "--set-file",
            &format!("certs.existingSecret.caBundle={}", ca_file.display()),
        ],
    );
    let objs = wif_e2e::helm::objects(&release.manifest());
    assert!(!kinds(&objs).iter().any(|k| k.contains("controller")));
    let hook = LocalComponent::start(
        &release_ns,
        &release.webhook(),
        &[],
        Some((cert.to_str().unwrap(), key.to_str().unwrap())),
    )
    .await;
    // Point the configuration, whose caBundle is the operator's CA, at the local process.
    release.upgrade(
        &app.name,
        &[&format!("webhook.urlOverride=https://127.0.0.1:{}", hook.port)],
    );
    app.service_account("api", &[("azure.workload.identity/client-id", CLIENT)])
        .await;
    wait_until_called(&app).await;
    let pod = app
        .api::<Pod>()
        .create(&PostParams::default(), &labelled("web", "api"))
        .await
        .unwrap();
    for c in pod.spec.as_ref().unwrap().containers.iter() {
        assert_injected(c, OTHER_TENANT);
    }
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

/// The controller, run with the chart's arguments and authenticated as the chart's controller
/// ServiceAccount, turns a binding into a federated credential: the chart's RBAC is enough
/// (leader Lease, issuer discovery, bindings, status, ServiceAccount annotations, Events).
#[tokio::test]
async fn chart_rbac_lets_the_controller_make_a_binding_ready() {
    const CONTROLLER_APP: &str = "3c9e1f4a-7b2d-4e8f-9a6c-1d5b7e3f2a90";
    let release_ns = TestNs::new("helm-ctl").await;
    let app = TestNs::new("helm-ctl-app").await;
    let name = release_name();
    // Entra: the controller's application trusts the chart's controller ServiceAccount; the
    // workload's application has no credential yet.
    let entra = wif_e2e::entra::Entra::start(
        &release_ns,
        serde_json::json!({"tenants": [{"id": TENANT, "applications": [
            {"displayName": "wif-controller", "appId": CONTROLLER_APP, "federatedIdentityCredentials": [{
                "name": "wif-controller", "issuer": release_ns.cp.issuer,
                "subject": format!("system:serviceaccount:{}:{name}-controller", release_ns.name),
                "audiences": ["api://AzureADTokenExchange"]}]},
            {"displayName": "workload", "appId": CLIENT}]}]}),
    )
    .await;
    let release = Release::install_named(
        &name,
        &release_ns,
        &app.name,
        &[
            &tenant(),
            &format!("controller.clientId={CONTROLLER_APP}"),
            &format!("controller.graphUrl={}", entra.handle.graph_url()),
            &format!("controller.authorityHost={}", entra.handle.authority_host()),
        ],
        &[],
    );
    // What the kubelet would project into the controller pod, and the emulator's CA.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let token = wif_e2e::entra::service_account_token(
        &release_ns,
        &format!("{name}-controller"),
        Duration::from_secs(3600),
    )
    .await;
    std::fs::write(&token_file, token).unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, entra.handle.ca_pem()).unwrap();
    let controller = LocalComponent::start(
        &release_ns,
        &format!("{name}-controller"),
        &[
            &format!("--token-file={}", token_file.display()),
            &format!("--trust-ca={}", ca_file.display()),
            // Only this test's bindings: the control plane is shared.
            &format!("--watch-namespace={}", app.name),
            "--readback-interval=200ms",
        ],
        None,
    )
    .await;

    app.service_account("api", &[]).await;
    let policy = format!("e2e-{}", app.name);
    kubectl_stdin(
        &app,
        &["apply", "-f", "-"],
        &serde_json::json!({
            "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityPolicy",
            "metadata": {"name": policy},
            "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": app.name}},
                     "applications": [CLIENT]}})
        .to_string(),
    );
    kubectl_stdin(
        &app,
        &["apply", "-n", &app.name, "-f", "-"],
        &serde_json::json!({
            "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityBinding",
            "metadata": {"name": "api"},
            "spec": {"serviceAccountName": "api", "identity": {"application": {"clientId": CLIENT}}}})
        .to_string(),
    );
    let mut ready = String::new();
    for _ in 0..300 {
        ready = kubectl(
            &app,
            &[
                "get",
                "-n",
                &app.name,
                "federatedidentitybinding",
                "api",
                "-o",
                r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}"#,
            ],
        );
        if ready == "True" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ready,
        "True",
        "binding not Ready:\n{}\n{}",
        kubectl(
            &app,
            &[
                "get",
                "-n",
                &app.name,
                "federatedidentitybinding",
                "api",
                "-o",
                "yaml"
            ]
        ),
        controller.logs()
    );
    let sa = kubectl(
        &app,
        &[
            "get",
            "-n",
            &app.name,
            "serviceaccount",
            "api",
            "-o",
            "jsonpath={.metadata.annotations}",
        ],
    );
    assert!(sa.contains(CLIENT), "ServiceAccount not annotated: {sa}");
    let holder = kubectl(
        &release_ns,
        &[
            "get",
            "-n",
            &release_ns.name,
            "lease",
            &format!("{name}-controller"),
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ],
    );
    assert!(!holder.is_empty(), "no leader");

    // Deleting the binding runs the controller's finalizer (credential deleted) before it goes.
    kubectl(
        &app,
        &[
            "delete",
            "-n",
            &app.name,
            "federatedidentitybinding",
            "api",
            "--wait=false",
        ],
    );
    let mut gone = false;
    for _ in 0..300 {
        let left = kubectl(
            &app,
            &["get", "-n", &app.name, "federatedidentitybindings", "-o", "name"],
        );
        if left.trim().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        gone,
        "the controller did not release the deleted binding:\n{}\n{}",
        kubectl(
            &app,
            &[
                "get",
                "-n",
                &app.name,
                "federatedidentitybinding",
                "api",
                "-o",
                "yaml"
            ]
        ),
        controller.logs()
    );
    kubectl(&app, &["delete", "federatedidentitypolicy", &policy]);
    drop(controller);
    release.uninstall();
}
