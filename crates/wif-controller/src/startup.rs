//! The steps of [`run`](crate::run), each a small function: the Azure clients, the admin server,
//! the cluster's issuer and identity, the settings every reconcile shares, and the leadership
//! loop.

use std::{
    future::Future,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    runtime::{events::Reporter, reflector::Store},
};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wif_api::FederatedIdentityBinding;
use wif_exchange::WorkloadIdentityCredential;
use wif_runtime::admin;

use crate::{
    CONTROLLER_NAME, ControllerConfig, Error, Result,
    azure::{ArmClient, Azure, AzureHttp, GraphClient},
    conditions,
    context::Settings,
    controller::{self, Shared},
    events::Recorder,
    issuer,
    leader::{Elector, HoldEnd, LeaderConfig, Leadership},
    metrics::Metrics,
    propagation::{ExchangeConfig, ReadBackConfig},
};

/// How far the start got, as `/readyz` reports it.
#[derive(Clone, Default)]
pub(crate) struct Progress {
    /// The issuer and cluster identity, once resolved.
    pub(crate) resolved: Arc<OnceLock<(String, String)>>,
    /// Whether the current term's caches have synced.
    synced: Arc<AtomicBool>,
    /// Whether this replica leads.
    pub(crate) leading: Arc<AtomicBool>,
    /// The binding cache of the current term.
    bindings: Arc<Mutex<Option<Store<FederatedIdentityBinding>>>>,
}

impl Progress {
    fn ready(&self) -> std::result::Result<(), String> {
        if self.resolved.get().is_none() {
            return Err("the issuer and cluster identity are not resolved yet".to_owned());
        }
        if self.leading.load(Ordering::Acquire) && !self.synced.load(Ordering::Acquire) {
            return Err("leading, but the caches have not synced yet".to_owned());
        }
        Ok(())
    }

    /// Bindings whose credential is in place (the `credentials_owned` gauge).
    fn owned_credentials(&self) -> usize {
        let slot = self.bindings.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(store) = slot.as_ref() else { return 0 };
        store
            .state()
            .iter()
            .filter(|b| {
                b.status.as_ref().is_some_and(|s| {
                    s.credential.is_some()
                        && conditions::find(&s.conditions, conditions::CREDENTIAL_SYNCED)
                            .is_some_and(|c| c.status == "True")
                })
            })
            .count()
    }
}

/// The Graph and ARM clients, authenticated as the controller's own workload identity.
pub(crate) fn azure(cfg: &ControllerConfig, http: &reqwest::Client, metrics: &Arc<Metrics>) -> Result<Azure> {
    let mut builder = WorkloadIdentityCredential::builder()
        .tenant_id(&cfg.credential.tenant_id)
        .client_id(&cfg.credential.client_id)
        .token_file(&cfg.credential.token_file)
        .authority_host(&cfg.azure.authority_host)
        .http_client(http.clone());
    if !cfg.credential.additionally_allowed_tenants.is_empty() {
        builder = builder.additionally_allowed_tenants(cfg.credential.additionally_allowed_tenants.clone());
    }
    let credential = builder.build().map_err(Error::Credential)?;
    let azure_http = Arc::new(AzureHttp::new(
        http.clone(),
        Arc::new(credential),
        cfg.azure.retry.clone(),
        cfg.azure.request_timeout,
        Some(metrics.clone()),
    ));
    Ok(Azure {
        graph: GraphClient::new(
            azure_http.clone(),
            &cfg.azure.graph_endpoint,
            &cfg.azure.graph_scope,
        ),
        arm: ArmClient::new(azure_http, &cfg.azure.arm_endpoint, &cfg.azure.arm_scope),
    })
}

/// Binds and serves `/healthz`, `/readyz` and `/metrics` until `stop`.
pub(crate) async fn serve_admin(
    cfg: &ControllerConfig,
    registry: Registry,
    progress: &Progress,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Result<JoinHandle<()>> {
    let ready = {
        let progress = progress.clone();
        Arc::new(move || progress.ready())
    };
    let before_scrape = {
        let (progress, metrics) = (progress.clone(), metrics.clone());
        Arc::new(move || {
            let owned = progress.owned_credentials();
            metrics
                .credentials_owned
                .set(i64::try_from(owned).unwrap_or(i64::MAX));
        })
    };
    let listener = wif_runtime::bind(cfg.admin_listen).await.map_err(Error::Bind)?;
    tracing::info!(admin = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin server listening");
    let router = admin::router(Arc::new(Mutex::new(registry)), ready, before_scrape);
    let stop = stop.clone();
    Ok(tokio::spawn(async move {
        if let Err(error) = admin::serve(listener, router, stop).await {
            tracing::warn!(%error, "admin server stopped");
        }
    }))
}

/// Retries `f` with a capped backoff until it succeeds or `stop`.
async fn until_ok<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    mut f: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
{
    let mut delay = Duration::from_millis(500);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(error) => tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "{what} failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// The service-account issuer and the cluster identity: configured, or discovered (retried
/// until `stop`, then `None`).
pub(crate) async fn resolve_cluster(
    cfg: &ControllerConfig,
    client: &Client,
    stop: &CancellationToken,
) -> Option<(String, String)> {
    let issuer = match &cfg.issuer {
        Some(i) => i.clone(),
        None => until_ok("issuer discovery", stop, || issuer::discover(client)).await?,
    };
    let cluster_id = match &cfg.cluster_id {
        Some(id) => id.clone(),
        None => {
            let api: Api<Namespace> = Api::all(client.clone());
            until_ok("reading the uid of namespace kube-system", stop, || async {
                match api.get_metadata("kube-system").await {
                    Ok(ns) => ns
                        .metadata
                        .uid
                        .ok_or_else(|| "namespace kube-system has no uid".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await?
        }
    };
    Some((issuer, cluster_id))
}

/// What every leadership term shares.
pub(crate) fn shared(
    cfg: &ControllerConfig,
    client: &Client,
    azure: Azure,
    metrics: &Arc<Metrics>,
    http: &reqwest::Client,
    (issuer, cluster_id): (String, String),
    progress: &Progress,
) -> Shared {
    let identity = cfg
        .leader
        .as_ref()
        .map(|l| l.identity.clone())
        .unwrap_or_else(|| CONTROLLER_NAME.to_owned());
    let reporter = Reporter {
        controller: CONTROLLER_NAME.to_owned(),
        instance: Some(identity),
    };
    Shared {
        client: client.clone(),
        azure,
        recorder: Recorder::new(client.clone(), reporter),
        metrics: metrics.clone(),
        settings: Settings {
            issuer,
            cluster_id,
            default_tenant: cfg.credential.tenant_id.clone(),
            default_audience: cfg.default_audience(),
            resync_interval: cfg.resync_interval,
            resync_jitter: cfg.resync_jitter,
            max_credentials: cfg.max_credentials_per_identity,
            namespace_selector: cfg.watch_namespace_selector.clone(),
            readback: ReadBackConfig {
                count: cfg.propagation.readback_count,
                interval: cfg.propagation.readback_interval,
            },
        },
        exchange: cfg.propagation.verify_token_exchange.then(|| ExchangeConfig {
            authority_host: cfg.azure.authority_host.clone(),
            scope: cfg.propagation.verify_scope.clone(),
            http: http.clone(),
            timeout: cfg.azure.request_timeout,
        }),
        watch_namespace: cfg.watch_namespace.clone(),
        namespace_selector: cfg.watch_namespace_selector.clone(),
        concurrency: cfg.concurrency,
        backoff: (cfg.backoff_base, cfg.backoff_max),
        bindings: progress.bindings.clone(),
        synced: progress.synced.clone(),
    }
}

/// Reconciles while this replica leads (always, without leader election) until `stop`.
pub(crate) async fn lead(
    leader: Option<LeaderConfig>,
    client: &Client,
    shared: &Shared,
    progress: &Progress,
    stop: &CancellationToken,
) {
    let metrics = &shared.metrics;
    let Some(leader_cfg) = leader else {
        progress.leading.store(true, Ordering::Release);
        metrics.leader.set(1);
        controller::run_term(shared, Leadership::always(), stop.clone()).await;
        return;
    };
    let mut elector = Elector::new(client.clone(), leader_cfg, Leadership::default());
    loop {
        metrics.leader.set(0);
        progress.leading.store(false, Ordering::Release);
        if !elector.acquire(stop).await {
            break;
        }
        metrics.leader.set(1);
        progress.leading.store(true, Ordering::Release);
        if term(&mut elector, shared, stop).await == HoldEnd::Stopped {
            elector.release().await;
            break;
        }
        tracing::warn!("leadership lost; standing by");
    }
    metrics.leader.set(0);
}

/// One leadership term: reconcile until the Lease is lost or `stop`.
async fn term(elector: &mut Elector, shared: &Shared, stop: &CancellationToken) -> HoldEnd {
    let term = stop.child_token();
    let task = {
        let (shared, leadership, term) = (shared.clone(), elector.leadership().clone(), term.clone());
        tokio::spawn(async move { controller::run_term(&shared, leadership, term).await })
    };
    let end = elector.hold(stop).await;
    term.cancel();
    if let Err(error) = task.await {
        tracing::error!(%error, "controller task failed");
    }
    end
}
