//! The wif controller: reconciles `FederatedIdentityBinding`s into Entra federated identity
//! credentials, on applications (Microsoft Graph) and user-assigned managed identities (ARM).
//!
//! - [`plan::plan`] decides what to write, purely, from the desired credential, what Entra holds
//!   and what we own ([`naming`]: deterministic names, Graph description markers);
//! - [`conditions::compute`] turns one reconcile's observations into status conditions, purely;
//! - [`reconcile`] runs a binding through policy ([`wif_api::policy`]), identity resolution,
//!   credential sync under the identity's lock ([`directory`]), ServiceAccount annotations
//!   ([`service_account`]) and propagation checks ([`propagation`]);
//! - [`azure`] holds the Graph and ARM clients, authenticated with `wif-exchange`, retrying 429
//!   and 5xx as `Retry-After` says;
//! - [`leader`] elects one writer among replicas with a Lease; [`admin`] serves health, readiness
//!   and metrics.
//!
//! [`run`] wires it all and runs until cancelled.

pub mod admin;
pub mod azure;
pub mod conditions;
pub mod config;
pub mod context;
pub mod controller;
pub mod directory;
mod error;
pub mod issuer;
pub mod leader;
pub mod metrics;
pub mod naming;
pub mod plan;
pub mod propagation;
pub mod reasons;
pub mod reconcile;
pub mod service_account;

use std::{
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client, runtime::events::Reporter};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use wif_exchange::WorkloadIdentityCredential;

use crate::{
    azure::{ArmClient, Azure, AzureHttp, GraphClient},
    context::Settings,
    controller::Shared,
    leader::{Elector, HoldEnd, Leadership},
    metrics::Metrics,
    propagation::{ExchangeConfig, ReadBackConfig},
};
pub use crate::{
    config::{AzureEndpoints, ControllerConfig, CredentialConfig, PropagationConfig},
    error::{Error, Result},
};

/// Name of the controller in Events.
pub const CONTROLLER_NAME: &str = "wif-controller";

fn validate(cfg: &ControllerConfig) -> Result<()> {
    let fail = |m: String| Err(Error::Config(m));
    if cfg.credential.tenant_id.trim().is_empty() {
        return fail("the tenant id (--tenant-id, AZURE_TENANT_ID) must not be empty".into());
    }
    if cfg.credential.client_id.trim().is_empty() {
        return fail("the controller's client id (--client-id, AZURE_CLIENT_ID) must not be empty".into());
    }
    if let Some(issuer) = &cfg.issuer {
        issuer::check(issuer).map_err(Error::Config)?;
    }
    if let Some(id) = &cfg.cluster_id
        && !naming::is_valid_cluster_id(id)
    {
        return fail(format!(
            "--cluster-id {id:?} must be 1-64 letters, digits, '-', '_', '.' or ':'"
        ));
    }
    if cfg.resync_interval < Duration::from_secs(1) {
        return fail("--resync-interval must be at least 1s".into());
    }
    if cfg.max_credentials_per_identity == 0 {
        return fail("--max-credentials-per-identity must be at least 1".into());
    }
    if let Some(l) = &cfg.leader
        && !(l.retry_period < l.renew_deadline && l.renew_deadline < l.lease_duration)
    {
        return fail("leader election needs retry period < renew deadline < lease duration".into());
    }
    Ok(())
}

/// Retries `f` with a capped backoff until it succeeds or `stop`.
async fn until_ok<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    stop: &CancellationToken,
    mut f: F,
) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
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

/// Runs the controller until `stop`: admin server, issuer discovery, leader election, and the
/// reconcile loop while leading.
pub async fn run(cfg: ControllerConfig, client: Client, stop: CancellationToken) -> Result<()> {
    validate(&cfg)?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let registry = Arc::new(Mutex::new(registry));

    let http = azure::http_client(&cfg.azure.extra_ca_pems, Duration::from_secs(10))?;
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
    let azure = Azure {
        graph: GraphClient::new(
            azure_http.clone(),
            &cfg.azure.graph_endpoint,
            &cfg.azure.graph_scope,
        ),
        arm: ArmClient::new(azure_http, &cfg.azure.arm_endpoint, &cfg.azure.arm_scope),
    };

    // Admin server first: /healthz answers while the rest starts.
    let resolved: Arc<OnceLock<(String, String)>> = Arc::default();
    let synced = Arc::new(AtomicBool::new(false));
    let leading = Arc::new(AtomicBool::new(false));
    let bindings_slot = Arc::new(Mutex::new(None));
    let ready = {
        let (resolved, synced, leading) = (resolved.clone(), synced.clone(), leading.clone());
        Arc::new(move || {
            if resolved.get().is_none() {
                return Err("the issuer and cluster identity are not resolved yet".to_owned());
            }
            if leading.load(Ordering::Acquire) && !synced.load(Ordering::Acquire) {
                return Err("leading, but the caches have not synced yet".to_owned());
            }
            Ok(())
        })
    };
    let before_scrape = {
        let (slot, metrics) = (bindings_slot.clone(), metrics.clone());
        Arc::new(move || {
            let owned = slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
                .map(
                    |store: &kube::runtime::reflector::Store<wif_api::FederatedIdentityBinding>| {
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
                    },
                )
                .unwrap_or(0);
            metrics
                .credentials_owned
                .set(i64::try_from(owned).unwrap_or(i64::MAX));
        })
    };
    let listener = admin::bind(cfg.admin_listen).await?;
    tracing::info!(admin = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "admin server listening");
    let admin_task = tokio::spawn(admin::serve(
        listener,
        admin::router(registry, ready, before_scrape),
        stop.clone(),
    ));

    let issuer = match &cfg.issuer {
        Some(i) => i.clone(),
        None => match until_ok("issuer discovery", &stop, || issuer::discover(&client)).await {
            Some(i) => i,
            None => return Ok(()),
        },
    };
    let cluster_id = match &cfg.cluster_id {
        Some(id) => id.clone(),
        None => {
            let api: Api<Namespace> = Api::all(client.clone());
            let uid = until_ok("reading the uid of namespace kube-system", &stop, || async {
                match api.get_metadata("kube-system").await {
                    Ok(ns) => ns
                        .metadata
                        .uid
                        .ok_or_else(|| "namespace kube-system has no uid".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            })
            .await;
            match uid {
                Some(uid) => uid,
                None => return Ok(()),
            }
        }
    };
    tracing::info!(%issuer, %cluster_id, "issuer and cluster identity resolved");
    let _ = resolved.set((issuer.clone(), cluster_id.clone()));

    let identity = cfg
        .leader
        .as_ref()
        .map(|l| l.identity.clone())
        .unwrap_or_else(|| CONTROLLER_NAME.to_owned());
    let shared = Shared {
        client: client.clone(),
        azure,
        recorder: kube::runtime::events::Recorder::new(
            client.clone(),
            Reporter {
                controller: CONTROLLER_NAME.to_owned(),
                instance: Some(identity),
            },
        ),
        metrics: metrics.clone(),
        settings: Settings {
            issuer,
            cluster_id,
            default_tenant: cfg.credential.tenant_id.clone(),
            default_audience: cfg.default_audience(),
            resync_interval: cfg.resync_interval,
            resync_jitter: cfg.resync_jitter,
            max_credentials: cfg.max_credentials_per_identity,
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
        concurrency: cfg.concurrency,
        backoff: (cfg.backoff_base, cfg.backoff_max),
        bindings: bindings_slot,
        synced,
    };

    match cfg.leader.clone() {
        None => {
            leading.store(true, Ordering::Release);
            metrics.leader.set(1);
            controller::run_term(&shared, Leadership::always(), stop.clone()).await;
        }
        Some(leader_cfg) => {
            let mut elector = Elector::new(client.clone(), leader_cfg, Leadership::default());
            loop {
                metrics.leader.set(0);
                leading.store(false, Ordering::Release);
                if !elector.acquire(&stop).await {
                    break;
                }
                metrics.leader.set(1);
                leading.store(true, Ordering::Release);
                let term = stop.child_token();
                let task = {
                    let (shared, leadership, term) =
                        (shared.clone(), elector.leadership().clone(), term.clone());
                    tokio::spawn(async move { controller::run_term(&shared, leadership, term).await })
                };
                let end = elector.hold(&stop).await;
                term.cancel();
                if let Err(error) = task.await {
                    tracing::error!(%error, "controller task failed");
                }
                if end == HoldEnd::Stopped {
                    elector.release().await;
                    break;
                }
                tracing::warn!("leadership lost; standing by");
            }
            metrics.leader.set(0);
        }
    }
    stop.cancel();
    let _ = admin_task.await;
    tracing::info!("controller exited");
    Ok(())
}
