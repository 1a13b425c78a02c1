//! The test node: one control plane with a real node (`controlplane up --node`: containerd, runc,
//! a kubelet, kube-scheduler, a CNI bridge network) per test process, shared by every test that
//! runs pods; images come from `make images` (`$WIF_E2E_IMAGES`, else built on first use).
//!
//! Pods reach this machine only on the pod network's gateway address ([`Node::gateway`]), so
//! anything a pod calls (the emulator) listens there, with that address in its certificate.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::LogParams;
use wif_emulator::{Config, Emulator, EmulatorConfig, Handle};

use crate::{ControlPlane, TestNs, cluster, tail, workspace_path};

/// The control plane with the node.
#[derive(Debug, Clone)]
pub struct Node {
    /// The control plane (its READY line).
    pub cp: ControlPlane,
    /// The Node's name.
    pub name: String,
    /// The host's address on the pod network: where pods reach processes of this machine.
    pub gateway: IpAddr,
}

/// Image references `make images` builds.
pub const TEST_CLIENT_IMAGE: &str = "localhost/wif-e2e/test-client:1";
/// The pause image (`make images`): a container that runs until it is deleted.
pub const PAUSE_IMAGE: &str = "localhost/wif-e2e/pause:1";

static NODE: OnceLock<Result<Node, String>> = OnceLock::new();

/// The node of this test process, started on first use. Panics with the logs if it cannot start.
pub fn node() -> Node {
    crate::init();
    NODE.get_or_init(|| start().map_err(|e| format!("{e:#}")))
        .clone()
        .unwrap_or_else(|e| panic!("the test node is not available: {e}"))
}

fn start() -> anyhow::Result<Node> {
    let bin = cluster::binary()?;
    let images = images_dir()?;
    let images = images.to_str().context("images path is not UTF-8")?;
    let cp = cluster::start(&bin, &["--node", "--images", images])?;
    let name = cp.node.clone().context("the READY line names no node")?;
    let gateway = cp
        .gateway
        .as_deref()
        .context("the READY line has no gateway")?
        .parse()
        .context("gateway")?;
    eprintln!("e2e: node {name} ready, pods reach this machine at {gateway}");
    Ok(Node { cp, name, gateway })
}

/// `$WIF_E2E_IMAGES`, else the directory `scripts/images.sh` (make images) builds.
pub fn images_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("WIF_E2E_IMAGES")
        && !dir.is_empty()
    {
        return Ok(dir.into());
    }
    let script = workspace_path("scripts/images.sh");
    eprintln!("e2e: building the node's images with {}", script.display());
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .context("failed to run scripts/images.sh")?;
    if !out.status.success() {
        bail!("{} failed ({})", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    Ok(stdout
        .lines()
        .last()
        .context("images.sh printed nothing")?
        .trim()
        .into())
}

impl Node {
    /// A namespace of one test on this control plane.
    pub async fn namespace(&self, prefix: &str) -> TestNs {
        TestNs::on(self.cp.clone(), prefix).await
    }

    /// Tail of the kubelet's log.
    pub fn kubelet_log(&self, lines: usize) -> String {
        tail(&self.cp.dir.join("node").join("kubelet.log"), lines)
    }

    /// An emulator listening on the gateway (port 0), trusting the control plane's CA, seeded
    /// with `config` (the emulator's config-file shape, as JSON).
    pub async fn emulator(&self, config: serde_json::Value) -> (Handle, tempfile::TempDir) {
        let dir = tempfile::Builder::new()
            .prefix("wif-e2e-entra-")
            .tempdir()
            .unwrap();
        let config: Config = serde_json::from_value(config).expect("emulator config");
        let handle = Emulator::start(
            EmulatorConfig::new(dir.path())
                .with_config(config)
                .listen(SocketAddr::new(self.gateway, 0))
                .trust_ca_pem(self.cp.ca_pem()),
        )
        .await
        .expect("start emulator on the pod network's gateway");
        (handle, dir)
    }

    /// Waits until `done(pod)` (or a failed pod), else panics with `kubectl describe` and the
    /// kubelet's log tail.
    pub async fn wait_pod(
        &self,
        ns: &TestNs,
        name: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Pod) -> bool,
    ) -> Pod {
        let api = ns.api::<Pod>();
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(pod) = api.get(name).await {
                if done(&pod) {
                    return pod;
                }
                if phase(&pod) == "Failed" {
                    panic!(
                        "pod {}/{name} failed while waiting until {what}\n{}",
                        ns.name,
                        self.report(ns, name).await
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "pod {}/{name} not {what} within {timeout:?}\n{}",
                    ns.name,
                    self.report(ns, name).await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `kubectl describe pod`, every container's log and the kubelet's log tail.
    pub async fn report(&self, ns: &TestNs, name: &str) -> String {
        let describe = self
            .cp
            .kubectl()
            .args(["describe", "pod", "-n", &ns.name, name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr))
            .unwrap_or_else(|e| format!("(kubectl describe: {e})"));
        let mut logs = String::new();
        if let Ok(pod) = ns.api::<Pod>().get(name).await {
            let spec = pod.spec.unwrap_or_default();
            for c in spec
                .init_containers
                .unwrap_or_default()
                .iter()
                .chain(spec.containers.iter())
            {
                logs += &format!(
                    "--- logs of {} ---\n{}\n",
                    c.name,
                    self.logs(ns, name, &c.name).await
                );
            }
        }
        format!(
            "--- kubectl describe pod ---\n{describe}\n{logs}--- kubelet.log (tail) ---\n{}",
            self.kubelet_log(40)
        )
    }

    /// A container's log (an error text if there is none).
    pub async fn logs(&self, ns: &TestNs, pod: &str, container: &str) -> String {
        ns.api::<Pod>()
            .logs(
                pod,
                &LogParams {
                    container: Some(container.into()),
                    ..LogParams::default()
                },
            )
            .await
            .unwrap_or_else(|e| format!("(no logs: {e})"))
    }
}

/// The pod's phase ("" while unknown).
pub fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}
