//! ServiceAccount metadata, cached.
//!
//! The webhook needs only names and the `azure.workload.identity/` annotations and labels, so it
//! watches `PartialObjectMeta` and keeps a [`MetaView`] of each ServiceAccount: a few hundred
//! bytes, where a full `ObjectMeta` in kube's reflector store is several times that. A pod
//! created right after its ServiceAccount can arrive before the watch event, so a miss asks the
//! API server once, with a short timeout.
//!
//! Only ServiceAccounts that carry an `azure.workload.identity/` key are kept: on a big cluster
//! most ServiceAccounts have nothing to do with wif, and the cache should not grow with them. A
//! labelled pod whose ServiceAccount has no wif key (a misconfiguration the answer warns about)
//! is looked up on the API server like a miss.
//!
//! The initial list is a streaming list (`sendInitialEvents`, the `WatchList` feature, on by
//! default since Kubernetes 1.34): objects arrive one watch event at a time and are reduced as
//! they arrive, so neither the full list nor a page of it is ever held in memory (a page of 500
//! decoded ServiceAccounts, managed fields included, costs several MiB of peak RSS). An API server
//! that refuses streaming lists (the feature gate off, as on 1.27–1.33 by default except 1.32) is
//! listed in pages of [`LIST_PAGE_SIZE`] instead.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{
    Api, Client,
    core::PartialObjectMeta,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, watcher},
    },
};
use tokio_util::sync::CancellationToken;

use crate::view::MetaView;

/// A cached ServiceAccount: its name, namespace and `azure.workload.identity/` keys.
pub type CachedServiceAccount = MetaView<'static>;

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

/// ServiceAccounts by namespace, then name (nested so a lookup borrows both strings).
#[derive(Default)]
pub(crate) struct Index {
    namespaces: HashMap<Box<str>, HashMap<Box<str>, Arc<CachedServiceAccount>>>,
    len: usize,
}

impl Index {
    /// Adds or replaces a ServiceAccount; one without a name is ignored.
    pub fn insert(&mut self, sa: CachedServiceAccount) {
        let Some(name) = sa.name.as_deref() else { return };
        let names = self
            .namespaces
            .entry(sa.namespace.as_deref().unwrap_or_default().into())
            .or_default();
        if names.insert(name.into(), Arc::new(sa)).is_none() {
            self.len += 1;
        }
    }

    /// Removes a ServiceAccount.
    pub fn remove(&mut self, namespace: &str, name: &str) {
        let Some(names) = self.namespaces.get_mut(namespace) else {
            return;
        };
        if names.remove(name).is_some() {
            self.len -= 1;
        }
        if names.is_empty() {
            self.namespaces.remove(namespace);
        }
    }

    /// Looks a ServiceAccount up.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<CachedServiceAccount>> {
        self.namespaces.get(namespace)?.get(name).cloned()
    }

    /// Number of ServiceAccounts.
    pub fn len(&self) -> usize {
        self.len
    }
}

/// Objects per page of the initial (and any re-) list of ServiceAccounts, when the API server
/// does not serve streaming lists.
pub(crate) const LIST_PAGE_SIZE: u32 = 500;

/// How the initial list of ServiceAccounts is received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InitialList {
    /// One watch with `sendInitialEvents=true`: objects arrive one event at a time.
    Streaming,
    /// A paged list ([`LIST_PAGE_SIZE`] objects a page), then a watch.
    Paged,
}

impl InitialList {
    /// The name logged and reported for this strategy.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Streaming => "streaming",
            Self::Paged => "paged",
        }
    }

    fn watcher_config(self) -> watcher::Config {
        match self {
            Self::Streaming => watcher::Config::default().streaming_lists(),
            Self::Paged => watcher::Config::default().page_size(LIST_PAGE_SIZE),
        }
    }
}

/// Whether a watcher error says the API server does not serve streaming lists: it answers the
/// initial watch with `422 Invalid` ("sendInitialEvents is forbidden for watch unless the
/// WatchList feature gate is enabled").
pub(crate) fn refuses_streaming_lists(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::WatchStartFailed(kube::Error::Api(status)) => status.is_invalid(),
        watcher::Error::WatchError(status) => status.is_invalid(),
        _ => false,
    }
}

/// Applies watcher events to a shared [`Index`]. A relist is collected aside and swapped in
/// whole when it is complete, so readers never see a half-listed cache.
#[derive(Default)]
pub(crate) struct Reflector {
    live: Arc<RwLock<Index>>,
    relist: Option<Index>,
}

impl Reflector {
    /// Applies one event; returns true when it completed a (re)list.
    pub fn apply(&mut self, event: Event<PartialObjectMeta<ServiceAccount>>) -> bool {
        match event {
            Event::Init => self.relist = Some(Index::default()),
            Event::InitApply(sa) => {
                if let Some(relist) = self.relist.as_mut() {
                    let sa = compact(&sa);
                    if has_wif_keys(&sa) {
                        relist.insert(sa);
                    }
                }
            }
            Event::InitDone => {
                let done = self.relist.take().unwrap_or_default();
                *write(&self.live) = done;
                return true;
            }
            Event::Apply(sa) => {
                let sa = compact(&sa);
                if has_wif_keys(&sa) {
                    write(&self.live).insert(sa);
                } else {
                    // Its wif keys were removed (or it never had any): a lookup now asks the API.
                    write(&self.live).remove(
                        sa.namespace.as_deref().unwrap_or_default(),
                        sa.name.as_deref().unwrap_or_default(),
                    );
                }
            }
            Event::Delete(sa) => write(&self.live).remove(
                sa.metadata.namespace.as_deref().unwrap_or_default(),
                sa.metadata.name.as_deref().unwrap_or_default(),
            ),
        }
        false
    }

    /// The index readers share.
    pub fn index(&self) -> Arc<RwLock<Index>> {
        self.live.clone()
    }
}

/// A poisoned lock only means a panic elsewhere while holding it; the index itself is whole
/// (every mutation is a single map operation), so keep serving it.
fn write(lock: &RwLock<Index>) -> std::sync::RwLockWriteGuard<'_, Index> {
    lock.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read(lock: &RwLock<Index>) -> std::sync::RwLockReadGuard<'_, Index> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keeps only what the webhook reads: the name, the namespace, and the labels and annotations
/// under `azure.workload.identity/`. Everything else (managed fields, `last-applied-configuration`,
/// other teams' annotations) is most of an object's size and is dropped before it is cached.
pub fn compact(sa: &PartialObjectMeta<ServiceAccount>) -> CachedServiceAccount {
    MetaView::from(&sa.metadata).into_owned()
}

/// Whether the webhook has anything to read on this ServiceAccount.
pub(crate) fn has_wif_keys(sa: &CachedServiceAccount) -> bool {
    !sa.annotations.is_empty() || !sa.labels.is_empty()
}

/// ServiceAccount metadata by namespace and name, from a watch, with an API read on a miss.
#[derive(Clone)]
pub struct ServiceAccountCache {
    index: Arc<RwLock<Index>>,
    client: Option<Client>,
    miss_timeout: Duration,
    synced: Arc<AtomicBool>,
}

impl ServiceAccountCache {
    /// Starts a cluster-wide metadata watch of ServiceAccounts; it runs until `stop`.
    pub fn spawn(client: Client, miss_timeout: Duration, stop: CancellationToken) -> Self {
        let mut reflector = Reflector::default();
        let synced = Arc::new(AtomicBool::new(false));
        let cache = Self {
            index: reflector.index(),
            client: Some(client.clone()),
            miss_timeout,
            synced: synced.clone(),
        };
        // `Api<PartialObjectMeta<_>>` lists and watches with metadata-only requests.
        let api: Api<PartialObjectMeta<ServiceAccount>> = Api::all(client);
        tokio::spawn(async move {
            let mut strategy = InitialList::Streaming;
            loop {
                let stream = watcher(api.clone(), strategy.watcher_config()).default_backoff();
                let mut stream = std::pin::pin!(stream);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        item = stream.next() => match item {
                            Some(Ok(event)) => {
                                if reflector.apply(event) && !synced.swap(true, Ordering::AcqRel) {
                                    let count = read(&reflector.live).len();
                                    tracing::info!(
                                        service_accounts = count,
                                        initial_list = strategy.as_str(),
                                        "ServiceAccount cache synced"
                                    );
                                }
                            }
                            Some(Err(error))
                                if strategy == InitialList::Streaming && refuses_streaming_lists(&error) =>
                            {
                                tracing::info!(
                                    %error,
                                    "the API server does not serve streaming lists; listing ServiceAccounts in pages"
                                );
                                strategy = InitialList::Paged;
                                break;
                            }
                            Some(Err(error)) => tracing::warn!(%error, "ServiceAccount watch error; retrying"),
                            None => return,
                        }
                    }
                }
            }
        });
        cache
    }

    /// Whether the initial list has been received.
    pub(crate) fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Number of cached ServiceAccounts.
    pub fn len(&self) -> usize {
        read(&self.index).len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Looks a ServiceAccount up; `Ok(None)` means it does not exist.
    /// The second value says whether the API server was asked (a cache miss).
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Option<Arc<CachedServiceAccount>>, bool), LookupError> {
        if let Some(sa) = read(&self.index).get(namespace, name) {
            return Ok((Some(sa), false));
        }
        let Some(client) = &self.client else {
            return Ok((None, false));
        };
        let api: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
        match tokio::time::timeout(self.miss_timeout, api.get_metadata_opt(name)).await {
            Ok(Ok(found)) => Ok((found.map(|sa| Arc::new(compact(&sa))), true)),
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

/// A cache holding exactly `accounts`, synced, where a miss is a miss (tests, benchmarks).
pub fn static_cache(accounts: impl IntoIterator<Item = CachedServiceAccount>) -> ServiceAccountCache {
    let mut index = Index::default();
    for sa in accounts {
        index.insert(sa);
    }
    ServiceAccountCache {
        index: Arc::new(RwLock::new(index)),
        client: None,
        miss_timeout: Duration::from_secs(2),
        synced: Arc::new(AtomicBool::new(true)),
    }
}

/// A ServiceAccount's metadata as the cache holds it (tests, benchmarks).
pub fn cached(namespace: &str, name: &str, annotations: &[(&str, &str)]) -> CachedServiceAccount {
    MetaView {
        name: Some(name.to_owned().into()),
        namespace: Some(namespace.to_owned().into()),
        annotations: annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..MetaView::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn sa(ns: &str, name: &str, annotations: &[(&str, &str)]) -> PartialObjectMeta<ServiceAccount> {
        let mut sa = PartialObjectMeta::<ServiceAccount>::default();
        sa.metadata.name = Some(name.to_owned());
        sa.metadata.namespace = Some(ns.to_owned());
        sa.metadata.uid = Some("u".into());
        sa.metadata.labels = Some([("team".to_owned(), "x".to_owned())].into());
        sa.metadata.annotations = Some(
            annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        );
        sa
    }

    fn status(code: u16, reason: &str) -> Box<kube::core::Status> {
        Box::new(
            serde_json::from_value(serde_json::json!({
                "status": "Failure", "code": code, "reason": reason,
                "message": "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled"
            }))
            .unwrap(),
        )
    }

    #[test]
    fn only_an_invalid_answer_to_the_initial_watch_means_no_streaming_lists() {
        let refused = watcher::Error::WatchStartFailed(kube::Error::Api(status(422, "Invalid")));
        assert!(refuses_streaming_lists(&refused));
        assert!(refuses_streaming_lists(&watcher::Error::WatchError(status(
            422, "Invalid"
        ))));
        // RBAC and outages are retried as they are, not answered by changing strategy.
        let forbidden = watcher::Error::WatchStartFailed(kube::Error::Api(status(403, "Forbidden")));
        assert!(!refuses_streaming_lists(&forbidden));
        assert!(!refuses_streaming_lists(&watcher::Error::WatchError(status(
            500,
            "InternalError"
        ))));
        assert!(!refuses_streaming_lists(&watcher::Error::NoResourceVersion));
    }

    #[test]
    fn compact_keeps_only_what_the_webhook_reads() {
        let full = sa(
            "ns",
            "api",
            &[
                ("azure.workload.identity/client-id", "cid"),
                ("kubectl.kubernetes.io/last-applied-configuration", "{...big...}"),
            ],
        );
        let c = compact(&full);
        assert_eq!(c.name.as_deref(), Some("api"));
        assert_eq!(c.namespace.as_deref(), Some("ns"));
        assert_eq!(
            c.annotations.get("azure.workload.identity/client-id"),
            Some("cid")
        );
        assert_eq!(c.annotations.len(), 1);
        assert!(c.labels.is_empty());
    }

    const CID: (&str, &str) = ("azure.workload.identity/client-id", "c");

    #[test]
    fn reflector_swaps_a_relist_in_whole_and_applies_changes() {
        let mut r = Reflector::default();
        let index = r.index();
        assert!(!r.apply(Event::Init));
        assert!(!r.apply(Event::InitApply(sa("a", "one", &[CID]))));
        assert!(!r.apply(Event::InitApply(sa("a", "two", &[CID]))));
        assert!(read(&index).len() == 0, "a relist is invisible until done");
        assert!(r.apply(Event::InitDone));
        assert_eq!(read(&index).len(), 2);

        r.apply(Event::Apply(sa(
            "b",
            "three",
            &[("azure.workload.identity/client-id", "c")],
        )));
        r.apply(Event::Apply(sa(
            "b",
            "three",
            &[("azure.workload.identity/client-id", "d")],
        )));
        assert_eq!(read(&index).len(), 3, "an update replaces");
        let three = read(&index).get("b", "three").unwrap();
        assert_eq!(
            three.annotations.get("azure.workload.identity/client-id"),
            Some("d")
        );

        r.apply(Event::Delete(sa("a", "one", &[CID])));
        assert!(read(&index).get("a", "one").is_none());
        assert_eq!(read(&index).len(), 2);

        // A relist after a watch gap drops what was deleted meanwhile.
        r.apply(Event::Init);
        r.apply(Event::InitApply(sa("b", "three", &[CID])));
        assert_eq!(read(&index).len(), 2, "old contents served during the relist");
        r.apply(Event::InitDone);
        assert_eq!(read(&index).len(), 1);
        assert!(read(&index).get("a", "two").is_none());
    }

    #[test]
    fn only_service_accounts_with_wif_keys_are_cached() {
        let mut r = Reflector::default();
        let index = r.index();
        r.apply(Event::Init);
        for i in 0..1000 {
            let name = format!("plain-{i}");
            r.apply(Event::InitApply(sa("a", &name, &[("team", "x")])));
        }
        r.apply(Event::InitApply(sa("a", "wif", &[CID])));
        r.apply(Event::InitApply(sa(
            "a",
            "misspelt",
            &[("azure.workload.identity/clientid", "c")],
        )));
        assert!(r.apply(Event::InitDone));
        assert_eq!(
            read(&index).len(),
            2,
            "1,000 ServiceAccounts without wif keys cost nothing"
        );
        assert!(read(&index).get("a", "plain-7").is_none());
        assert!(
            read(&index).get("a", "misspelt").is_some(),
            "a misspelt wif key is kept, to be explained"
        );

        // Gaining a key caches it; losing its last key evicts it.
        r.apply(Event::Apply(sa("a", "plain-7", &[CID])));
        assert!(read(&index).get("a", "plain-7").is_some());
        r.apply(Event::Apply(sa("a", "plain-7", &[("team", "y")])));
        assert!(read(&index).get("a", "plain-7").is_none());
        assert_eq!(read(&index).len(), 2);
    }

    #[tokio::test]
    async fn static_cache_finds_what_it_holds_and_misses_the_rest() {
        let cache = static_cache([cached(
            "ns",
            "api",
            &[("azure.workload.identity/client-id", "cid")],
        )]);
        let (found, missed) = cache.get("ns", "api").await.unwrap();
        assert!(!missed);
        assert_eq!(
            found
                .unwrap()
                .annotations
                .get("azure.workload.identity/client-id"),
            Some("cid")
        );
        assert!(cache.get("ns", "other").await.unwrap().0.is_none());
        assert!(cache.get("other", "api").await.unwrap().0.is_none());
        assert_eq!(cache.len(), 1);
    }
}
