//! ServiceAccount metadata, cached.
//!
//! The webhook needs only names and annotations, so it watches `PartialObjectMeta` and strips
//! what it never reads (managed fields, owner references) to keep 10,000 ServiceAccounts in a few
//! megabytes. A pod created right after its ServiceAccount can arrive before the watch event, so
//! a miss asks the API server once, with a short timeout.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::{api::core::v1::ServiceAccount, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::{
    Api, Client,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store, store::Writer},
        watcher::{self, watcher},
    },
};
use tokio_util::sync::CancellationToken;

/// A cached ServiceAccount: metadata only.
pub type CachedServiceAccount = PartialObjectMeta<ServiceAccount>;

/// A ServiceAccount could not be read from the API server.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// The API server answered with an error.
    #[error("failed to read ServiceAccount {namespace}/{name} from the API server: {source}")]
    Api {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// The API server did not answer in time.
    #[error("timed out after {0:?} reading ServiceAccount {1}/{2} from the API server")]
    Timeout(Duration, String, String),
}

/// ServiceAccount metadata by namespace and name, from a watch, with an API read on a miss.
#[derive(Clone)]
pub struct ServiceAccountCache {
    store: Store<CachedServiceAccount>,
    client: Option<Client>,
    miss_timeout: Duration,
    synced: Arc<AtomicBool>,
}

impl ServiceAccountCache {
    /// A cache fed by hand (tests, benchmarks, `wif mutate`); it is synced at once and a miss is
    /// a miss.
    pub fn from_writer(writer: Writer<CachedServiceAccount>) -> Self {
        Self {
            store: writer.as_reader(),
            client: None,
            miss_timeout: Duration::from_secs(2),
            synced: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Starts a cluster-wide metadata watch of ServiceAccounts; it runs until `stop`.
    pub fn spawn(client: Client, miss_timeout: Duration, stop: CancellationToken) -> Self {
        let writer = Writer::default();
        let store = writer.as_reader();
        let synced = Arc::new(AtomicBool::new(false));
        // `Api<PartialObjectMeta<_>>` lists and watches with metadata-only requests.
        let api: Api<CachedServiceAccount> = Api::all(client.clone());
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(strip)
            .reflect(writer)
            .touched_objects();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    item = stream.next() => match item {
                        Some(Ok(_)) => {}
                        Some(Err(error)) => tracing::warn!(%error, "ServiceAccount watch error; retrying"),
                        None => return,
                    }
                }
            }
        });
        let cache = Self {
            store,
            client: Some(client),
            miss_timeout,
            synced,
        };
        let (store, flag) = (cache.store.clone(), cache.synced.clone());
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                tracing::info!(service_accounts = store.len(), "ServiceAccount cache synced");
                flag.store(true, Ordering::Release);
            }
        });
        cache
    }

    /// Whether the initial list has been received.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Number of cached ServiceAccounts.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Looks a ServiceAccount up; `Ok(None)` means it does not exist.
    /// The second value says whether the API server was asked (a cache miss).
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Option<Arc<CachedServiceAccount>>, bool), LookupError> {
        if let Some(sa) = self.store.get(&ObjectRef::new(name).within(namespace)) {
            return Ok((Some(sa), false));
        }
        let Some(client) = &self.client else {
            return Ok((None, false));
        };
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        match tokio::time::timeout(self.miss_timeout, api.get_metadata_opt(name)).await {
            Ok(Ok(found)) => Ok((
                found.map(|mut sa| {
                    strip(&mut sa);
                    Arc::new(sa)
                }),
                true,
            )),
            Ok(Err(source)) => Err(LookupError::Api {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            }),
            Err(_) => Err(LookupError::Timeout(
                self.miss_timeout,
                namespace.to_owned(),
                name.to_owned(),
            )),
        }
    }
}

/// Keeps only what the webhook reads: the name, the namespace, and the labels and annotations
/// under `azure.workload.identity/`. Everything else (managed fields, `last-applied-configuration`,
/// other teams' annotations) is most of an object's size and is dropped before it is cached.
pub fn strip(sa: &mut CachedServiceAccount) {
    let meta = &mut sa.metadata;
    let ours = |m: &mut Option<std::collections::BTreeMap<String, String>>| {
        if let Some(map) = m.as_mut() {
            map.retain(|k, _| k.starts_with(wif_api::PREFIX));
        }
        if m.as_ref().is_some_and(|map| map.is_empty()) {
            *m = None;
        }
    };
    ours(&mut meta.labels);
    ours(&mut meta.annotations);
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        labels: meta.labels.take(),
        annotations: meta.annotations.take(),
        ..ObjectMeta::default()
    };
}

/// Builds a cache holding exactly `accounts` (tests and benchmarks).
pub fn static_cache(accounts: impl IntoIterator<Item = CachedServiceAccount>) -> ServiceAccountCache {
    let mut writer = Writer::default();
    for sa in accounts {
        writer.apply_watcher_event(&watcher::Event::Apply(sa));
    }
    ServiceAccountCache::from_writer(writer)
}

/// A ServiceAccount's metadata as the cache holds it.
pub fn cached(namespace: &str, name: &str, annotations: &[(&str, &str)]) -> CachedServiceAccount {
    let mut meta = PartialObjectMeta::<ServiceAccount>::default();
    meta.metadata.name = Some(name.to_owned());
    meta.metadata.namespace = Some(namespace.to_owned());
    if !annotations.is_empty() {
        meta.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
    }
    meta
}

// Keep the reflector module path visible for callers that build writers themselves.
pub use reflector::store::Writer as CacheWriter;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_keeps_only_what_the_webhook_reads() {
        let mut sa = cached(
            "ns",
            "api",
            &[
                ("azure.workload.identity/client-id", "cid"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{...big...}"),
            ],
        );
        sa.metadata.uid = Some("u".into());
        sa.metadata.labels = Some([("team".to_owned(), "x".to_owned())].into());
        strip(&mut sa);
        assert_eq!(sa.metadata.name.as_deref(), Some("api"));
        assert_eq!(sa.metadata.namespace.as_deref(), Some("ns"));
        assert_eq!(
            sa.metadata.annotations,
            Some([("azure.workload.identity/client-id".to_owned(), "cid".to_owned())].into())
        );
        assert_eq!(sa.metadata.labels, None);
        assert_eq!(sa.metadata.uid, None);
    }
}
