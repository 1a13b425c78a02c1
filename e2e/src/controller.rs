//! `wif controller` as a local process against the test control plane and an in-process
//! emulator: the CRDs, the controller's own workload identity (a TokenRequest token on disk,
//! trusted by the emulator), policies, bindings and what the emulator holds.

use std::{
    path::PathBuf,
    process::Stdio,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, CustomResourceExt,
    api::{DeleteParams, PostParams},
};
use serde_json::{Value, json};
use wif_api::{FederatedIdentityBinding, FederatedIdentityPolicy, FederatedIdentityPool};
use wif_emulator::{Config, Emulator, EmulatorConfig, Handle};

use crate::{ChildGuard, TestNs, entra::service_account_token, tail, wif_bin};

/// Tenant of every controller test.
pub const TENANT: &str = crate::entra::TENANT;
/// Client id of the controller's own application in the emulator.
pub const CONTROLLER_APP: &str = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d";
/// ServiceAccount the controller runs as (its token is the controller's assertion).
pub const CONTROLLER_SA: &str = "wif-controller";
/// Subscription of the seeded managed identities.
pub const SUBSCRIPTION: &str = "0b1f6471-1bf0-4dda-aec3-cb9272f09590";

/// Installs the CRDs once per test process and waits until they are served.
pub async fn install_crds(ns: &TestNs) {
    // Per control plane (the shared one, the node's, private ones).
    static DONE: Mutex<Vec<String>> = Mutex::new(Vec::new());
    if DONE.lock().unwrap().contains(&ns.cp.server) {
        return;
    }
    let api: Api<CustomResourceDefinition> = Api::all(ns.client.clone());
    for crd in [
        FederatedIdentityBinding::crd(),
        FederatedIdentityPolicy::crd(),
        FederatedIdentityPool::crd(),
    ] {
        match api.create(&PostParams::default(), &crd).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => panic!("failed to install CRD: {e}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let bindings: Api<FederatedIdentityBinding> = ns.api();
        let policies: Api<FederatedIdentityPolicy> = Api::all(ns.client.clone());
        let pools: Api<FederatedIdentityPool> = Api::all(ns.client.clone());
        if bindings.list(&Default::default()).await.is_ok()
            && policies.list(&Default::default()).await.is_ok()
            && pools.list(&Default::default()).await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "CRDs not served after 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    DONE.lock().unwrap().push(ns.cp.server.clone());
}

/// The emulator's RSA signing key, kept from the first emulator of this test process and copied
/// into the state directory of the next ones (key generation is slow in debug builds).
fn signing_key_slot() -> &'static Mutex<Option<Vec<u8>>> {
    static KEY: OnceLock<Mutex<Option<Vec<u8>>>> = OnceLock::new();
    KEY.get_or_init(|| Mutex::new(None))
}

fn remember_signing_key(dir: &std::path::Path) {
    if let Ok(key) = std::fs::read(dir.join("signing-key.pem")) {
        let mut guard = signing_key_slot().lock().unwrap();
        if guard.is_none() {
            *guard = Some(key);
        }
    }
}

/// An emulator trusting the control plane, with the controller's application seeded and a
/// token file for the controller.
pub struct ControllerEnv {
    /// The emulator.
    pub entra: Handle,
    /// The controller's token file.
    pub token_file: PathBuf,
    /// The emulator's CA (PEM file).
    pub ca_file: PathBuf,
    /// Temporary files.
    pub dir: tempfile::TempDir,
}

impl ControllerEnv {
    /// Starts the emulator seeded with `tenant` (the tenant object of the emulator's config
    /// file, without the controller's application, which is added) and `settings`.
    pub async fn start(ns: &TestNs, tenant: Value, settings: Value) -> Self {
        Self::start_with(ns, tenant, settings, true).await
    }

    /// [`ControllerEnv::start`], with the emulator's state kept in memory when `persist_state`
    /// is off (benchmarks: rewriting the state file per change is O(credentials) each).
    pub async fn start_with(ns: &TestNs, tenant: Value, settings: Value, persist_state: bool) -> Self {
        install_crds(ns).await;
        let dir = tempfile::Builder::new().prefix("wif-e2e-ctl-").tempdir().unwrap();
        let state = dir.path().join("emulator");
        std::fs::create_dir_all(&state).unwrap();
        if let Some(key) = signing_key_slot().lock().unwrap().as_ref() {
            std::fs::write(state.join("signing-key.pem"), key).unwrap();
        }
        let mut tenant = tenant;
        tenant["id"] = json!(TENANT);
        let apps = tenant["applications"].as_array().cloned().unwrap_or_default();
        let mut all_apps = vec![json!({
            "displayName": "wif-controller", "appId": CONTROLLER_APP,
            "federatedIdentityCredentials": [{
                "name": "wif-controller", "issuer": ns.cp.issuer,
                "subject": format!("system:serviceaccount:{}:{CONTROLLER_SA}", ns.name)}]})];
        all_apps.extend(apps);
        tenant["applications"] = json!(all_apps);
        let config: Config = serde_json::from_value(json!({"tenants": [tenant], "settings": settings}))
            .expect("emulator config");
        let mut emulator = EmulatorConfig::new(&state)
            .with_config(config)
            .trust_ca_pem(ns.cp.ca_pem());
        emulator.persist_state = persist_state;
        let entra = Emulator::start(emulator).await.expect("start emulator");
        remember_signing_key(&state);
        ns.service_account(CONTROLLER_SA, &[]).await;
        let token = service_account_token(ns, CONTROLLER_SA, Duration::from_secs(3600)).await;
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).unwrap();
        let ca_file = dir.path().join("emulator-ca.pem");
        std::fs::write(&ca_file, entra.ca_pem()).unwrap();
        Self {
            entra,
            token_file,
            ca_file,
            dir,
        }
    }

    /// The emulator's directory (JSON).
    pub async fn state(&self) -> Value {
        self.entra.admin().state().await.expect("emulator state")
    }

    /// Credentials of application `app_id`.
    pub async fn app_credentials(&self, app_id: &str) -> Vec<Value> {
        let state = self.state().await;
        state["tenants"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| t["applications"].as_array().cloned().unwrap_or_default())
            .find(|a| a["appId"] == app_id)
            .and_then(|a| a["credentials"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Credentials of managed identity `name` (in [`SUBSCRIPTION`], any group).
    pub async fn identity_credentials(&self, name: &str) -> Vec<Value> {
        let state = self.state().await;
        state["tenants"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|t| t["identities"].as_array().cloned().unwrap_or_default())
            .find(|i| i["name"] == name)
            .and_then(|i| i["credentials"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Object id of application `app_id`.
    pub async fn app_object_id(&self, app_id: &str) -> String {
        let state = self.state().await;
        state["tenants"][0]["applications"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["appId"] == app_id)
            .and_then(|a| a["id"].as_str())
            .unwrap()
            .to_owned()
    }

    /// A Graph or ARM call as someone else (an operator with the portal): `path` is appended
    /// to the Graph (`/graph/v1.0…`) or ARM (`/arm/…`) base.
    pub async fn out_of_band(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let resource = if path.starts_with("/graph") {
            "https://graph.microsoft.com"
        } else {
            "https://management.azure.com"
        };
        let token = self
            .entra
            .admin()
            .mint_token(TENANT, CONTROLLER_APP, resource)
            .await
            .unwrap();
        let mut request = self
            .entra
            .http_client()
            .unwrap()
            .request(method, format!("{}{path}", self.entra.base_url()))
            .bearer_auth(token);
        if let Some(b) = body {
            request = request.json(&b);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// How to start a controller.
#[derive(Clone, Debug)]
pub struct ControllerOptions {
    /// `--leader-identity` (a restart with the same identity re-takes its Lease at once).
    pub identity: String,
    /// `--resync-interval`.
    pub resync: String,
    /// `--verify-token-exchange`.
    pub verify: bool,
    /// Flags with values that replace the harness's (or add to them): `("--concurrency", "64")`.
    pub overrides: Vec<(&'static str, String)>,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        Self {
            identity: "e2e-controller-a".into(),
            resync: "3s".into(),
            verify: false,
            overrides: Vec::new(),
        }
    }
}

/// A running `wif controller`, watching one test namespace.
pub struct ControllerProcess {
    /// The process (killed on drop).
    pub process: ChildGuard,
    /// Plain-HTTP admin port.
    pub admin_port: u16,
    /// Log file.
    pub log: PathBuf,
}

/// The cluster identity the e2e controllers use for `ns` (so tests can compute default names).
pub fn cluster_id(ns: &TestNs) -> String {
    format!("e2e-{}", ns.name)
}

impl ControllerProcess {
    /// Starts the controller; does not wait for it.
    pub fn spawn(ns: &TestNs, env: &ControllerEnv, opts: &ControllerOptions) -> Self {
        let log = tempfile::Builder::new()
            .prefix(&format!("controller-{}-", opts.identity))
            .suffix(".log")
            .tempfile_in(env.dir.path())
            .unwrap()
            .into_temp_path()
            .keep()
            .unwrap();
        let flags: Vec<(&str, String)> = vec![
            ("--tenant-id", TENANT.into()),
            ("--client-id", CONTROLLER_APP.into()),
            ("--token-file", env.token_file.display().to_string()),
            ("--authority-host", env.entra.authority_host()),
            ("--graph-url", env.entra.graph_url()),
            ("--arm-url", env.entra.arm_url()),
            ("--trust-ca", env.ca_file.display().to_string()),
            ("--cluster-id", cluster_id(ns)),
            ("--watch-namespace", ns.name.clone()),
            ("--resync-interval", opts.resync.clone()),
            ("--resync-jitter", "200ms".into()),
            ("--readback-count", "2".into()),
            ("--readback-interval", "100ms".into()),
            ("--backoff-base", "200ms".into()),
            ("--backoff-max", "3s".into()),
            ("--azure-retry-base", "50ms".into()),
            ("--azure-retry-max", "2s".into()),
            ("--azure-max-attempts", "8".into()),
            ("--lease-namespace", ns.name.clone()),
            ("--lease-name", "wif-controller".into()),
            ("--leader-identity", opts.identity.clone()),
            ("--lease-duration", "4s".into()),
            ("--renew-deadline", "3s".into()),
            ("--retry-period", "500ms".into()),
            ("--admin-listen", "127.0.0.1:0".into()),
            ("--log-level", "info,wif_controller=debug".into()),
            ("--log-format", "text".into()),
        ];
        let mut cmd = std::process::Command::new(wif_bin());
        cmd.arg("controller");
        // A namespace selector replaces the one watched namespace (the flags conflict).
        let selector = opts
            .overrides
            .iter()
            .any(|(f, _)| *f == "--watch-namespace-selector");
        for (flag, value) in flags
            .iter()
            .filter(|(f, _)| !(selector && *f == "--watch-namespace"))
        {
            let value = opts
                .overrides
                .iter()
                .find(|(f, _)| f == flag)
                .map_or(value, |(_, v)| v);
            cmd.args([flag, value.as_str()]);
        }
        for (flag, value) in opts
            .overrides
            .iter()
            .filter(|(f, _)| !flags.iter().any(|(g, _)| g == f))
        {
            cmd.args([flag, value.as_str()]);
        }
        if opts.verify {
            cmd.arg("--verify-token-exchange");
        }
        let child = cmd
            .env("KUBECONFIG", &ns.cp.kubeconfig)
            .env_remove("AZURE_TENANT_ID")
            .env_remove("AZURE_CLIENT_ID")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start wif controller");
        let mut process = ChildGuard {
            child,
            name: format!("wif controller {}", opts.identity),
        };
        let admin_port = process.wait_listening(&log, "admin server listening", &["admin"])[0].port();
        Self {
            process,
            admin_port,
            log,
        }
    }

    /// Starts the controller and waits until `/readyz` answers 200.
    pub async fn start(ns: &TestNs, env: &ControllerEnv, opts: &ControllerOptions) -> Self {
        let mut c = Self::spawn(ns, env, opts);
        c.wait_ready().await;
        c
    }

    /// Waits for `/readyz`.
    pub async fn wait_ready(&mut self) {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        for _ in 0..300 {
            if self.process.exited() {
                panic!("wif controller exited:\n{}", self.logs());
            }
            if let Ok(r) = client.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("wif controller not ready after 30 s:\n{}", self.logs());
    }

    /// `/metrics` text ("" if unreachable).
    pub async fn metrics(&self) -> String {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        match client
            .get(format!("http://127.0.0.1:{}/metrics", self.admin_port))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Sum of a metric's samples whose label set contains every `labels` pair.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }

    /// Azure write requests answered 2xx (POST, PUT, PATCH, DELETE).
    pub async fn azure_writes(&self) -> f64 {
        azure_writes(&self.metrics().await)
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
    }

    /// Tail of the log.
    pub fn logs(&self) -> String {
        tail(&self.log, 60)
    }
}

/// Sum of `name` samples (OpenMetrics text) whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Successful Azure writes in a metrics text.
pub fn azure_writes(text: &str) -> f64 {
    ["POST", "PUT", "PATCH", "DELETE"]
        .iter()
        .map(|m| {
            ["200", "201", "204"]
                .iter()
                .map(|s| {
                    metric_sum(
                        text,
                        "wif_controller_azure_requests_total",
                        &[("method", m), ("status", s)],
                    )
                })
                .sum::<f64>()
        })
        .sum()
}

/// A cluster-scoped policy granting `ns` the given identities; deleted on drop.
pub struct PolicyGuard {
    /// Its name.
    pub name: String,
    kubeconfig: PathBuf,
}

impl PolicyGuard {
    /// Creates `e2e-<ns>` (or `e2e-<ns>-<suffix>`) selecting `ns` by its name label.
    pub async fn grant(ns: &TestNs, suffix: &str, applications: &[&str], identities: &[&str]) -> Self {
        let name = if suffix.is_empty() {
            format!("e2e-{}", ns.name)
        } else {
            format!("e2e-{}-{suffix}", ns.name)
        };
        let policy: FederatedIdentityPolicy = serde_json::from_value(json!({
            "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityPolicy",
            "metadata": {"name": name, "labels": {"wif-e2e/namespace": ns.name}},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}},
                "applications": applications,
                "userAssignedIdentities": identities,
            }
        }))
        .unwrap();
        Api::<FederatedIdentityPolicy>::all(ns.client.clone())
            .create(&PostParams::default(), &policy)
            .await
            .expect("create policy");
        Self {
            name,
            kubeconfig: ns.cp.kubeconfig.clone(),
        }
    }

    /// Deletes it now.
    pub async fn revoke(&self, ns: &TestNs) {
        let _ = Api::<FederatedIdentityPolicy>::all(ns.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await;
    }
}

impl Drop for PolicyGuard {
    fn drop(&mut self) {
        crate::cluster::delete_quietly(&self.kubeconfig, "federatedidentitypolicy", &self.name);
    }
}

/// A binding of `sa` to `identity` (the `spec.identity` object), plus `extra` spec fields.
pub fn binding(name: &str, sa: &str, identity: Value, extra: Value) -> FederatedIdentityBinding {
    let mut spec = json!({"serviceAccountName": sa, "identity": identity});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::from_value(json!({
        "apiVersion": "azure.workload.identity/v1alpha1", "kind": "FederatedIdentityBinding",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

/// The resource id of seeded identity `name`.
pub fn identity_id(name: &str) -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/e2e/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
    )
}

/// The condition `kind` of a binding: (status, reason, message).
pub fn condition(b: &FederatedIdentityBinding, kind: &str) -> Option<(String, String, String)> {
    b.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Polls binding `name` until `pred` holds; panics with its status (and `context`) after
/// `timeout`.
pub async fn wait_binding(
    ns: &TestNs,
    name: &str,
    timeout: Duration,
    context: impl Fn() -> String,
    pred: impl Fn(&FederatedIdentityBinding) -> bool,
) -> FederatedIdentityBinding {
    let api: Api<FederatedIdentityBinding> = ns.api();
    let deadline = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < deadline {
        if let Ok(b) = api.get(name).await {
            if pred(&b) {
                return b;
            }
            last = Some(b);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    panic!(
        "binding {}/{name} did not reach the expected state in {timeout:?}; last status: {}\n{}",
        ns.name,
        serde_json::to_string_pretty(&last.and_then(|b| b.status)).unwrap_or_default(),
        context()
    );
}

/// Whether a binding is Ready=True for its current generation.
pub fn is_ready(b: &FederatedIdentityBinding) -> bool {
    b.status.as_ref().is_some_and(|s| {
        s.observed_generation == b.metadata.generation
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Polls until `f` returns `Some`, up to `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}
