//! What every reconcile shares: clients, caches, settings, metrics, backoff and leadership.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Client,
    core::PartialObjectMeta,
    runtime::reflector::{ObjectRef, Store},
};
use rand::Rng;
use wif_api::{FederatedIdentityBinding, FederatedIdentityPolicy, FederatedIdentityPool};

use crate::{
    Error,
    azure::Azure,
    binding_index::SharedBindingIndex,
    directory::Directory,
    events::Recorder,
    leader::Leadership,
    metrics::Metrics,
    propagation::{ExchangeConfig, ReadBackConfig},
    service_account::CachedServiceAccount,
};

/// Settings of the reconciler, resolved at start (issuer discovered, cluster identity read).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The service-account issuer, byte for byte.
    pub issuer: String,
    /// The cluster identity in markers and default names.
    pub cluster_id: String,
    /// Tenant of bindings that name none.
    pub default_tenant: String,
    /// Audience of bindings that name none.
    pub default_audience: String,
    /// Periodic resync.
    pub resync_interval: Duration,
    /// Random spread of resyncs.
    pub resync_jitter: Duration,
    /// Credentials per identity.
    pub max_credentials: usize,
    /// Only namespaces matching this label selector are reconciled (the namespace cache holds
    /// just those).
    pub namespace_selector: Option<String>,
    /// Read-back after writes.
    pub readback: ReadBackConfig,
}

/// The watch caches the reconciler reads.
#[derive(Clone)]
pub struct Stores {
    /// Bindings.
    pub bindings: Store<FederatedIdentityBinding>,
    /// Bindings by namespace and ServiceAccount, fed by the same watch as `bindings`.
    pub binding_index: SharedBindingIndex,
    /// Policies.
    pub policies: Store<FederatedIdentityPolicy>,
    /// Pools.
    pub pools: Store<FederatedIdentityPool>,
    /// Namespaces (metadata only: labels).
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// ServiceAccounts (metadata only: annotations, managed fields).
    pub service_accounts: Store<CachedServiceAccount>,
}

impl Stores {
    /// Waits until every cache has its initial list (a policy decision on an empty policy cache
    /// would revoke credentials).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        wait_store(&self.policies, deadline, "policies").await?;
        wait_store(&self.namespaces, deadline, "namespaces").await?;
        wait_store(&self.service_accounts, deadline, "serviceaccounts").await
    }

    /// Labels of a namespace (empty if unknown).
    pub fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(&ObjectRef::new(namespace))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    /// Whether a binding of `namespace` is ours to reconcile: always, unless a namespace
    /// selector is set and the namespace (cached only when selected) does not match it.
    pub fn namespace_selected(&self, settings: &Settings, namespace: &str) -> bool {
        settings.namespace_selector.is_none() || self.namespaces.get(&ObjectRef::new(namespace)).is_some()
    }

    /// A ServiceAccount from the cache.
    pub fn service_account(&self, namespace: &str, name: &str) -> Option<Arc<CachedServiceAccount>> {
        self.service_accounts.get(&ObjectRef::new(name).within(namespace))
    }

    /// The cached bindings naming ServiceAccount `name` of `namespace`.
    pub fn bindings_of_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Vec<Arc<FederatedIdentityBinding>> {
        self.binding_index
            .of_service_account(namespace, name)
            .iter()
            .filter_map(|r| self.bindings.get(r))
            .collect()
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<Arc<FederatedIdentityPool>> {
        self.pools.get(&ObjectRef::new(name))
    }

    /// Waits (briefly) for the pool cache. Only bindings naming a pool wait for it, so a
    /// cluster without the pool CRD (an upgrade that did not apply it) still serves the others.
    pub async fn wait_pools(&self, timeout: Duration) -> Result<(), Error> {
        wait_store(&self.pools, tokio::time::Instant::now() + timeout, "pools").await
    }

    /// Every policy.
    pub fn policies(&self) -> Vec<Arc<FederatedIdentityPolicy>> {
        self.policies.state()
    }
}

/// Waits for one store. A store's readiness signal wakes only the task that polled it last, and
/// several tasks wait on these stores (the controller itself, reconciles, readiness), so the wait
/// is re-polled in short slices instead of parked once.
pub(crate) async fn wait_store<K>(
    store: &Store<K>,
    deadline: tokio::time::Instant,
    name: &'static str,
) -> Result<(), Error>
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(50), store.wait_until_ready()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(_)) => return Err(Error::NotSynced(name)),
            Err(_) if tokio::time::Instant::now() >= deadline => return Err(Error::NotSynced(name)),
            Err(_) => {}
        }
    }
}

/// Per-binding exponential backoff with jitter (kube-runtime has none): a failure count per
/// binding, reset by a success.
#[derive(Debug)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
    base: Duration,
    max: Duration,
}

impl Backoff {
    /// Delays start at `base` and double up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            failures: Mutex::default(),
            base,
            max,
        }
    }

    /// Counts a failure of `key` and returns the delay before its next attempt, drawn from
    /// `[d/2, d]`, `d = min(max, base·2^(failures-1))`.
    pub fn next(&self, key: &str) -> Duration {
        let n = {
            let mut map = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            let n = map.entry(key.to_owned()).or_default();
            *n = n.saturating_add(1);
            *n
        };
        let d = self
            .base
            .saturating_mul(2u32.saturating_pow((n - 1).min(20)))
            .min(self.max);
        let half = d / 2;
        half + rand::rng().random_range(Duration::ZERO..=d - half)
    }

    /// Forgets the failures of `key`.
    pub fn reset(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(key);
    }

    /// Failures counted for `key` (the tests read it; the policy only counts).
    #[cfg(test)]
    pub(crate) fn failures(&self, key: &str) -> u32 {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// Shared by every reconcile.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Graph and ARM.
    pub azure: Azure,
    /// Per-identity locks and caches.
    pub directory: Directory,
    /// Watch caches.
    pub stores: Stores,
    /// Event recorder.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Per-binding backoff.
    pub backoff: Backoff,
    /// Whether this replica may write.
    pub leadership: Leadership,
    /// Resolved settings.
    pub settings: Settings,
    /// The token-exchange check, when enabled.
    pub exchange: Option<ExchangeConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_resets() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let first = b.next("a");
        assert!(
            (Duration::from_millis(50)..=Duration::from_millis(100)).contains(&first),
            "{first:?}"
        );
        for _ in 0..10 {
            assert!(b.next("a") <= Duration::from_secs(1));
        }
        assert_eq!(b.failures("a"), 11);
        assert_eq!(b.failures("b"), 0, "per object");
        b.reset("a");
        assert_eq!(b.failures("a"), 0);
        let third = {
            b.next("a");
            b.next("a");
            b.next("a")
        };
        assert!(
            (Duration::from_millis(200)..=Duration::from_millis(400)).contains(&third),
            "{third:?}"
        );
    }
}
