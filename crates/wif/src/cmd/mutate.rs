//! `wif mutate`: the webhook's decision for one pod, offline.

use std::{io::Read, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, ValueEnum};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use serde::de::DeserializeOwned;
use wif_api::{AuthorityHost, MutationConfig};

/// Output format of `wif mutate`.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum Output {
    /// The mutated pod as YAML.
    Yaml,
    /// The mutated pod as JSON.
    Json,
    /// The RFC 6902 JSON patch the webhook would return.
    Patch,
}

/// Flags of `wif mutate`.
#[derive(Debug, Args)]
pub(crate) struct MutateArgs {
    /// Pod manifest, YAML or JSON (`-` for stdin).
    #[arg(long)]
    pod: PathBuf,
    /// ServiceAccount manifest, YAML or JSON (`-` for stdin).
    #[arg(long)]
    service_account: PathBuf,
    /// Namespace of the pod, when the manifest has none.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Tenant used when the ServiceAccount has no tenant-id annotation.
    #[arg(long, env = "AZURE_TENANT_ID", default_value = "")]
    tenant_id: String,
    /// Azure cloud name or https:// authority URL.
    #[arg(long, env = "AZURE_ENVIRONMENT", default_value = "AzurePublicCloud")]
    cloud: String,
    /// The install's token audience (the webhook's --audience), used when neither the pod nor
    /// the ServiceAccount has an azure.workload.identity/audience annotation.
    #[arg(long, default_value = wif_api::DEFAULT_AUDIENCE)]
    audience: String,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    output: Output,
}

/// Prints the mutated pod (or patch); warnings to stderr; a refusal exits 1.
pub(crate) fn run(args: MutateArgs) -> ExitCode {
    match mutate(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn mutate(args: MutateArgs) -> anyhow::Result<ExitCode> {
    let MutateArgs {
        pod,
        service_account,
        namespace,
        tenant_id,
        cloud,
        audience,
        output,
    } = args;
    anyhow::ensure!(
        !(pod.as_os_str() == "-" && service_account.as_os_str() == "-"),
        "only one of --pod and --service-account can be read from stdin"
    );
    let mut pod: Pod = read_manifest(&pod, "Pod")?;
    let mut sa: ServiceAccount = read_manifest(&service_account, "ServiceAccount")?;
    let namespace = namespace
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    pod.metadata.namespace = Some(namespace.clone());
    sa.metadata.namespace.get_or_insert(namespace);
    let cfg = MutationConfig {
        tenant_id,
        authority_host: AuthorityHost::parse(&cloud).context("invalid --cloud")?,
        audience,
    };
    let mutation = match wif_webhook::mutate(&pod, &sa.metadata, &cfg) {
        Ok(m) => m,
        Err(denial) => {
            eprintln!("denied: {denial}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for warning in &mutation.warnings {
        eprintln!("warning: {warning}");
    }
    let text = match output {
        Output::Patch => serde_json::to_string_pretty(&mutation.patch()?)?,
        Output::Json => {
            mutation.apply(&mut pod);
            serde_json::to_string_pretty(&pod)?
        }
        Output::Yaml => {
            mutation.apply(&mut pod);
            serde_saphyr::to_string(&pod).context("failed to encode the pod as YAML")?
        }
    };
    println!("{}", text.trim_end());
    Ok(ExitCode::SUCCESS)
}

fn read_manifest<T: DeserializeOwned>(path: &std::path::Path, kind: &str) -> anyhow::Result<T> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("failed to read stdin")?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))?;
    }
    let value: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?
    } else {
        serde_saphyr::from_str(&text).with_context(|| format!("{} is not valid YAML", path.display()))?
    };
    let found = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
    anyhow::ensure!(
        found.is_empty() || found == kind,
        "{} holds a {found}, expected a {kind}",
        path.display()
    );
    serde_json::from_value(value).with_context(|| format!("{} is not a valid {kind}", path.display()))
}
