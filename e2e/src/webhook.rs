//! `wif webhook` as a local process, registered with the API server by URL.

use std::{path::PathBuf, process::Stdio, time::Duration};

use k8s_openapi::{
    ByteString,
    api::admissionregistration::v1::{
        MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};

use wif_webhook::selfcert::PemPair;

use crate::{ChildGuard, TestNs, tail, wif_bin};

/// How to start the webhook.
#[derive(Clone, Debug)]
pub struct WebhookOptions {
    /// `--tenant-id`.
    pub tenant_id: String,
    /// `--cloud`.
    pub cloud: String,
    /// More flags (limits, `--http2=false`).
    pub args: Vec<String>,
    /// `--log-level`.
    pub log_level: String,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        Self {
            tenant_id: "72f988bf-86f1-41af-91ab-2d7cd011db47".into(),
            cloud: "AzurePublicCloud".into(),
            args: Vec::new(),
            log_level: "info,wif_webhook=debug".into(),
        }
    }
}

/// A running `wif webhook` with its certificate and its MutatingWebhookConfiguration.
pub struct WebhookProcess {
    /// The process (killed on drop).
    pub process: ChildGuard,
    /// HTTPS port of the admission endpoint.
    pub port: u16,
    /// Plain-HTTP admin port.
    pub admin_port: u16,
    /// PEM of the CA that signed the serving certificate.
    pub ca_pem: String,
    /// Name of the MutatingWebhookConfiguration (deleted on drop).
    pub config_name: String,
    /// Log file of the process.
    pub log: PathBuf,
    kubeconfig: PathBuf,
    owns_config: bool,
    _dir: tempfile::TempDir,
}

/// A fresh CA named `ca_name` and a leaf it issued for `localhost` and 127.0.0.1, both valid for
/// `lifetime` from now: (CA, leaf).
pub fn localhost_pki(ca_name: &str, lifetime: Duration) -> (PemPair, PemPair) {
    let now = time::OffsetDateTime::now_utc();
    let ca = wif_webhook::selfcert::generate_ca(ca_name, now, lifetime).unwrap();
    let leaf = wif_webhook::selfcert::issue_cert(
        &ca.cert_pem,
        &ca.key_pem,
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap()],
        now,
        lifetime,
    )
    .unwrap();
    (ca, leaf)
}

impl WebhookProcess {
    /// Starts the webhook with a certificate from files, waits for `/readyz`, registers it for
    /// pods of `ns` (same rules as the Helm chart: objectSelector on the label, failurePolicy
    /// Fail, sideEffects None, reinvocationPolicy IfNeeded) and waits until the API server calls
    /// it.
    pub async fn start(ns: &TestNs, opts: WebhookOptions) -> Self {
        Self::start_named(ns, opts, None).await
    }

    /// [`WebhookProcess::start`] with its own configuration name (a second webhook in `ns`).
    pub async fn start_named(ns: &TestNs, opts: WebhookOptions, config_name: Option<&str>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wif-e2e-hook-")
            .tempdir()
            .unwrap();
        let (ca, leaf) = localhost_pki("wif-e2e", Duration::from_secs(86400));
        std::fs::write(dir.path().join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &leaf.key_pem).unwrap();
        let cert_args = vec![
            "--tls-cert-file".into(),
            dir.path().join("tls.crt").display().to_string(),
            "--tls-key-file".into(),
            dir.path().join("tls.key").display().to_string(),
        ];
        let mut hook = Self::spawn(ns, &opts, dir, ca.cert_pem, cert_args);
        if let Some(name) = config_name {
            hook.config_name = name.to_owned();
        }
        hook.wait_ready().await;
        let api: Api<MutatingWebhookConfiguration> = Api::all(ns.client.clone());
        api.create(&PostParams::default(), &hook.configuration(&ns.name))
            .await
            .expect("create webhook config");
        wait_until_called(ns).await;
        hook
    }

    /// Starts the webhook in self-managed certificate mode: its configuration is registered first
    /// without a caBundle, and the webhook creates its CA and certificate in Secret
    /// `secret` of `ns` and publishes the caBundle itself. `config_name` lets several replicas
    /// share one configuration; only the replica that `register`s it points the API server at
    /// itself and deletes the configuration when dropped.
    pub async fn start_self_managed(ns: &TestNs, config_name: &str, secret: &str, register: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("wif-e2e-hook-")
            .tempdir()
            .unwrap();
        let args = [
            "--cert-mode",
            "self-managed",
            "--namespace",
            &ns.name,
            "--cert-secret",
            secret,
        ]
        .into_iter()
        .map(String::from)
        .chain([
            "--webhook-config".into(),
            config_name.into(),
            "--cert-extra-hosts".into(),
            "127.0.0.1".into(),
        ])
        .collect();
        let mut hook = Self::spawn(ns, &WebhookOptions::default(), dir, String::new(), args);
        hook.config_name = config_name.to_owned();
        if register {
            let mut cfg = hook.configuration(&ns.name);
            for w in cfg.webhooks.iter_mut().flatten() {
                w.client_config.ca_bundle = None;
            }
            let api: Api<MutatingWebhookConfiguration> = Api::all(ns.client.clone());
            api.create(&PostParams::default(), &cfg)
                .await
                .expect("create webhook config");
        } else {
            // Another replica owns the configuration; this one must not delete it.
            hook.owns_config = false;
        }
        hook.wait_ready().await;
        hook
    }

    fn spawn(
        ns: &TestNs,
        opts: &WebhookOptions,
        dir: tempfile::TempDir,
        ca_pem: String,
        cert_args: Vec<String>,
    ) -> Self {
        let log = dir.path().join("webhook.log");
        let child = std::process::Command::new(wif_bin())
            .arg("webhook")
            .args(["--tenant-id", &opts.tenant_id, "--cloud", &opts.cloud])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(cert_args)
            .args(&opts.args)
            .args(["--log-level", &opts.log_level])
            .env("KUBECONFIG", &ns.cp.kubeconfig)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("webhook.err")).unwrap())
            .spawn()
            .expect("start wif webhook");
        let mut process = ChildGuard {
            child,
            name: "wif webhook".into(),
        };
        let addrs = process.wait_listening(&log, "webhook listening", &["listen", "admin"]);
        Self {
            process,
            port: addrs[0].port(),
            admin_port: addrs[1].port(),
            ca_pem,
            config_name: format!("wif-e2e-{}", ns.name),
            log,
            kubeconfig: ns.cp.kubeconfig.clone(),
            owns_config: true,
            _dir: dir,
        }
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        for _ in 0..300 {
            if self.process.exited() {
                panic!("wif webhook exited:\n{}", self.logs());
            }
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("wif webhook not ready after 30 s:\n{}", self.logs());
    }

    /// Tail of the webhook's logs.
    pub fn logs(&self) -> String {
        let err = self.log.with_file_name("webhook.err");
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            tail(&self.log, 30),
            tail(&err, 30)
        )
    }

    /// The MutatingWebhookConfiguration the Helm chart installs, pointed at this process and
    /// limited to the test's namespace so parallel tests do not see each other.
    pub fn configuration(&self, ns: &str) -> MutatingWebhookConfiguration {
        mutating_configuration(
            &self.config_name,
            "mutation.wif.azure.workload.identity",
            &format!("https://127.0.0.1:{}{}", self.port, wif_api::MUTATE_PATH),
            &self.ca_pem,
            ns,
            Some(LabelSelector {
                match_labels: Some([(wif_api::USE_LABEL.to_owned(), "true".to_owned())].into()),
                ..LabelSelector::default()
            }),
        )
    }

    /// Stops the process (SIGTERM, then SIGKILL); the configuration stays registered.
    pub fn stop(&mut self) {
        if !self.process.terminate(Duration::from_secs(30)) {
            let _ = self.process.child.kill();
        }
    }
}

/// A MutatingWebhookConfiguration with one webhook for pod creation in `ns`.
pub fn mutating_configuration(
    name: &str,
    hook: &str,
    url: &str,
    ca_pem: &str,
    ns: &str,
    object_selector: Option<LabelSelector>,
) -> MutatingWebhookConfiguration {
    MutatingWebhookConfiguration {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: hook.into(),
            admission_review_versions: vec!["v1".into()],
            client_config: WebhookClientConfig {
                url: Some(url.into()),
                ca_bundle: Some(ByteString(ca_pem.as_bytes().to_vec())),
                service: None,
            },
            rules: Some(vec![RuleWithOperations {
                api_groups: Some(vec!["".into()]),
                api_versions: Some(vec!["v1".into()]),
                operations: Some(vec!["CREATE".into()]),
                resources: Some(vec!["pods".into()]),
                scope: Some("Namespaced".into()),
            }]),
            failure_policy: Some("Fail".into()),
            side_effects: "None".into(),
            reinvocation_policy: Some("IfNeeded".into()),
            match_policy: Some("Equivalent".into()),
            timeout_seconds: Some(10),
            object_selector,
            namespace_selector: Some(LabelSelector {
                match_labels: Some([("kubernetes.io/metadata.name".to_owned(), ns.to_owned())].into()),
                ..LabelSelector::default()
            }),
            ..MutatingWebhook::default()
        }]),
    }
}

/// Waits until a dry-run pod in `ns` comes back mutated: the API server has picked the new
/// configuration up (its webhook cache is eventually consistent).
pub async fn wait_until_called(ns: &TestNs) {
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = ns.api();
    let probe: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe", "labels": {wif_api::USE_LABEL: "true"}},
        "spec": {"serviceAccountName": "wif-e2e-probe", "containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap();
    // A second webhook of the same namespace finds the probe's ServiceAccount there already.
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "wif-e2e-probe"}})).unwrap();
    match ns.api().create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create ServiceAccount wif-e2e-probe: {e}"),
    }
    let pp = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    for _ in 0..100 {
        if let Ok(p) = pods.create(&pp, &probe).await
            && p.spec
                .and_then(|s| s.volumes)
                .is_some_and(|v| v.iter().any(|v| v.name == wif_api::TOKEN_VOLUME_NAME))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "the API server never called the webhook for namespace {}",
        ns.name
    );
}

impl Drop for WebhookProcess {
    fn drop(&mut self) {
        if !self.owns_config {
            return;
        }
        crate::cluster::delete_quietly(
            &self.kubeconfig,
            "mutatingwebhookconfiguration",
            &self.config_name,
        );
    }
}
