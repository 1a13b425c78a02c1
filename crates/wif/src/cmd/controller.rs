//! `wif controller`

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;
use wif_api::Cloud;
use wif_controller::{
    AzureEndpoints, ControllerConfig, CredentialConfig, PropagationConfig, azure::RetryConfig,
    leader::LeaderConfig,
};

use crate::logging::LogArgs;

/// Flags of `wif controller`.
#[derive(Debug, Args)]
pub(crate) struct ControllerArgs {
    #[command(flatten)]
    identity: IdentityArgs,
    #[command(flatten)]
    azure: AzureArgs,
    #[command(flatten)]
    reconcile: ReconcileArgs,
    #[command(flatten)]
    propagation: PropagationArgs,
    #[command(flatten)]
    leader: LeaderArgs,
    /// Plain-HTTP address of /healthz, /readyz and /metrics.
    #[arg(long, env = "WIF_ADMIN_LISTEN", default_value = "0.0.0.0:9441")]
    admin_listen: SocketAddr,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    unmutated: super::unmutated::UnmutatedArgs,
}

/// The controller's own Entra identity.
#[derive(Debug, Args)]
struct IdentityArgs {
    /// Tenant of the controller's own identity, and of bindings that name none.
    #[arg(long, env = "AZURE_TENANT_ID")]
    tenant_id: String,
    /// Client id of the controller's own identity (an application or managed identity allowed
    /// to write federated credentials).
    #[arg(long, env = "AZURE_CLIENT_ID")]
    client_id: String,
    /// The controller's projected ServiceAccount token (its own workload identity).
    #[arg(long, env = "AZURE_FEDERATED_TOKEN_FILE", default_value = wif_api::TOKEN_FILE_PATH)]
    token_file: PathBuf,
    /// Other tenants bindings may name (`*` for any), comma-separated.
    #[arg(long, env = "AZURE_ADDITIONALLY_ALLOWED_TENANTS", value_delimiter = ',')]
    additionally_allowed_tenants: Vec<String>,
}

/// Which Entra, Graph and ARM the controller calls, and how.
#[derive(Debug, Args)]
struct AzureArgs {
    /// Azure cloud: AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud (case-insensitive).
    #[arg(long, env = "AZURE_ENVIRONMENT", default_value = "AzurePublicCloud")]
    cloud: String,
    /// Entra authority host (default: the cloud's).
    #[arg(long, env = "AZURE_AUTHORITY_HOST")]
    authority_host: Option<String>,
    /// Microsoft Graph endpoint, without version (default: the cloud's).
    #[arg(long, env = "WIF_GRAPH_URL")]
    graph_url: Option<String>,
    /// ARM endpoint (default: the cloud's).
    #[arg(long, env = "WIF_ARM_URL")]
    arm_url: Option<String>,
    /// Scope of Graph tokens (default: `<cloud Graph>/.default`).
    #[arg(long, env = "WIF_GRAPH_SCOPE")]
    graph_scope: Option<String>,
    /// Scope of ARM tokens (default: `<cloud ARM>/.default`).
    #[arg(long, env = "WIF_ARM_SCOPE")]
    arm_scope: Option<String>,
    /// Extra CA bundle (PEM) trusted for Graph, ARM and the authority. Repeatable.
    #[arg(long = "trust-ca", env = "WIF_TRUST_CA", value_delimiter = ',')]
    trust_ca: Vec<PathBuf>,
    /// Attempts per Graph/ARM call (429, 5xx and concurrent-write 409 are retried).
    #[arg(long, default_value_t = 6)]
    azure_max_attempts: u32,
    /// Base delay of Graph/ARM retries (raised to `Retry-After`).
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    azure_retry_base: Duration,
    /// Largest delay of one Graph/ARM retry.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    azure_retry_max: Duration,
    /// Timeout of one Graph/ARM request.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    azure_timeout: Duration,
}

/// What the controller reconciles, and how often.
#[derive(Debug, Args)]
struct ReconcileArgs {
    /// Service-account issuer (default: discovered from the API server, byte for byte).
    #[arg(long, env = "WIF_ISSUER")]
    issuer: Option<String>,
    /// Cluster identity in ownership markers and default credential names (default: the uid
    /// of namespace kube-system).
    #[arg(long, env = "WIF_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Audience of credentials whose binding names none (default: the cloud's token-exchange
    /// audience).
    #[arg(long, env = "WIF_AUDIENCE")]
    audience: Option<String>,
    /// Reconcile bindings of this namespace only (default: all namespaces).
    #[arg(long, env = "WIF_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Reconcile bindings only in namespaces whose labels match this label selector (for
    /// example `team=payments` or `wif.example/managed`); bindings elsewhere are left alone.
    #[arg(
        long,
        env = "WIF_WATCH_NAMESPACE_SELECTOR",
        conflicts_with = "watch_namespace"
    )]
    watch_namespace_selector: Option<String>,
    /// Periodic resync (drift correction) interval.
    #[arg(long, env = "WIF_RESYNC_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    resync_interval: Duration,
    /// Random spread added to each binding's resync.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    resync_jitter: Duration,
    /// Parallel reconciles.
    #[arg(long, env = "WIF_CONCURRENCY", default_value_t = 32)]
    concurrency: u16,
    /// Federated credentials one identity may hold (Entra's limit).
    #[arg(long, default_value_t = 20)]
    max_credentials_per_identity: usize,
    /// First delay of the per-binding retry backoff.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    backoff_base: Duration,
    /// Largest delay of the per-binding retry backoff.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    backoff_max: Duration,
}

/// When a written credential counts as propagated.
#[derive(Debug, Args)]
struct PropagationArgs {
    /// Consecutive consistent reads of a written credential before `Propagated`.
    #[arg(long, default_value_t = 3)]
    readback_count: u32,
    /// Pause between those reads.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    readback_interval: Duration,
    /// Also exchange a real token of the bound ServiceAccount before `Propagated=True`.
    #[arg(long, env = "WIF_VERIFY_TOKEN_EXCHANGE")]
    verify_token_exchange: bool,
    /// Scope of the verification exchange.
    #[arg(long, default_value = "https://graph.microsoft.com/.default")]
    verify_scope: String,
}

/// Leader election through a Lease.
#[derive(Debug, Args)]
struct LeaderArgs {
    /// Elect a leader through a Lease (only the leader writes).
    #[arg(long, env = "WIF_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    leader_elect: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "wif-system")]
    lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "wif-controller")]
    lease_name: String,
    /// This replica's identity in the Lease (default: POD_NAME or the host name, plus a random
    /// suffix).
    #[arg(long, env = "WIF_LEADER_IDENTITY")]
    leader_identity: Option<String>,
    /// Lease duration.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease_duration: Duration,
    /// How long the leader acts without renewing.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    renew_deadline: Duration,
    /// Pause between Lease attempts.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    retry_period: Duration,
}

impl From<IdentityArgs> for CredentialConfig {
    fn from(args: IdentityArgs) -> Self {
        let IdentityArgs {
            tenant_id,
            client_id,
            token_file,
            additionally_allowed_tenants,
        } = args;
        Self {
            tenant_id,
            client_id,
            token_file,
            additionally_allowed_tenants: additionally_allowed_tenants
                .into_iter()
                .flat_map(|t| t.split(';').map(str::trim).map(str::to_owned).collect::<Vec<_>>())
                .filter(|t| !t.is_empty())
                .collect(),
        }
    }
}

impl TryFrom<AzureArgs> for AzureEndpoints {
    type Error = anyhow::Error;

    /// The cloud's endpoints with the overrides; reads the `--trust-ca` files.
    fn try_from(args: AzureArgs) -> anyhow::Result<Self> {
        let AzureArgs {
            cloud,
            authority_host,
            graph_url,
            arm_url,
            graph_scope,
            arm_scope,
            trust_ca,
            azure_max_attempts,
            azure_retry_base,
            azure_retry_max,
            azure_timeout,
        } = args;
        let cloud: Cloud = cloud.parse().context("invalid --cloud")?;
        let mut azure = AzureEndpoints::for_cloud(cloud);
        if let Some(a) = authority_host {
            azure.authority_host = a;
        }
        if let Some(g) = graph_url {
            azure.graph_endpoint = g;
        }
        if let Some(a) = arm_url {
            azure.arm_endpoint = a;
        }
        if let Some(s) = graph_scope {
            azure.graph_scope = s;
        }
        if let Some(s) = arm_scope {
            azure.arm_scope = s;
        }
        for path in trust_ca {
            let pem = std::fs::read(&path)
                .with_context(|| format!("failed to read --trust-ca {}", path.display()))?;
            azure.extra_ca_pems.push((path.display().to_string(), pem));
        }
        azure.retry = RetryConfig {
            max_attempts: azure_max_attempts.max(1),
            base_delay: azure_retry_base,
            max_delay: azure_retry_max,
        };
        azure.request_timeout = azure_timeout;
        Ok(azure)
    }
}

impl From<PropagationArgs> for PropagationConfig {
    fn from(args: PropagationArgs) -> Self {
        let PropagationArgs {
            readback_count,
            readback_interval,
            verify_token_exchange,
            verify_scope,
        } = args;
        Self {
            readback_count,
            readback_interval,
            verify_token_exchange,
            verify_scope,
        }
    }
}

impl LeaderArgs {
    /// The Lease settings; `None` with `--leader-elect=false`.
    fn config(self) -> Option<LeaderConfig> {
        let LeaderArgs {
            leader_elect,
            lease_namespace,
            lease_name,
            leader_identity,
            lease_duration,
            renew_deadline,
            retry_period,
        } = self;
        leader_elect.then(|| LeaderConfig {
            namespace: lease_namespace,
            name: lease_name,
            identity: leader_identity.unwrap_or_else(default_identity),
            lease_duration,
            renew_deadline,
            retry_period,
        })
    }
}

impl TryFrom<ControllerArgs> for ControllerConfig {
    type Error = anyhow::Error;

    fn try_from(args: ControllerArgs) -> anyhow::Result<Self> {
        let ControllerArgs {
            identity,
            azure,
            reconcile,
            propagation,
            leader,
            admin_listen,
            log: _,
            unmutated,
        } = args;
        let ReconcileArgs {
            issuer,
            cluster_id,
            audience,
            watch_namespace,
            watch_namespace_selector,
            resync_interval,
            resync_jitter,
            concurrency,
            max_credentials_per_identity,
            backoff_base,
            backoff_max,
        } = reconcile;
        let azure = AzureEndpoints::try_from(azure)?;
        let mut cfg = ControllerConfig::new(identity.into(), azure.cloud);
        cfg.azure = azure;
        cfg.issuer = issuer;
        cfg.cluster_id = cluster_id;
        cfg.default_audience = audience;
        cfg.watch_namespace = watch_namespace;
        cfg.watch_namespace_selector = watch_namespace_selector;
        cfg.resync_interval = resync_interval;
        cfg.resync_jitter = resync_jitter;
        cfg.concurrency = concurrency;
        cfg.max_credentials_per_identity = max_credentials_per_identity;
        cfg.backoff_base = backoff_base;
        cfg.backoff_max = backoff_max;
        cfg.propagation = propagation.into();
        cfg.leader = leader.config();
        cfg.admin_listen = admin_listen;
        cfg.unmutated = unmutated.config();
        Ok(cfg)
    }
}

fn default_identity() -> String {
    let base = std::env::var("POD_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "wif-controller".to_owned());
    format!("{base}_{:08x}", rand_suffix())
}

fn rand_suffix() -> u32 {
    // Unique enough per process: the PID and the start time.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

/// Runs the controller until SIGTERM/SIGINT.
pub(crate) async fn run(args: ControllerArgs) -> anyhow::Result<()> {
    args.log.init();
    let cfg = ControllerConfig::try_from(args)?;
    let (client, stop) = super::client_and_stop().await?;
    wif_controller::run(cfg, client, stop).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(argv: &[&str]) -> anyhow::Result<ControllerConfig> {
        // The required flags (and a fixed cloud, whatever AZURE_ENVIRONMENT says), unless given.
        crate::cmd::testing::config::<ControllerArgs, _>(
            "controller",
            &[
                ("--tenant-id", "t"),
                ("--client-id", "c"),
                ("--cloud", "AzurePublicCloud"),
            ],
            argv,
        )
    }

    #[test]
    fn each_flag_group_lands_in_its_config() {
        let cfg = config(&[
            "--additionally-allowed-tenants",
            "a;b, ,c",
            "--graph-url",
            "https://graph.test",
            "--azure-max-attempts",
            "0",
            "--watch-namespace",
            "team",
            "--readback-count",
            "5",
            "--verify-token-exchange",
            "--lease-name",
            "mine",
            "--leader-identity",
            "me",
            "--recycle-unmutated",
        ])
        .expect("valid");
        assert_eq!(cfg.credential.tenant_id, "t");
        assert_eq!(cfg.credential.additionally_allowed_tenants, ["a", "b", "c"]);
        assert_eq!(cfg.azure.graph_endpoint, "https://graph.test");
        assert_eq!(cfg.azure.retry.max_attempts, 1, "at least one attempt");
        assert_eq!(cfg.watch_namespace.as_deref(), Some("team"));
        assert_eq!(cfg.propagation.readback_count, 5);
        assert!(cfg.propagation.verify_token_exchange);
        let leader = cfg.leader.expect("leader election is on by default");
        assert_eq!((leader.name.as_str(), leader.identity.as_str()), ("mine", "me"));
        assert!(cfg.unmutated.recycle);
    }

    #[test]
    fn leader_election_can_be_off_and_bad_values_are_named() {
        assert_eq!(config(&["--leader-elect=false"]).expect("valid").leader, None);
        let err = config(&["--cloud", "Mars"]).expect_err("unknown cloud");
        assert!(format!("{err:#}").contains("--cloud"), "{err:#}");
        let err = config(&["--trust-ca", "/nonexistent/ca.pem"]).expect_err("missing file");
        assert!(
            format!("{err:#}").contains("--trust-ca /nonexistent/ca.pem"),
            "{err:#}"
        );
    }
}
