//! The kube-runtime Controller: bindings, triggered also by their ServiceAccounts, by every
//! policy change and by namespace label changes, run while this replica leads.

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicBool, Ordering},
};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    Api, Client, ResourceExt,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        controller::{self, Controller},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio_util::sync::CancellationToken;
use wif_api::{FederatedIdentityBinding, FederatedIdentityPolicy, FederatedIdentityPool};

use crate::{
    azure::Azure,
    binding_index::SharedBindingIndex,
    context::{Backoff, Context, Settings, Stores},
    directory::Directory,
    events::Recorder,
    leader::Leadership,
    metrics::Metrics,
    propagation::ExchangeConfig,
    reconcile::{error_policy, reconcile},
};

/// Everything a leadership term needs, built once at start.
#[derive(Clone)]
pub struct Shared {
    /// Kubernetes client.
    pub client: Client,
    /// Graph and ARM.
    pub azure: Azure,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Resolved settings.
    pub settings: Settings,
    /// The token-exchange check.
    pub exchange: Option<ExchangeConfig>,
    /// Watch only this namespace.
    pub watch_namespace: Option<String>,
    /// Watch only namespaces matching this label selector.
    pub namespace_selector: Option<String>,
    /// Parallel reconciles.
    pub concurrency: u16,
    /// Backoff bounds.
    pub backoff: (std::time::Duration, std::time::Duration),
    /// The binding cache of the current term (for the owned-credentials gauge).
    pub bindings: Arc<Mutex<Option<Store<FederatedIdentityBinding>>>>,
    /// Whether the current term's caches have synced.
    pub synced: Arc<AtomicBool>,
}

/// Watch events as objects to map to bindings, deletions included (a deleted policy or
/// ServiceAccount changes what its bindings may do).
fn objects<K: Clone + Send + 'static>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    events
        .map_ok(|event| {
            let items: Vec<Result<K, watcher::Error>> = match event {
                watcher::Event::Apply(o) | watcher::Event::Delete(o) | watcher::Event::InitApply(o) => {
                    vec![Ok(o)]
                }
                watcher::Event::Init | watcher::Event::InitDone => Vec::new(),
            };
            futures::stream::iter(items)
        })
        .try_flatten()
}

/// What a term watches: the bindings and ServiceAccounts (one namespace, or all), and the
/// namespaces (the watched one, those matching the selector, or all).
fn scope(
    shared: &Shared,
) -> (
    Api<FederatedIdentityBinding>,
    Api<PartialObjectMeta<ServiceAccount>>,
    watcher::Config,
) {
    let client = &shared.client;
    match (&shared.watch_namespace, &shared.namespace_selector) {
        (Some(ns), _) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
            watcher::Config::default().fields(&format!("metadata.name={ns}")),
        ),
        (None, Some(selector)) => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            watcher::Config::default().labels(selector),
        ),
        (None, None) => (
            Api::all(client.clone()),
            Api::all(client.clone()),
            watcher::Config::default(),
        ),
    }
}

/// Runs the controller until `stop` (end of the leadership term or shutdown), then lets the
/// reconciles in flight finish.
pub async fn run_term(shared: &Shared, leadership: Leadership, stop: CancellationToken) {
    let client = shared.client.clone();
    let (bindings_api, sa_api, ns_config) = scope(shared);
    let (policies, policy_writer) = reflector::store();
    let policy_events = watcher(
        Api::<FederatedIdentityPolicy>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .reflect(policy_writer);
    let (namespaces, ns_writer) = reflector::store();
    // `Api<PartialObjectMeta<_>>` lists and watches metadata only.
    let ns_events = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        ns_config,
    )
    .default_backoff()
    .modify(|ns| ns.managed_fields_mut().clear())
    .reflect(ns_writer);
    let (service_accounts, sa_writer) = reflector::store();
    let sa_events = watcher(sa_api, watcher::Config::default())
        .default_backoff()
        .modify(crate::service_account::keep_own_managed_fields)
        .reflect(sa_writer);
    let pools = Controller::new(
        Api::<FederatedIdentityPool>::all(client.clone()),
        watcher::Config::default(),
    );
    // Cached without managedFields: nothing reads them, and at 10,000 bindings their decoded
    // JSON trees were most of the controller's memory.
    let (bindings, binding_writer) = reflector::store();
    // The ServiceAccount and namespace triggers, and reconciles looking for the other bindings
    // of a ServiceAccount, look them up here instead of scanning the cache.
    let binding_index = SharedBindingIndex::default();
    let binding_events = watcher(bindings_api, watcher::Config::default())
        .default_backoff()
        .modify(|b| b.managed_fields_mut().clear())
        .reflect(binding_writer)
        .inspect_ok({
            let index = binding_index.clone();
            move |event| index.apply(event)
        })
        .applied_objects();
    let controller = Controller::for_stream(binding_events, bindings.clone());
    *shared.bindings.lock().unwrap_or_else(PoisonError::into_inner) = Some(bindings.clone());
    let stores = Stores {
        bindings,
        binding_index,
        policies,
        pools: pools.store(),
        namespaces,
        service_accounts,
    };
    mark_synced_when_ready(stores.clone(), shared.synced.clone());
    let ctx = context(shared, client, stores, leadership);
    tracing::info!(
        namespace = shared.watch_namespace.as_deref().unwrap_or("*"),
        selector = shared.namespace_selector.as_deref().unwrap_or(""),
        "controller running"
    );
    let pool_run = pools
        .with_config(controller::Config::default().concurrency(4))
        .graceful_shutdown_on(stop.clone().cancelled_owned())
        .run(crate::pool::reconcile, crate::pool::error_policy, ctx.clone())
        .for_each(|_| async {});
    let triggers = Triggers {
        service_accounts: objects(sa_events),
        policies: objects(policy_events),
        namespaces: objects(ns_events),
    };
    let binding_run = run_bindings(controller, triggers, shared.concurrency, ctx, stop);
    futures::join!(binding_run, pool_run);
    shared.synced.store(false, Ordering::Release);
    tracing::info!("controller stopped");
}

/// The watch streams that wake bindings besides their own.
struct Triggers<S, P, N> {
    service_accounts: S,
    policies: P,
    namespaces: N,
}

/// The binding Controller with its triggers (ServiceAccounts, policies, namespaces, pools),
/// until `stop`.
async fn run_bindings<S, P, N>(
    controller: Controller<FederatedIdentityBinding>,
    triggers: Triggers<S, P, N>,
    concurrency: u16,
    ctx: Arc<Context>,
    stop: CancellationToken,
) where
    S: Stream<Item = Result<PartialObjectMeta<ServiceAccount>, watcher::Error>> + Send + 'static,
    P: Stream<Item = Result<FederatedIdentityPolicy, watcher::Error>> + Send + 'static,
    N: Stream<Item = Result<PartialObjectMeta<Namespace>, watcher::Error>> + Send + 'static,
{
    let bindings = ctx.stores.bindings.clone();
    let index = ctx.stores.binding_index.clone();
    let pool_events = watcher(
        Api::<FederatedIdentityPool>::all(ctx.client.clone()),
        watcher::Config::default(),
    )
    .default_backoff();
    let by_pool = {
        let store = bindings.clone();
        move |pool: FederatedIdentityPool| crate::pool::waiting_bindings(&store.state(), &pool)
    };
    controller
        .watches_stream(triggers.service_accounts, by_service_account(index.clone()))
        .watches_stream(triggers.policies, every_binding(bindings))
        .watches_stream(triggers.namespaces, by_namespace(index))
        .watches_stream(objects(pool_events), by_pool)
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(stop.cancelled_owned())
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                Err(controller::Error::ObjectNotFound(obj)) => tracing::debug!(object = %obj, "binding gone"),
                Err(controller::Error::ReconcilerFailed(_, _)) => {} // logged by error_policy
                Err(error) => tracing::warn!(%error, "controller error"),
            }
        })
        .await;
}

/// Marks the term's caches synced (for `/readyz`) once the bindings and the stores their
/// reconciles read have listed.
fn mark_synced_when_ready(stores: Stores, synced: Arc<AtomicBool>) {
    synced.store(false, Ordering::Release);
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3600);
        if crate::context::wait_store(&stores.bindings, deadline, "bindings")
            .await
            .is_ok()
            && stores
                .wait_ready(std::time::Duration::from_secs(3600))
                .await
                .is_ok()
        {
            tracing::info!(
                bindings = stores.bindings.len(),
                policies = stores.policies.len(),
                "caches synced"
            );
            synced.store(true, Ordering::Release);
        }
    });
}

/// The reconcile context of one leadership term.
fn context(shared: &Shared, client: Client, stores: Stores, leadership: Leadership) -> Arc<Context> {
    Arc::new(Context {
        client,
        azure: shared.azure.clone(),
        directory: Directory::new(
            // One list serves the bindings of an identity during its (aligned) resync.
            (shared.settings.resync_interval / 4).max(std::time::Duration::from_millis(500)),
            std::time::Duration::from_secs(600),
        ),
        stores,
        recorder: shared.recorder.clone(),
        metrics: shared.metrics.clone(),
        backoff: Backoff::new(shared.backoff.0, shared.backoff.1),
        leadership,
        settings: shared.settings.clone(),
        exchange: shared.exchange.clone(),
    })
}

/// The bindings of a ServiceAccount.
fn by_service_account(
    index: SharedBindingIndex,
) -> impl Fn(PartialObjectMeta<ServiceAccount>) -> Vec<ObjectRef<FederatedIdentityBinding>> {
    move |sa| index.of_service_account(&sa.namespace().unwrap_or_default(), &sa.name_any())
}

/// Every binding (a policy may grant or refuse any of them).
fn every_binding(
    store: Store<FederatedIdentityBinding>,
) -> impl Fn(FederatedIdentityPolicy) -> Vec<ObjectRef<FederatedIdentityBinding>> {
    move |_| {
        store
            .state()
            .iter()
            .map(|b| ObjectRef::from_obj(b.as_ref()))
            .collect()
    }
}

/// The bindings of a namespace (its labels decide which policies apply).
fn by_namespace(
    index: SharedBindingIndex,
) -> impl Fn(PartialObjectMeta<Namespace>) -> Vec<ObjectRef<FederatedIdentityBinding>> {
    move |ns| index.of_namespace(&ns.name_any())
}
