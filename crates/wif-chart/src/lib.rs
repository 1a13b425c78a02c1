//! The wif Helm chart under test: `helm`, built from its Go module at the pinned version
//! (`scripts/install-helm.sh`, cached in `.cache/bin`), run with its own directories, and the
//! chart's rendered objects. `tests/render.rs` renders, lints and schema-checks the chart without
//! a cluster; the end-to-end tests (`e2e/`) install it on the test control plane.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test helper: a panic is the report

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use serde_json::Value;

/// Path of a workspace-relative file.
pub fn workspace_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(rel)
}

/// The helm binary: `$WIF_HELM`, else the one `scripts/install-helm.sh` builds (once).
pub(crate) fn helm_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("WIF_HELM") {
            return Ok(p.into());
        }
        let script = workspace_path("scripts/install-helm.sh");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!("{} failed ({})", script.display(), out.status));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .last()
            .map(|l| PathBuf::from(l.trim()))
            .ok_or_else(|| "install-helm.sh printed no path".to_owned())
    })
    .clone()
    .unwrap_or_else(|e| panic!("helm is not available: {e}"))
}

/// The chart under test.
pub fn chart() -> PathBuf {
    workspace_path("charts/wif")
}

/// The result of one helm run.
#[derive(Debug)]
pub struct Run {
    /// Exit status was 0.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(out: Output) -> Self {
        Self {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Panics with helm's output unless it succeeded.
    #[track_caller]
    pub fn success(self) -> Self {
        assert!(self.ok, "helm failed:\n{}\n{}", self.stdout, self.stderr);
        self
    }
}

/// helm with its own config, cache and data directories (nothing written to `$HOME`), and, when
/// a control plane is given, its admin kubeconfig.
pub struct Helm {
    kubeconfig: Option<PathBuf>,
    home: tempfile::TempDir,
}

impl Helm {
    /// helm for rendering only (`lint`, `template`).
    pub fn offline() -> Self {
        Self {
            kubeconfig: None,
            home: tempfile::Builder::new()
                .prefix("wif-e2e-helm-")
                .tempdir()
                .unwrap(),
        }
    }

    /// helm against the cluster of `kubeconfig`.
    pub fn with_kubeconfig(kubeconfig: PathBuf) -> Self {
        Self {
            kubeconfig: Some(kubeconfig),
            ..Self::offline()
        }
    }

    /// Runs `helm <args>`.
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut cmd = Command::new(helm_bin());
        cmd.args(args)
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_DATA_HOME", self.home.path().join("data"))
            .stdin(Stdio::null());
        match &self.kubeconfig {
            Some(k) => cmd.env("KUBECONFIG", k),
            // Rendering must not depend on any cluster.
            None => cmd.env("KUBECONFIG", self.home.path().join("no-kubeconfig")),
        };
        cmd.output().expect("run helm").into()
    }

    /// `helm template <release> charts/wif -n <ns> <args>`: the rendered objects.
    #[track_caller]
    pub fn template(&self, release: &str, ns: &str, args: &[&str]) -> Vec<Value> {
        let chart = chart();
        let mut all = vec!["template", release, path_str(&chart), "--namespace", ns];
        all.extend_from_slice(args);
        objects(&self.run(all).success().stdout)
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The objects of a multi-document YAML stream (comments and empty documents dropped).
pub fn objects(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(yaml)
        .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{yaml}"))
        .into_iter()
        .filter(|v| v.get("kind").is_some())
        .collect()
}

/// The object of `kind` named `name`.
#[track_caller]
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| {
            let have: Vec<String> = objects
                .iter()
                .map(|o| format!("{}/{}", o["kind"].as_str().unwrap_or("?"), o["metadata"]["name"]))
                .collect();
            panic!("no {kind} {name} among {have:?}")
        })
}

/// `kind/name` of every object, sorted.
pub fn kinds(objects: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = objects
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["kind"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    v.sort();
    v
}

/// `--set a --set b …` of `args`.
pub fn set(args: &[&str]) -> Vec<String> {
    args.iter()
        .flat_map(|a| ["--set".to_owned(), (*a).to_owned()])
        .collect()
}

/// The `&str`s of `v`.
pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The arguments of the first container of a Deployment.
pub fn container_args(deploy: &Value) -> Vec<String> {
    deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}
