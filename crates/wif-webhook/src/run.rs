//! Wiring of `wif webhook`: certificates, ServiceAccount cache, listeners, shutdown.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use wif_api::MutationConfig;

use crate::{
    admission::AdmissionState,
    metrics::{ConnMetrics, Metrics},
    selfcert::{SelfManaged, SelfManagedError},
    server::{self, Limits},
    service_accounts::ServiceAccountCache,
    tls::{CertFiles, CertStore, TlsError},
};

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum CertSource {
    /// PEM files, reloaded when they change (cert-manager, an existing Secret, local runs).
    Files {
        /// The files.
        files: CertFiles,
        /// How often to look for changes.
        reload_interval: Duration,
    },
    /// The webhook keeps its own CA and certificate in a Secret and patches the caBundle.
    SelfManaged(SelfManaged),
}

/// Everything `wif webhook` needs.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Mutation settings.
    pub mutation: MutationConfig,
    /// HTTPS admission address.
    pub listen: SocketAddr,
    /// Plain-HTTP admin address (health, readiness, metrics).
    pub admin_listen: SocketAddr,
    /// Serving certificate.
    pub certs: CertSource,
    /// Listener limits.
    pub limits: Limits,
    /// Timeout of the API read made on a cache miss.
    pub miss_timeout: Duration,
}

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] std::io::Error),
    /// The initial certificate could not be loaded.
    #[error("failed to load the serving certificate: {0}")]
    Tls(#[from] TlsError),
    /// Self-managed certificates could not be set up.
    #[error(transparent)]
    SelfManaged(#[from] SelfManagedError),
    /// No Kubernetes client could be built.
    #[error("failed to create a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Files given on the command line for a local run.
pub fn files(cert: PathBuf, key: PathBuf, reload_interval: Duration) -> CertSource {
    CertSource::Files {
        files: CertFiles { cert, key },
        reload_interval,
    }
}

/// Runs the webhook until `stop` is cancelled, then drains in-flight requests.
pub async fn run(cfg: WebhookConfig, client: kube::Client, stop: CancellationToken) -> Result<(), RunError> {
    let WebhookConfig {
        mutation,
        listen,
        admin_listen,
        certs,
        limits,
        miss_timeout,
    } = cfg;
    // Bound first so the addresses are known (and logged) while certificates are being set up:
    // with port 0, that line is how a supervisor learns where to register the webhook.
    let admission = server::bind(listen).await?;
    let admin = server::bind(admin_listen).await?;
    tracing::info!(listen = %admission.local_addr()?, admin = %admin.local_addr()?, "webhook listening");
    let store = CertStore::new();
    load_certs(certs, &client, &store, &stop).await?;

    let cache = ServiceAccountCache::spawn(client.clone(), miss_timeout, stop.clone());
    let coexist_client = client.clone();
    let validation = crate::validate::ValidationState {
        cache: crate::validate::PolicyCache::spawn(client, stop.clone()),
    };
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let conn_metrics = Arc::new(ConnMetrics::new(&mut registry));
    let others = crate::coexist::register_gauge(&mut registry);
    tokio::spawn(crate::coexist::report_at_start(coexist_client, others));
    let registry = Arc::new(Mutex::new(registry));
    let state = AdmissionState {
        config: Arc::new(mutation),
        service_accounts: cache.clone(),
        metrics: metrics.clone(),
    };

    let ready = Arc::new(readiness(cache.clone(), store.clone(), stop.clone()));
    let before_scrape = {
        let (cache, metrics) = (cache.clone(), metrics.clone());
        Arc::new(move || {
            metrics
                .cached_service_accounts
                .set(i64::try_from(cache.len()).unwrap_or(i64::MAX));
        })
    };
    let admin_task = tokio::spawn(server::serve_plain(
        admin,
        server::admin_router(registry, ready, before_scrape),
        stop.clone(),
    ));
    let router = server::admission_router(state, &limits)
        .merge(crate::validate::router(validation, limits.max_body_bytes));
    tracing::info!(
        http2 = limits.http2,
        h2_max_concurrent_streams = limits.h2_max_concurrent_streams,
        max_in_flight = limits.max_in_flight,
        "admission limits"
    );
    server::serve_tls_metered(admission, store, router, limits, conn_metrics, stop).await;
    match admin_task.await {
        Ok(result) => result?,
        Err(error) => tracing::warn!(%error, "admin server task failed"),
    }
    tracing::info!("webhook stopped");
    Ok(())
}

/// Loads the serving certificate (failing at start on a bad one) and keeps it current: file
/// reloads, or the self-managed rotation.
async fn load_certs(
    certs: CertSource,
    client: &kube::Client,
    store: &Arc<CertStore>,
    stop: &CancellationToken,
) -> Result<(), RunError> {
    match certs {
        CertSource::Files {
            files,
            reload_interval,
        } => {
            // Fail at start on a bad pair; later bad pairs only keep the previous certificate.
            files.load_into(store)?;
            tokio::spawn(files.watch(store.clone(), reload_interval, stop.clone()));
        }
        CertSource::SelfManaged(manager) => {
            let published = manager.ensure(client, store).await?;
            tokio::spawn(manager.run(client.clone(), store.clone(), stop.clone(), published));
        }
    }
    Ok(())
}

/// `/readyz`: serving once a certificate is loaded and the ServiceAccount cache has synced;
/// not while draining.
fn readiness(
    cache: ServiceAccountCache,
    store: Arc<CertStore>,
    stop: CancellationToken,
) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
    move || {
        if stop.is_cancelled() {
            return Err("shutting down: draining in-flight requests".to_owned());
        }
        if !store.is_loaded() {
            return Err("no serving certificate loaded yet".to_owned());
        }
        if !cache.is_synced() {
            return Err("ServiceAccount cache not synced yet".to_owned());
        }
        Ok(())
    }
}
