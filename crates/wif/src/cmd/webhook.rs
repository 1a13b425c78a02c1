//! `wif webhook`

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context;
use clap::{Args, ValueEnum};
use wif_api::{AuthorityHost, MutationConfig};
use wif_webhook::{
    run::{self, CertSource, WebhookConfig},
    selfcert::SelfManaged,
    server::Limits,
};

use crate::logging::LogArgs;

/// Where the serving certificate comes from.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum CertMode {
    /// `--tls-cert-file` and `--tls-key-file`, reloaded when they change (also cert-manager or
    /// an existing Secret mounted as files).
    Files,
    /// The webhook creates and rotates its own CA and certificate in a Secret and patches the
    /// caBundle of its MutatingWebhookConfiguration.
    SelfManaged,
}

/// Flags of `wif webhook`.
#[derive(Debug, Args)]
pub(crate) struct WebhookArgs {
    #[command(flatten)]
    mutation: MutationArgs,
    /// HTTPS address of the admission endpoint.
    #[arg(long, env = "WIF_LISTEN", default_value = "0.0.0.0:9443")]
    listen: SocketAddr,
    /// Plain-HTTP address of /healthz, /readyz and /metrics.
    #[arg(long, env = "WIF_ADMIN_LISTEN", default_value = "0.0.0.0:9440")]
    admin_listen: SocketAddr,
    #[command(flatten)]
    certs: CertArgs,
    #[command(flatten)]
    limits: LimitsArgs,
    /// Timeout of the API read made when a ServiceAccount is not cached yet.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    miss_timeout: Duration,
    #[command(flatten)]
    log: LogArgs,
}

/// What the webhook injects.
#[derive(Debug, Args)]
struct MutationArgs {
    /// Tenant used when a ServiceAccount has no tenant-id annotation.
    #[arg(long, env = "AZURE_TENANT_ID")]
    tenant_id: String,
    /// Azure cloud (AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud; case-insensitive),
    /// or an https:// authority URL.
    #[arg(long, env = "AZURE_ENVIRONMENT", default_value = "AzurePublicCloud")]
    cloud: String,
    /// Audience of the projected token.
    #[arg(long, env = "WIF_AUDIENCE", default_value = wif_api::DEFAULT_AUDIENCE)]
    audience: String,
}

/// Where the serving certificate comes from.
#[derive(Debug, Args)]
struct CertArgs {
    /// Certificate mode.
    #[arg(long, env = "WIF_CERT_MODE", value_enum, default_value = "files")]
    cert_mode: CertMode,
    /// PEM certificate chain (files mode).
    #[arg(long, env = "WIF_TLS_CERT_FILE", default_value = "/certs/tls.crt")]
    tls_cert_file: PathBuf,
    /// PEM private key (files mode).
    #[arg(long, env = "WIF_TLS_KEY_FILE", default_value = "/certs/tls.key")]
    tls_key_file: PathBuf,
    /// How often certificate files are checked for changes.
    #[arg(long, env = "WIF_CERT_RELOAD_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    cert_reload_interval: Duration,
    /// Namespace the webhook runs in (self-managed mode keeps its Secret there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "wif-system")]
    namespace: String,
    /// Service name in front of the webhook (self-managed certificate's DNS names).
    #[arg(long, env = "WIF_SERVICE_NAME", default_value = "wif-webhook")]
    service_name: String,
    /// Secret holding the self-managed CA and certificate.
    #[arg(long, env = "WIF_CERT_SECRET", default_value = "wif-webhook-tls")]
    cert_secret: String,
    /// Extra names (DNS names or IP addresses) of the self-managed certificate, for a webhook
    /// reached by URL rather than through its Service.
    #[arg(long, env = "WIF_CERT_EXTRA_HOSTS", value_delimiter = ',')]
    cert_extra_hosts: Vec<String>,
    /// MutatingWebhookConfiguration(s) whose caBundle the self-managed mode keeps in sync.
    #[arg(
        long,
        env = "WIF_WEBHOOK_CONFIG",
        value_delimiter = ',',
        default_value = "wif-webhook"
    )]
    webhook_config: Vec<String>,
}

/// How much the server takes on, and for how long.
#[derive(Debug, Args)]
struct LimitsArgs {
    /// Largest admission request accepted, bytes.
    #[arg(long, env = "WIF_MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,
    /// Time allowed for one admission request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Time in-flight requests get on shutdown.
    #[arg(long, default_value = "25s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Offer HTTP/2 (ALPN `h2`) besides HTTP/1.1; `--http2=false` serves HTTP/1.1 only.
    #[arg(long, env = "WIF_HTTP2", default_value_t = true, action = clap::ArgAction::Set)]
    http2: bool,
    /// HTTP/2 streams one connection may have open at once.
    #[arg(long, default_value_t = Limits::default().h2_max_concurrent_streams)]
    h2_max_concurrent_streams: u32,
    /// Admission requests handled at once; more wait up to --queue-timeout, then get 429.
    #[arg(long, env = "WIF_MAX_IN_FLIGHT", default_value_t = Limits::default().max_in_flight)]
    max_in_flight: usize,
    /// How long a request waits for a slot before it is shed (429 with Retry-After).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    queue_timeout: Duration,
    /// Time allowed for a TLS handshake.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    handshake_timeout: Duration,
    /// A connection with no request for this long is closed (HTTP/2: GOAWAY).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
}

impl TryFrom<MutationArgs> for MutationConfig {
    type Error = anyhow::Error;

    fn try_from(args: MutationArgs) -> anyhow::Result<Self> {
        let MutationArgs {
            tenant_id,
            cloud,
            audience,
        } = args;
        anyhow::ensure!(
            !tenant_id.trim().is_empty(),
            "--tenant-id (AZURE_TENANT_ID) must not be empty"
        );
        let authority_host = AuthorityHost::parse(&cloud).context("invalid --cloud")?;
        Ok(Self {
            tenant_id,
            authority_host,
            audience,
        })
    }
}

impl From<CertArgs> for CertSource {
    fn from(args: CertArgs) -> Self {
        let CertArgs {
            cert_mode,
            tls_cert_file,
            tls_key_file,
            cert_reload_interval,
            namespace,
            service_name,
            cert_secret,
            cert_extra_hosts,
            webhook_config,
        } = args;
        match cert_mode {
            CertMode::Files => run::files(tls_cert_file, tls_key_file, cert_reload_interval),
            CertMode::SelfManaged => {
                let mut manager = SelfManaged::new(&namespace, &service_name, &cert_secret, webhook_config);
                for host in cert_extra_hosts {
                    match host.parse() {
                        Ok(ip) => manager.ip_addresses.push(ip),
                        Err(_) => manager.dns_names.push(host),
                    }
                }
                CertSource::SelfManaged(manager)
            }
        }
    }
}

impl TryFrom<LimitsArgs> for Limits {
    type Error = anyhow::Error;

    fn try_from(args: LimitsArgs) -> anyhow::Result<Self> {
        let LimitsArgs {
            max_body_bytes,
            request_timeout,
            drain_timeout,
            http2,
            h2_max_concurrent_streams,
            max_in_flight,
            queue_timeout,
            handshake_timeout,
            idle_timeout,
        } = args;
        anyhow::ensure!(max_in_flight > 0, "--max-in-flight must be at least 1");
        anyhow::ensure!(
            h2_max_concurrent_streams > 0,
            "--h2-max-concurrent-streams must be at least 1"
        );
        Ok(Self {
            max_body_bytes,
            request_timeout,
            drain_timeout,
            http2,
            h2_max_concurrent_streams,
            max_in_flight,
            queue_timeout,
            handshake_timeout,
            idle_timeout,
            ..Limits::default()
        })
    }
}

impl TryFrom<WebhookArgs> for WebhookConfig {
    type Error = anyhow::Error;

    fn try_from(args: WebhookArgs) -> anyhow::Result<Self> {
        let WebhookArgs {
            mutation,
            listen,
            admin_listen,
            certs,
            limits,
            miss_timeout,
            log: _,
        } = args;
        Ok(Self {
            mutation: mutation.try_into()?,
            listen,
            admin_listen,
            certs: certs.into(),
            limits: limits.try_into()?,
            miss_timeout,
        })
    }
}

/// Runs the webhook until SIGTERM/SIGINT.
pub(crate) async fn run(args: WebhookArgs) -> anyhow::Result<()> {
    args.log.init();
    let cfg = WebhookConfig::try_from(args)?;
    let (client, stop) = super::client_and_stop().await?;
    run::run(cfg, client, stop).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(argv: &[&str]) -> anyhow::Result<WebhookConfig> {
        // The required flags (and a fixed cloud, whatever AZURE_ENVIRONMENT says), unless given.
        crate::cmd::testing::config::<WebhookArgs, _>(
            "webhook",
            &[("--tenant-id", "t"), ("--cloud", "AzurePublicCloud")],
            argv,
        )
    }

    #[test]
    fn each_flag_group_lands_in_its_config() {
        let cfg = config(&[
            "--cert-mode",
            "self-managed",
            "--cert-extra-hosts",
            "10.0.0.1,hook.example",
            "--max-in-flight",
            "7",
            "--http2=false",
            "--audience",
            "aud",
        ])
        .expect("valid");
        assert_eq!(
            (cfg.mutation.tenant_id.as_str(), cfg.mutation.audience.as_str()),
            ("t", "aud")
        );
        assert_eq!((cfg.limits.max_in_flight, cfg.limits.http2), (7, false));
        let CertSource::SelfManaged(manager) = cfg.certs else {
            panic!("self-managed certificates")
        };
        assert_eq!(
            manager.ip_addresses,
            ["10.0.0.1".parse::<std::net::IpAddr>().expect("ip")]
        );
        assert_eq!(manager.dns_names.last().map(String::as_str), Some("hook.example"));
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        for (argv, flag) in [
            (&["--tenant-id", " "][..], "--tenant-id"),
            (&["--cloud", "http://not-https"][..], "--cloud"),
            (&["--max-in-flight", "0"][..], "--max-in-flight"),
            (
                &["--h2-max-concurrent-streams", "0"][..],
                "--h2-max-concurrent-streams",
            ),
        ] {
            let err = config(argv).expect_err("refused");
            assert!(format!("{err:#}").contains(flag), "{argv:?}: {err:#}");
        }
    }
}
