//! Which bindings name which ServiceAccount, kept from the binding watch events, so that a
//! ServiceAccount or Namespace event finds its bindings without scanning the binding cache (at
//! 10,000 bindings, the first lists of ServiceAccounts and namespaces made 10,000 x 10,000
//! comparisons, and a clone of the whole cache per event).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use kube::{
    ResourceExt,
    runtime::{reflector::ObjectRef, watcher},
};
use wif_api::FederatedIdentityBinding;

/// The bindings of one namespace.
#[derive(Debug, Default)]
struct Namespaced {
    /// Binding name → the ServiceAccount it names (to move or drop it on a change).
    account_of: HashMap<String, String>,
    /// (ServiceAccount, binding name), in order: one ordered set rather than a set per
    /// ServiceAccount, whose nodes would hold room for 11 names to keep one.
    links: BTreeSet<(String, String)>,
}

/// Bindings by namespace and ServiceAccount.
#[derive(Debug, Default)]
struct Entries {
    namespaces: HashMap<String, Namespaced>,
}

impl Entries {
    fn insert(&mut self, b: &FederatedIdentityBinding) {
        let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
        let account = &b.spec.service_account_name;
        let entry = self.namespaces.entry(ns).or_default();
        if let Some(old) = entry.account_of.insert(name.clone(), account.clone()) {
            if old == *account {
                return;
            }
            entry.unlink(&old, &name);
        }
        entry.links.insert((account.clone(), name));
    }

    fn remove(&mut self, b: &FederatedIdentityBinding) {
        let (ns, name) = (b.namespace().unwrap_or_default(), b.name_any());
        let Some(entry) = self.namespaces.get_mut(&ns) else {
            return;
        };
        // The account indexed, not the one the deleted object names: they differ if an update
        // was missed.
        if let Some(account) = entry.account_of.remove(&name) {
            entry.unlink(&account, &name);
        }
        if entry.account_of.is_empty() {
            self.namespaces.remove(&ns);
        }
    }
}

impl Namespaced {
    fn unlink(&mut self, account: &str, name: &str) {
        self.links.remove(&(account.to_owned(), name.to_owned()));
    }

    /// The names of `account`'s bindings, in order.
    fn names_of<'a>(&'a self, account: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.links
            .range((account.to_owned(), String::new())..)
            .take_while(move |(a, _)| a == account)
            .map(|(_, name)| name.as_str())
    }
}

/// Bindings by `(namespace, spec.serviceAccountName)`, fed every watch event of the binding
/// stream. A relist (`Init`, `InitApply`…, `InitDone`) builds a fresh index that replaces the
/// old one at `InitDone`, as the reflector's store does: a binding deleted while the watch was
/// down is dropped then.
#[derive(Debug, Default)]
pub struct BindingIndex {
    current: Entries,
    relist: Entries,
}

impl BindingIndex {
    /// Applies one watch event.
    pub fn apply(&mut self, event: &watcher::Event<FederatedIdentityBinding>) {
        match event {
            watcher::Event::Apply(b) => self.current.insert(b),
            watcher::Event::Delete(b) => self.current.remove(b),
            watcher::Event::Init => self.relist = Entries::default(),
            watcher::Event::InitApply(b) => self.relist.insert(b),
            watcher::Event::InitDone => self.current = std::mem::take(&mut self.relist),
        }
    }

    /// The bindings naming ServiceAccount `name` of `namespace`, by name.
    pub fn of_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Vec<ObjectRef<FederatedIdentityBinding>> {
        self.current
            .namespaces
            .get(namespace)
            .map(|n| refs(namespace, n.names_of(name)))
            .unwrap_or_default()
    }

    /// The bindings of `namespace`, by ServiceAccount then name.
    pub fn of_namespace(&self, namespace: &str) -> Vec<ObjectRef<FederatedIdentityBinding>> {
        self.current
            .namespaces
            .get(namespace)
            .map(|n| refs(namespace, n.links.iter().map(|(_, name)| name.as_str())))
            .unwrap_or_default()
    }

    /// How many bindings are indexed.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.namespaces.values().map(|n| n.account_of.len()).sum()
    }
}

/// One [`BindingIndex`] for the binding stream that feeds it and the triggers and reconciles
/// that read it.
#[derive(Clone, Debug, Default)]
pub struct SharedBindingIndex(Arc<Mutex<BindingIndex>>);

impl SharedBindingIndex {
    /// An index of `bindings`, as after their initial list.
    pub fn of(bindings: impl IntoIterator<Item = FederatedIdentityBinding>) -> Self {
        let index = Self::default();
        index.apply(&watcher::Event::Init);
        for b in bindings {
            index.apply(&watcher::Event::InitApply(b));
        }
        index.apply(&watcher::Event::InitDone);
        index
    }

    /// Applies one watch event.
    pub fn apply(&self, event: &watcher::Event<FederatedIdentityBinding>) {
        self.lock().apply(event);
    }

    /// See [`BindingIndex::of_service_account`].
    pub fn of_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Vec<ObjectRef<FederatedIdentityBinding>> {
        self.lock().of_service_account(namespace, name)
    }

    /// See [`BindingIndex::of_namespace`].
    pub fn of_namespace(&self, namespace: &str) -> Vec<ObjectRef<FederatedIdentityBinding>> {
        self.lock().of_namespace(namespace)
    }

    fn lock(&self) -> MutexGuard<'_, BindingIndex> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn refs<'a>(
    namespace: &str,
    names: impl Iterator<Item = &'a str>,
) -> Vec<ObjectRef<FederatedIdentityBinding>> {
    names.map(|n| ObjectRef::new(n).within(namespace)).collect()
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;
    use serde_json::json;

    use super::*;

    fn binding(ns: &str, name: &str, account: &str) -> FederatedIdentityBinding {
        serde_json::from_value(json!({
            "apiVersion": "azure.workload.identity/v1alpha1",
            "kind": "FederatedIdentityBinding",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "serviceAccountName": account,
                "identity": {"application": {"clientId": "00000000-0000-0000-0000-000000000001"}},
            },
        }))
        .expect("a binding")
    }

    fn names(refs: Vec<ObjectRef<FederatedIdentityBinding>>) -> Vec<String> {
        refs.into_iter()
            .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
            .collect()
    }

    fn index(events: Vec<Event<FederatedIdentityBinding>>) -> BindingIndex {
        let mut index = BindingIndex::default();
        for e in &events {
            index.apply(e);
        }
        index
    }

    fn apply(ns: &str, name: &str, account: &str) -> Event<FederatedIdentityBinding> {
        Event::Apply(binding(ns, name, account))
    }

    fn delete(ns: &str, name: &str, account: &str) -> Event<FederatedIdentityBinding> {
        Event::Delete(binding(ns, name, account))
    }

    fn init_apply(ns: &str, name: &str, account: &str) -> Event<FederatedIdentityBinding> {
        Event::InitApply(binding(ns, name, account))
    }

    /// Events, then (namespace, ServiceAccount) → bindings, namespace → bindings, and the count.
    #[rstest::rstest]
    #[case::applied(
        vec![apply("a", "b1", "sa"), apply("a", "b2", "sa"), apply("a", "b3", "other"), apply("z", "b1", "sa")],
        &["a/b1", "a/b2"], &["a/b3", "a/b1", "a/b2"], 4
    )]
    #[case::applied_twice(vec![apply("a", "b1", "sa"), apply("a", "b1", "sa")], &["a/b1"], &["a/b1"], 1)]
    #[case::deleted(vec![apply("a", "b1", "sa"), apply("a", "b2", "sa"), delete("a", "b1", "sa")], &["a/b2"], &["a/b2"], 1)]
    #[case::deleted_unknown(vec![apply("a", "b1", "sa"), delete("a", "nope", "sa"), delete("q", "b1", "sa")], &["a/b1"], &["a/b1"], 1)]
    #[case::moved_off(vec![apply("a", "b1", "sa"), apply("a", "b1", "other")], &[], &["a/b1"], 1)]
    #[case::moved_on(vec![apply("a", "b1", "other"), apply("a", "b1", "sa")], &["a/b1"], &["a/b1"], 1)]
    #[case::deleted_after_a_missed_move(vec![apply("a", "b1", "other"), delete("a", "b1", "sa")], &[], &[], 0)]
    #[case::relist_drops_stale(
        vec![apply("a", "gone", "sa"), apply("a", "kept", "sa"), Event::Init, init_apply("a", "kept", "sa"), Event::InitDone],
        &["a/kept"], &["a/kept"], 1
    )]
    #[case::relist_moves(
        vec![apply("a", "b1", "other"), Event::Init, init_apply("a", "b1", "sa"), Event::InitDone],
        &["a/b1"], &["a/b1"], 1
    )]
    #[case::relist_of_nothing(vec![apply("a", "b1", "sa"), Event::Init, Event::InitDone], &[], &[], 0)]
    #[case::restarted_relist(
        vec![Event::Init, init_apply("a", "half", "sa"), Event::Init, init_apply("a", "b1", "sa"), Event::InitDone],
        &["a/b1"], &["a/b1"], 1
    )]
    fn lookups_follow_the_events(
        #[case] events: Vec<Event<FederatedIdentityBinding>>,
        #[case] of_sa: &[&str],
        #[case] of_ns: &[&str],
        #[case] len: usize,
    ) {
        let index = index(events);
        assert_eq!(names(index.of_service_account("a", "sa")), of_sa);
        assert_eq!(names(index.of_namespace("a")), of_ns);
        assert_eq!(index.len(), len);
    }

    #[test]
    fn the_old_index_answers_until_the_relist_is_done() {
        let mut index = index(vec![
            apply("a", "old", "sa"),
            Event::Init,
            init_apply("a", "new", "sa"),
        ]);
        assert_eq!(names(index.of_service_account("a", "sa")), ["a/old"]);
        index.apply(&Event::InitDone);
        assert_eq!(names(index.of_service_account("a", "sa")), ["a/new"]);
    }

    #[test]
    fn namespaces_and_accounts_do_not_mix() {
        let index = index(vec![
            apply("a", "b1", "sa"),
            apply("b", "b2", "sa"),
            apply("a", "b3", "sa2"),
        ]);
        assert_eq!(names(index.of_service_account("b", "sa")), ["b/b2"]);
        assert_eq!(names(index.of_service_account("a", "sa2")), ["a/b3"]);
        assert!(index.of_service_account("c", "sa").is_empty());
        assert!(index.of_namespace("c").is_empty());
    }

    /// The old trigger mappers: a scan of the reflector's store.
    fn scan(
        store: &kube::runtime::reflector::Store<FederatedIdentityBinding>,
        ns: &str,
        account: Option<&str>,
    ) -> Vec<String> {
        let mut out: Vec<String> = store
            .state()
            .iter()
            .filter(|b| b.namespace().as_deref() == Some(ns))
            .filter(|b| account.is_none_or(|a| b.spec.service_account_name == a))
            .map(|b| format!("{ns}/{}", b.name_any()))
            .collect();
        out.sort();
        out
    }

    fn sorted(refs: Vec<ObjectRef<FederatedIdentityBinding>>) -> Vec<String> {
        let mut out = names(refs);
        out.sort();
        out
    }

    /// A small world of names, so that events collide: 2 namespaces, 4 bindings, 3 accounts.
    fn event() -> impl proptest::strategy::Strategy<Value = Event<FederatedIdentityBinding>> {
        use proptest::prelude::*;
        let b = (0..2usize, 0..4usize, 0..3usize)
            .prop_map(|(ns, name, sa)| binding(["a", "b"][ns], &format!("b{name}"), &format!("sa{sa}")));
        prop_oneof![
            4 => b.clone().prop_map(Event::Apply),
            2 => b.clone().prop_map(Event::Delete),
            1 => Just(Event::Init),
            2 => b.prop_map(Event::InitApply),
            1 => Just(Event::InitDone),
        ]
    }

    proptest::proptest! {
        /// Any sequence of watch events: the index answers what a scan of the reflector's
        /// store (fed the same events) answers, after every event.
        #[test]
        fn the_index_answers_as_a_scan_of_the_store(events in proptest::collection::vec(event(), 0..40)) {
            let (store, mut writer) = kube::runtime::reflector::store();
            let mut index = BindingIndex::default();
            for e in &events {
                writer.apply_watcher_event(e);
                index.apply(e);
                for ns in ["a", "b"] {
                    proptest::prop_assert_eq!(sorted(index.of_namespace(ns)), scan(&store, ns, None));
                    for sa in ["sa0", "sa1", "sa2"] {
                        proptest::prop_assert_eq!(sorted(index.of_service_account(ns, sa)), scan(&store, ns, Some(sa)));
                    }
                }
                proptest::prop_assert_eq!(index.len(), store.len());
            }
        }
    }

    /// The bench's layout (`make bench-controller`): 10,000 bindings in one namespace, one
    /// ServiceAccount each. Prints what one ServiceAccount event costs each way (`--nocapture`);
    /// asserts only that both find the same binding.
    #[test]
    fn at_10000_bindings_a_lookup_finds_what_the_scan_finds() {
        const N: usize = 10_000;
        const SCANNED: usize = 200;
        let (store, mut writer) = kube::runtime::reflector::store();
        let events: Vec<Event<FederatedIdentityBinding>> = std::iter::once(Event::Init)
            .chain((0..N).map(|i| init_apply("bench", &format!("b{i:04}"), &format!("b{i:04}"))))
            .chain(std::iter::once(Event::InitDone))
            .collect();
        for e in &events {
            writer.apply_watcher_event(e);
        }
        let started = std::time::Instant::now();
        let mut index = BindingIndex::default();
        for e in &events {
            index.apply(e);
        }
        let built = started.elapsed();

        let started = std::time::Instant::now();
        let found: Vec<Vec<ObjectRef<FederatedIdentityBinding>>> = (0..N)
            .map(|i| index.of_service_account("bench", &format!("b{i:04}")))
            .collect();
        let looked_up = started.elapsed();
        let started = std::time::Instant::now();
        // The old mapper, as it was.
        let scanned: Vec<Vec<ObjectRef<FederatedIdentityBinding>>> = (0..SCANNED)
            .map(|i| {
                let (ns, name) = (Some("bench".to_string()), format!("b{i:04}"));
                store
                    .state()
                    .iter()
                    .filter(|b| b.namespace() == ns && b.spec.service_account_name == name)
                    .map(|b| ObjectRef::from_obj(b.as_ref()))
                    .collect()
            })
            .collect();
        let scan_time = started.elapsed();
        assert_eq!(found[..SCANNED], scanned[..]);
        assert!(
            found
                .into_iter()
                .enumerate()
                .all(|(i, f)| names(f) == [format!("bench/b{i:04}")])
        );

        let per_lookup = looked_up / N as u32;
        let per_scan = scan_time / SCANNED as u32;
        println!(
            "{N} bindings: index built in {built:?}; per ServiceAccount event: index {per_lookup:?}, scan {per_scan:?}; \
             {N} events: index {looked_up:?}, scan {:?} (projected from {SCANNED})",
            per_scan * N as u32
        );
    }
}
