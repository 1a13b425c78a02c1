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

use crate::logging::{self, LogFormat};

/// Where the serving certificate comes from.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CertMode {
    /// `--tls-cert-file` and `--tls-key-file`, reloaded when they change (also cert-manager or
    /// an existing Secret mounted as files).
    Files,
    /// The webhook creates and rotates its own CA and certificate in a Secret and patches the
    /// caBundle of its MutatingWebhookConfiguration.
    SelfManaged,
}

/// Flags of `wif webhook`.
#[derive(Debug, Args)]
pub struct WebhookArgs {
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
    /// HTTPS address of the admission endpoint.
    #[arg(long, env = "WIF_LISTEN", default_value = "0.0.0.0:9443")]
    listen: SocketAddr,
    /// Plain-HTTP address of /healthz, /readyz and /metrics.
    #[arg(long, env = "WIF_ADMIN_LISTEN", default_value = "0.0.0.0:9440")]
    admin_listen: SocketAddr,
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
    /// Timeout of the API read made when a ServiceAccount is not cached yet.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    miss_timeout: Duration,
    /// Log filter (e.g. info, debug, wif_webhook=debug).
    #[arg(long, env = "WIF_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Log format.
    #[arg(long, env = "WIF_LOG_FORMAT", value_enum, default_value = "json")]
    log_format: LogFormat,
}

/// Runs the webhook until SIGTERM/SIGINT.
pub async fn run(args: WebhookArgs) -> anyhow::Result<()> {
    let WebhookArgs {
        tenant_id,
        cloud,
        audience,
        listen,
        admin_listen,
        cert_mode,
        tls_cert_file,
        tls_key_file,
        cert_reload_interval,
        namespace,
        service_name,
        cert_secret,
        cert_extra_hosts,
        webhook_config,
        max_body_bytes,
        request_timeout,
        drain_timeout,
        http2,
        h2_max_concurrent_streams,
        max_in_flight,
        queue_timeout,
        handshake_timeout,
        idle_timeout,
        miss_timeout,
        log_level,
        log_format,
    } = args;
    logging::init(&log_level, log_format);
    anyhow::ensure!(
        !tenant_id.trim().is_empty(),
        "--tenant-id (AZURE_TENANT_ID) must not be empty"
    );
    let authority_host = AuthorityHost::parse(&cloud).context("invalid --cloud")?;
    let mutation = MutationConfig {
        tenant_id,
        authority_host,
        audience,
    };
    let certs = match cert_mode {
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
    };
    anyhow::ensure!(max_in_flight > 0, "--max-in-flight must be at least 1");
    anyhow::ensure!(
        h2_max_concurrent_streams > 0,
        "--h2-max-concurrent-streams must be at least 1"
    );
    let limits = Limits {
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
    };
    let (client, stop) = super::client_and_stop().await?;
    let cfg = WebhookConfig {
        mutation,
        listen,
        admin_listen,
        certs,
        limits,
        miss_timeout,
    };
    run::run(cfg, client, stop).await?;
    Ok(())
}
