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
//! - [`leader`] elects one writer among replicas with a Lease; `wif-runtime`'s admin server serves
//!   health, readiness and metrics.
//!
//! [`run`] wires it all and runs until cancelled.

pub mod azure;
mod binding_index;
mod conditions;
mod config;
mod context;
pub mod controller;
pub mod directory;
mod error;
pub mod events;
mod issuer;
pub mod leader;
mod metrics;
pub mod naming;
pub mod plan;
pub mod pool;
pub mod propagation;
mod reasons;
mod reconcile;
mod service_account;
pub mod share;
mod startup;
pub mod unmutated;

use std::{sync::Arc, time::Duration};

use kube::Client;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
pub use crate::{
    config::{AzureEndpoints, ControllerConfig, CredentialConfig, PropagationConfig},
    error::{Error, Result},
};

/// Name of the controller in Events.
pub(crate) const CONTROLLER_NAME: &str = "wif-controller";

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
    if cfg
        .watch_namespace_selector
        .as_deref()
        .is_some_and(|s| s.trim().is_empty())
    {
        return fail("--watch-namespace-selector must not be empty".into());
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

/// Runs the controller until `stop`: admin server, issuer discovery, leader election, and the
/// reconcile loop while leading.
pub async fn run(cfg: ControllerConfig, client: Client, stop: CancellationToken) -> Result<()> {
    validate(&cfg)?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let unmutated_metrics = unmutated::UnmutatedMetrics::new(&mut registry);
    let http = azure::http_client(&cfg.azure.extra_ca_pems, Duration::from_secs(10))?;
    let azure = startup::azure(&cfg, &http, &metrics)?;
    // Admin server first: /healthz answers while the rest starts.
    let progress = startup::Progress::default();
    let admin_task = startup::serve_admin(&cfg, registry, &progress, &metrics, &stop).await?;
    let Some((issuer, cluster_id)) = startup::resolve_cluster(&cfg, &client, &stop).await else {
        return Ok(());
    };
    tracing::info!(%issuer, %cluster_id, "issuer and cluster identity resolved");
    let _ = progress.resolved.set((issuer.clone(), cluster_id.clone()));
    let shared = startup::shared(
        &cfg,
        &client,
        azure,
        &metrics,
        &http,
        (issuer, cluster_id),
        &progress,
    );
    let unmutated_task = tokio::spawn(unmutated::run(
        client.clone(),
        cfg.unmutated.clone(),
        cfg.watch_namespace.clone(),
        cfg.credential.tenant_id.clone(),
        shared.recorder.clone(),
        unmutated_metrics,
        progress.leading.clone(),
        stop.clone(),
    ));
    startup::lead(cfg.leader.clone(), &client, &shared, &progress, &stop).await;
    stop.cancel();
    let _ = unmutated_task.await;
    let _ = admin_task.await;
    tracing::info!("controller exited");
    Ok(())
}
