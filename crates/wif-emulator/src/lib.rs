//! A faithful local Microsoft Entra for wif's demos and tests (`wif emulator`).
//!
//! One HTTPS server (its own CA, written to `{state-dir}/ca.pem`) plays three services:
//!
//! - **Entra** (`AZURE_AUTHORITY_HOST` = the base URL): per tenant
//!   `GET /{tenant}/v2.0/.well-known/openid-configuration`, `GET /{tenant}/discovery/v2.0/keys`,
//!   `POST /{tenant}/oauth2/v2.0/token` (client credentials with a federated client assertion,
//!   validated as Entra does, in a fixed order documented in `src/entra.rs` with the AADSTS code
//!   of each failure), and MSAL's `GET /common/discovery/instance`.
//! - **Microsoft Graph** under `/graph/{v1.0|beta}`: `applications` and their
//!   `federatedIdentityCredentials`, with Graph's rules and error bodies.
//! - **ARM** under `/arm` (mirroring `https://management.azure.com`): user-assigned identities and
//!   their federated identity credentials, with ARM's rules, api-version check and per-identity
//!   concurrent-write `409`.
//!
//! Graph and ARM require a bearer token the emulator issued for their audience. An admin API
//! under `/admin` (loopback only) seeds the directory, mints tokens, injects faults (429 with
//! `Retry-After`, 5xx, latency, credential propagation delay) and counts requests.
//!
//! State (directory, signing key, CA) lives in the state directory and survives restarts.
//!
//! ```no_run
//! # async fn demo() -> wif_emulator::Result<()> {
//! let dir = std::path::PathBuf::from("/tmp/wif-emulator");
//! let handle = wif_emulator::Emulator::start(wif_emulator::EmulatorConfig::new(dir)).await?;
//! println!("authority host: {}", handle.authority_host());
//! handle.admin().counters().await?;
//! handle.shutdown().await;
//! # Ok(()) }
//! ```

mod admin;
mod app;
mod arm;
mod auth;
mod client;
mod config;
mod credentials;
mod entra;
mod error;
mod faults;
#[doc(hidden)]
pub mod fuzzing;
mod graph;
mod jwt;
mod oidc;
mod server;
mod state;
mod tls;
mod wire;

use std::{
    future::Future,
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

pub use crate::{
    admin::MintRequest,
    arm::API_VERSIONS as ARM_API_VERSIONS,
    client::AdminClient,
    config::{
        ApplicationSeed, Config, CredentialSeed, DEFAULT_AUDIENCE, IdentitySeed, ResourceGroupSeed, Seed,
        Settings, SettingsPatch, SubscriptionSeed, TenantSeed,
    },
    error::{Error, Result},
    faults::{Api, ApiCounters, Counters, FaultRule, Faults, ServerError, Throttle},
};
use crate::{app::App, jwt::SigningKey, oidc::IssuerKeys, state::Store};

/// Command-line arguments of `wif emulator`.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    about = "A local Microsoft Entra: token endpoint, OIDC discovery, Graph and ARM federated credentials"
)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the READY line tells which).
    #[arg(long, env = "WIF_EMULATOR_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Directory holding the CA, the signing key and the directory state.
    #[arg(long, env = "WIF_EMULATOR_STATE_DIR", default_value = "wif-emulator-state")]
    pub state_dir: PathBuf,
    /// Config file (YAML, or JSON if it ends in .json) seeding tenants, applications, identities,
    /// credentials, settings and faults.
    #[arg(long, env = "WIF_EMULATOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Extra CA bundle (PEM) to trust when fetching an assertion issuer's discovery document and
    /// JWKS, e.g. a Kubernetes API server's CA. Repeatable.
    #[arg(long = "trust-ca", env = "WIF_EMULATOR_TRUST_CA", value_delimiter = ',')]
    pub trust_ca: Vec<PathBuf>,
    /// The emulator's own URL as clients see it (issuer, discovery, token endpoint), if it differs
    /// from `https://{listen}`.
    #[arg(long, env = "WIF_EMULATOR_ISSUER_URL")]
    pub issuer_url: Option<url::Url>,
}

/// Runs the emulator until `shutdown` completes: prints
/// `EMULATOR READY {"url":…,"ca":…}` on stdout once it serves.
pub async fn run(args: Args, shutdown: impl Future<Output = ()>) -> Result<()> {
    serve(args, print_ready, shutdown).await
}

/// Runs the emulator until `shutdown` completes; `ready` is told once it serves (with
/// `--listen …:0`, [`Handle::local_addr`] is the address it took).
pub async fn serve(
    args: Args,
    ready: impl FnOnce(&Handle),
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let handle = Emulator::start(EmulatorConfig::from_args(args)?).await?;
    ready(&handle);
    shutdown.await;
    handle.shutdown().await;
    Ok(())
}

/// Prints `EMULATOR READY {"url":…,"ca":…}` on stdout.
fn print_ready(handle: &Handle) {
    let mut stdout = std::io::stdout().lock();
    // If stdout is gone nobody reads the READY line; keep serving anyway.
    let _ = writeln!(stdout, "EMULATOR READY {}", ready_json(handle)).and_then(|()| stdout.flush());
}

/// `{"url":…,"ca":…}`, written by hand to keep the documented key order.
fn ready_json(handle: &Handle) -> String {
    format!(
        r#"{{"url":{},"ca":{}}}"#,
        serde_json::Value::from(handle.base_url()),
        serde_json::Value::from(handle.ca_pem_path().to_string_lossy().into_owned())
    )
}

/// How to start an emulator programmatically.
#[derive(Debug)]
pub struct EmulatorConfig {
    /// Listen address (`127.0.0.1:0` by default).
    pub listen: SocketAddr,
    /// An already-bound listener to serve on instead of binding `listen` (a caller that must
    /// know the port before the emulator starts, e.g. for [`EmulatorConfig::issuer_url`]).
    pub listener: Option<std::net::TcpListener>,
    /// State directory (created if missing).
    pub state_dir: PathBuf,
    /// Seed, settings and faults.
    pub config: Config,
    /// Extra CA bundles (PEM text) trusted for assertion issuers' discovery and JWKS.
    pub trust_ca_pems: Vec<String>,
    /// The emulator's public URL, if not `https://{listen}`.
    pub issuer_url: Option<url::Url>,
    /// Also trust the system's roots for assertion issuers (default true).
    pub system_roots: bool,
    /// Rewrite `state.json` after each change (default true); off keeps changes in memory only.
    pub persist_state: bool,
}

impl EmulatorConfig {
    /// Listens on `127.0.0.1:0` with state in `state_dir`, an empty directory and default settings.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            listener: None,
            state_dir: state_dir.into(),
            config: Config::default(),
            trust_ca_pems: Vec::new(),
            issuer_url: None,
            system_roots: true,
            persist_state: true,
        }
    }

    /// Sets the config (seed, settings, faults).
    #[must_use]
    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Trusts a CA bundle (PEM) for assertion issuers.
    #[must_use]
    pub fn trust_ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.trust_ca_pems.push(pem.into());
        self
    }

    /// Listens on this address.
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Serves on this already-bound listener.
    #[must_use]
    pub fn with_listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The configuration `wif emulator` runs with: the flags, the `--config` file and the
    /// `--trust-ca` bundles read and checked.
    pub(crate) fn from_args(args: Args) -> Result<Self> {
        let Args {
            listen,
            state_dir,
            config,
            trust_ca,
            issuer_url,
        } = args;
        let config = match config {
            Some(path) => Config::from_file(&path)?,
            None => Config::default(),
        };
        let mut trust_ca_pems = Vec::new();
        for path in trust_ca {
            let pem = std::fs::read_to_string(&path).map_err(|source| Error::ReadFile {
                path: path.clone(),
                source,
            })?;
            tls::parse_pem_certs(&pem).map_err(|message| Error::TrustCa {
                path: path.clone(),
                message,
            })?;
            trust_ca_pems.push(pem);
        }
        Ok(Self {
            listen,
            listener: None,
            state_dir,
            config,
            trust_ca_pems,
            issuer_url,
            system_roots: true,
            persist_state: true,
        })
    }
}

/// Starts emulators.
#[derive(Debug)]
pub struct Emulator;

impl Emulator {
    /// Binds, loads or creates the state, seeds it from the config and starts serving.
    pub async fn start(config: EmulatorConfig) -> Result<Handle> {
        let EmulatorConfig {
            listen,
            listener,
            state_dir,
            config,
            trust_ca_pems,
            issuer_url,
            system_roots,
            persist_state,
        } = config;
        tokio::fs::create_dir_all(&state_dir)
            .await
            .map_err(|source| Error::WriteFile {
                path: state_dir.clone(),
                source,
            })?;
        if let Some(url) = &issuer_url {
            check_issuer_url(url)?;
        }
        let listener = bind(listen, listener).await?;
        let local = listener
            .local_addr()
            .map_err(|source| Error::Bind { addr: listen, source })?;
        let local_url = local_base_url(local);
        let base_url = issuer_url
            .as_ref()
            .map(|u| u.as_str().trim_end_matches('/').to_string())
            .unwrap_or_else(|| local_url.clone());

        let mut extra_hosts: Vec<String> = issuer_url.as_ref().and_then(tls::url_host).into_iter().collect();
        // Listening on a specific address (e.g. a test node's pod-network gateway): clients
        // there verify the certificate against that address.
        if !local.ip().is_unspecified() && !local.ip().is_loopback() {
            extra_hosts.push(local.ip().to_string());
        }
        let tls = tls::load_or_create(&state_dir, &extra_hosts).await?;
        let signing = SigningKey::load_or_generate(&state_dir).await?;
        let store = seeded_store(&state_dir, &config, persist_state).await?;
        let outbound = outbound_client(trust_ca_pems, &tls.ca_pem, system_roots)?;
        let app = Arc::new(App::new(
            base_url.clone(),
            store,
            signing,
            IssuerKeys::new(outbound),
            config.settings,
            config.faults,
        ));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(server::serve(
            listener,
            tls.server_config.clone(),
            server::router(app),
            shutdown_rx,
        ));
        let local_client = http_client_trusting(&tls.ca_pem)?;
        tracing::info!(url = %base_url, listen = %local, ca = %tls.ca_path.display(), "emulator serving");
        Ok(Handle {
            base_url,
            local_addr: local,
            ca_pem_path: tls.ca_path,
            ca_pem: tls.ca_pem,
            state_dir,
            admin: AdminClient::new(local_url, local_client),
            shutdown: Some(shutdown_tx),
            task: Some(task),
        })
    }
}

/// The listener handed over, else one bound on `listen`.
async fn bind(listen: SocketAddr, listener: Option<std::net::TcpListener>) -> Result<TcpListener> {
    let Some(listener) = listener else {
        return TcpListener::bind(listen)
            .await
            .map_err(|source| Error::Bind { addr: listen, source });
    };
    let addr = listener.local_addr().unwrap_or(listen);
    listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
        .map_err(|source| Error::Bind { addr, source })
}

/// The state directory's store with the config's seed applied.
pub(crate) async fn seeded_store(state_dir: &Path, config: &Config, persist: bool) -> Result<Store> {
    let store = Store::open(state_dir, persist).await?;
    let seed = Seed {
        tenants: config.tenants.clone(),
    };
    store
        .update(|s| s.apply_seed(&seed, &config.settings).map_err(SeedError::Invalid))
        .await
        .map_err(|e| match e {
            SeedError::Invalid(message) => Error::InvalidConfig(message),
            SeedError::Persist => Error::WriteFile {
                path: state_dir.join("state.json"),
                source: std::io::Error::other("failed to persist the seeded state"),
            },
        })?;
    Ok(store)
}

/// The client the emulator fetches assertion issuers' discovery and JWKS with: trusting the
/// `--trust-ca` bundles, its own CA and (when `system_roots`) the system's roots.
fn outbound_client(mut trust: Vec<String>, own_ca_pem: &str, system_roots: bool) -> Result<reqwest::Client> {
    trust.push(own_ca_pem.to_owned());
    let tls = tls::client_config(&trust, system_roots).map_err(|message| Error::TrustCa {
        path: PathBuf::from("--trust-ca"),
        message,
    })?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .user_agent(concat!("wif-emulator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(Error::HttpClient)
}

enum SeedError {
    Invalid(String),
    Persist,
}

impl From<state::PersistFailed> for SeedError {
    fn from(_: state::PersistFailed) -> Self {
        Self::Persist
    }
}

fn check_issuer_url(url: &url::Url) -> Result<()> {
    let refuse = |message: &str| Error::IssuerUrl {
        url: url.to_string(),
        message: message.to_string(),
    };
    if url.scheme() != "https" {
        return Err(refuse("must be https"));
    }
    if url.host().is_none() {
        return Err(refuse("must have a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(refuse("must have no query or fragment"));
    }
    Ok(())
}

fn local_base_url(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => format!("https://127.0.0.1:{}", addr.port()),
        IpAddr::V4(ip) => format!("https://{ip}:{}", addr.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => format!("https://[::1]:{}", addr.port()),
        IpAddr::V6(ip) => format!("https://[{ip}]:{}", addr.port()),
    }
}

/// A reqwest client (ring provider, no proxy) that trusts only the given CA bundle.
pub fn http_client_trusting(ca_pem: &str) -> Result<reqwest::Client> {
    let config = tls::client_config(&[ca_pem.to_string()], false).map_err(|message| Error::TrustCa {
        path: PathBuf::from("ca.pem"),
        message,
    })?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .no_proxy()
        .build()
        .map_err(Error::HttpClient)
}

/// A running emulator. Dropping it stops the server (without waiting); [`Handle::shutdown`]
/// stops it and waits for in-flight requests.
#[derive(Debug)]
pub struct Handle {
    base_url: String,
    local_addr: SocketAddr,
    ca_pem_path: PathBuf,
    ca_pem: String,
    state_dir: PathBuf,
    admin: AdminClient,
    shutdown: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<()>>,
}

impl Handle {
    /// The emulator's URL (issuer base), e.g. `https://127.0.0.1:43117`, no trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The value for `AZURE_AUTHORITY_HOST` (with the trailing slash the webhook injects).
    pub fn authority_host(&self) -> String {
        format!("{}/", self.base_url)
    }

    /// The Graph base, standing in for `https://graph.microsoft.com` (append `/v1.0/…`).
    pub fn graph_url(&self) -> String {
        format!("{}/graph", self.base_url)
    }

    /// The ARM base, standing in for `https://management.azure.com` (append `/subscriptions/…`).
    pub fn arm_url(&self) -> String {
        format!("{}/arm", self.base_url)
    }

    /// The issuer of the emulator's tokens for a tenant.
    pub fn issuer(&self, tenant_id: &str) -> String {
        format!("{}/{tenant_id}/v2.0", self.base_url)
    }

    /// The token endpoint of a tenant.
    pub fn token_endpoint(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.base_url)
    }

    /// Path of the CA certificate (PEM) clients must trust.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The admin API client.
    pub fn admin(&self) -> &AdminClient {
        &self.admin
    }

    /// A reqwest client trusting the emulator's CA (and nothing else).
    pub fn http_client(&self) -> Result<reqwest::Client> {
        http_client_trusting(&self.ca_pem)
    }

    /// Stops accepting, waits for in-flight requests (bounded) and returns.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(true);
        }
    }
}
