//! The control plane, started once per test process, and a namespace per test.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock, mpsc},
    time::Duration,
};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api, Client, Config,
    api::{ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::{process::ChildGuard, tail, workspace_path};

/// A running (or reused) control plane.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ControlPlane {
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:N`.
    pub server: String,
    /// The service-account issuer, as in its discovery document.
    pub issuer: String,
    /// PEM CA of the API server.
    pub ca: PathBuf,
    /// Working directory (logs).
    pub dir: PathBuf,
    /// With `up --node`: the node's name.
    #[serde(default)]
    pub node: Option<String>,
    /// With `up --node`: the pod network (CIDR).
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// With `up --node`: the host's address on the pod network (where pods reach this machine).
    #[serde(default)]
    pub gateway: Option<String>,
}

/// Keeps the control plane's stdin open for the life of the test process: when the process
/// ends, however it ends, the pipe closes and the control plane shuts itself down.
struct Owned {
    _stdin: ChildStdin,
    _guard: ChildGuard,
    _dir: tempfile::TempDir,
}

static CONTROL_PLANE: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
static OWNED: Mutex<Vec<Owned>> = Mutex::new(Vec::new());

/// The control plane for this test process: `$WIF_E2E_CONTROLPLANE` (the READY JSON of one
/// started by the caller) if set, else one started now. Panics with the logs if it cannot start.
pub fn control_plane() -> ControlPlane {
    crate::init();
    CONTROL_PLANE
        .get_or_init(|| {
            if let Ok(json) = std::env::var("WIF_E2E_CONTROLPLANE") {
                return serde_json::from_str(&json)
                    .map_err(|e| format!("WIF_E2E_CONTROLPLANE is not READY JSON: {e}"));
            }
            binary()
                .and_then(|bin| start(&bin, &[]))
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .unwrap_or_else(|e| panic!("the test control plane is not available: {e}"))
}

/// A control plane of the calling test alone (for cluster-wide objects other tests must not
/// see), started with `extra` arguments; it lives until this process exits.
pub fn private_control_plane(extra: &[&str]) -> ControlPlane {
    crate::init();
    binary()
        .and_then(|bin| start(&bin, extra))
        .unwrap_or_else(|e| panic!("a private control plane did not start: {e:#}"))
}

/// The control plane binary: `$WIF_CONTROLPLANE_BIN`, else built (or found cached) by build.sh.
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Ok(bin) = std::env::var("WIF_CONTROLPLANE_BIN") {
        return Ok(bin.into());
    }
    let script = workspace_path("e2e/controlplane/build.sh");
    eprintln!(
        "e2e: building the control plane with {} (cached after the first time)",
        script.display()
    );
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run build.sh")?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().context("build.sh printed no binary path")?;
    Ok(last.trim().into())
}

/// Starts `bin up` with `extra` arguments and waits for READY; on failure (exit, or not ready
/// within 60 s) the error carries the tails of the control plane's, API server's and etcd's logs
/// (and containerd's and the kubelet's with `--node`).
/// The control plane lives until this process exits.
pub fn start(bin: &std::path::Path, extra: &[&str]) -> anyhow::Result<ControlPlane> {
    start_within(bin, extra, Duration::from_secs(60))
}

/// [`start`] with another bound on readiness.
pub fn start_within(
    bin: &std::path::Path,
    extra: &[&str],
    timeout: Duration,
) -> anyhow::Result<ControlPlane> {
    let dir = tempfile::Builder::new().prefix("wif-e2e-cp-").tempdir()?;
    let log = std::fs::File::create(dir.path().join("controlplane.log"))?;
    let mut child = Command::new(bin)
        .args(["up", "--dir"])
        .arg(dir.path())
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("failed to start {}", bin.display()))?;
    let stdin = child.stdin.take().context("no stdin")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut guard = ChildGuard {
        child,
        name: "controlplane".into(),
    };

    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(json) = line.strip_prefix("READY ") {
                let _ = tx.send(json.to_owned());
            }
        }
    });
    // The bound: a control plane that cannot start fails the run within 60 s.
    let deadline = std::time::Instant::now() + timeout;
    let ready = loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(json) => break json,
            Err(mpsc::RecvTimeoutError::Timeout)
                if std::time::Instant::now() < deadline && !guard.exited() => {}
            Err(reason) => {
                // Its stdout closing means it is exiting: give it a moment to finish, so the
                // report says so (and the log tails are complete).
                if reason == mpsc::RecvTimeoutError::Disconnected {
                    for _ in 0..100 {
                        if guard.exited() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                let why = if guard.exited() {
                    "exited"
                } else {
                    "did not become ready in time"
                };
                let logs = ["controlplane.log", "apiserver.log", "etcd.log"]
                    .iter()
                    .chain(
                        ["node/containerd.log", "node/kubelet.log"]
                            .iter()
                            .filter(|f| dir.path().join(f).exists()),
                    )
                    .map(|f| format!("--- {f} (tail) ---\n{}", tail(&dir.path().join(f), 40)))
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(anyhow!("the control plane {why}\n{logs}"));
            }
        }
    };
    let cp: ControlPlane = serde_json::from_str(&ready).context("bad READY line")?;
    eprintln!("e2e: control plane ready at {} (issuer {})", cp.server, cp.issuer);
    // A test may start a private control plane beside the shared one: keep them all.
    OWNED.lock().map_err(|_| anyhow!("poisoned"))?.push(Owned {
        _stdin: stdin,
        _guard: guard,
        _dir: dir,
    });
    Ok(cp)
}

impl ControlPlane {
    /// An admin client (bound to the calling test's runtime).
    pub async fn client(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("config");
        Client::try_from(cfg).expect("client")
    }

    /// An admin client that does not retry 429/503 (kube's default does, for up to minutes):
    /// for asserting a refusal such as a PodDisruptionBudget's 429 on an eviction.
    pub async fn client_without_retries(&self) -> Client {
        let kc = Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let mut cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("config");
        cfg.default_retry = false;
        Client::try_from(cfg).expect("client")
    }

    /// PEM of the API server's CA.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(&self.ca).expect("ca")
    }

    /// A kubectl command using the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new("kubectl");
        cmd.arg("--kubeconfig").arg(&self.kubeconfig);
        cmd
    }

    /// Runs kubectl with `args` and `input` on its stdin (`-f -`); what it printed and its exit
    /// status, success or not.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = self
            .kubectl()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl");
        child
            .stdin
            .take()
            .expect("kubectl's stdin")
            .write_all(input.as_bytes())
            .expect("write kubectl's stdin");
        child.wait_with_output().expect("kubectl's output")
    }
}

/// Deletes cluster-scoped object `kind/name` with kubectl, whether or not it exists, without
/// waiting and ignoring failures: for `Drop`, which also runs while a test unwinds.
pub fn delete_quietly(kubeconfig: &std::path::Path, kind: &str, name: &str) {
    let _ = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["delete", kind, name, "--ignore-not-found", "--wait=false"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A namespace of one test, deleted when dropped.
pub struct TestNs {
    /// The control plane.
    pub cp: ControlPlane,
    /// Its name.
    pub name: String,
    /// An admin client.
    pub client: Client,
}

impl TestNs {
    /// Creates `e2e-<prefix>-<random>`.
    pub async fn new(prefix: &str) -> Self {
        Self::on(control_plane(), prefix).await
    }

    /// Creates `e2e-<prefix>-<random>` on the given control plane (a private one, or the one
    /// with the node).
    pub async fn on(cp: ControlPlane, prefix: &str) -> Self {
        let client = cp.client().await;
        let name = format!("e2e-{prefix}-{:04x}", rand::random::<u16>());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create namespace");
        Self { cp, name, client }
    }

    /// Typed API in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Creates a ServiceAccount with these annotations.
    pub async fn service_account(&self, name: &str, annotations: &[(&str, &str)]) -> ServiceAccount {
        let sa = ServiceAccount {
            metadata: ObjectMeta {
                name: Some(name.into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).into(), (*v).into()))
                        .collect(),
                ),
                ..ObjectMeta::default()
            },
            ..ServiceAccount::default()
        };
        self.api::<ServiceAccount>()
            .create(&PostParams::default(), &sa)
            .await
            .expect("create ServiceAccount")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = self
            .cp
            .kubectl()
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
