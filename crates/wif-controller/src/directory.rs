//! Per-identity state shared by all bindings of one identity:
//!
//! - one async lock per identity, held while its credentials are read, planned and written, so
//!   writes to one identity are serialised across the whole controller (ARM answers 409 to
//!   concurrent writes; Graph has no such guard but the same race);
//! - the identity's credential list, cached for a short time so that one list serves every
//!   binding of the identity in a resync (their resyncs are aligned, see [`next_resync`]);
//! - resolved identities (client id → object id, resource id → client id), which do not change.

use std::{
    collections::HashMap,
    hash::{DefaultHasher, Hash, Hasher},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::azure::{FederatedCredential, Parent};

/// The last credential list of one identity and when it was fetched.
#[derive(Debug, Default)]
struct ListState {
    credentials: Vec<FederatedCredential>,
    fetched: Option<Instant>,
    /// Whether it was ever listed (an invalidated list is still the best count we have).
    listed: bool,
}

/// The cached credential list of one identity, edited under the identity's lock. The same list
/// can be read without the lock ([`Directory::peek`]): every write of this controller goes
/// through it, so it stays current while a write is in flight.
#[derive(Debug, Default)]
pub struct Listing {
    state: Arc<Mutex<ListState>>,
}

impl Listing {
    /// The cached list, if fetched less than `ttl` ago.
    pub fn fresh(&self, ttl: Duration) -> Option<Vec<FederatedCredential>> {
        let state = lock(&self.state);
        state
            .fetched
            .filter(|at| at.elapsed() < ttl)
            .map(|_| state.credentials.clone())
    }

    /// Stores a freshly fetched list.
    pub fn set(&mut self, credentials: Vec<FederatedCredential>) {
        let mut state = lock(&self.state);
        state.credentials = credentials;
        state.fetched = Some(Instant::now());
        state.listed = true;
    }

    /// Forgets the list (after a surprise: the next binding lists again).
    pub(crate) fn invalidate(&mut self) {
        lock(&self.state).fetched = None;
    }

    /// Records a credential we created or updated.
    pub fn upsert(&mut self, credential: FederatedCredential) {
        let mut state = lock(&self.state);
        match state
            .credentials
            .iter_mut()
            .find(|c| c.name.eq_ignore_ascii_case(&credential.name))
        {
            Some(existing) => *existing = credential,
            None => state.credentials.push(credential),
        }
    }

    /// Records a credential we deleted.
    pub fn remove(&mut self, name: &str) {
        lock(&self.state)
            .credentials
            .retain(|c| !c.name.eq_ignore_ascii_case(name));
    }
}

/// A list read without the identity's lock.
#[derive(Clone, Debug)]
pub struct Peeked {
    /// The credentials.
    pub credentials: Vec<FederatedCredential>,
    /// Whether it was fetched less than the list TTL ago (and not invalidated since).
    pub fresh: bool,
}

/// What a binding's identity resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedIdentity {
    /// Where its credentials live.
    pub parent: Parent,
    /// Client id (for the ServiceAccount annotation and token exchanges).
    pub client_id: String,
    /// Tenant.
    pub tenant_id: String,
}

/// The per-identity state of the controller.
#[derive(Debug)]
pub struct Directory {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<Listing>>>>,
    /// The lists behind the locks, readable without them.
    lists: Mutex<HashMap<String, Arc<Mutex<ListState>>>>,
    /// One lock per pool: placements of a pool are decided one at a time.
    pools: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Credential names placed on an identity (by its key) and not created yet.
    reservations: Mutex<HashMap<String, Vec<String>>>,
    resolved: Mutex<HashMap<String, (ResolvedIdentity, Instant)>>,
    /// How long a list serves other bindings of the identity.
    pub list_ttl: Duration,
    /// How long a resolved identity is reused.
    pub resolve_ttl: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Directory {
    /// An empty directory.
    pub fn new(list_ttl: Duration, resolve_ttl: Duration) -> Self {
        Self {
            locks: Mutex::default(),
            lists: Mutex::default(),
            pools: Mutex::default(),
            reservations: Mutex::default(),
            resolved: Mutex::default(),
            list_ttl,
            resolve_ttl,
        }
    }

    /// Waits for the identity's lock; while it is held, nobody else in this controller reads or
    /// writes the identity's credentials.
    pub async fn lock(&self, parent_key: &str) -> OwnedMutexGuard<Listing> {
        self.entry(parent_key).lock_owned().await
    }

    /// The identity's lock if nobody holds it.
    pub fn try_lock(&self, parent_key: &str) -> Option<OwnedMutexGuard<Listing>> {
        self.entry(parent_key).try_lock_owned().ok()
    }

    fn entry(&self, parent_key: &str) -> Arc<AsyncMutex<Listing>> {
        let mut locks = lock(&self.locks);
        if let Some(entry) = locks.get(parent_key) {
            return entry.clone();
        }
        let state = Arc::new(Mutex::new(ListState::default()));
        lock(&self.lists).insert(parent_key.to_owned(), state.clone());
        let entry = Arc::new(AsyncMutex::new(Listing { state }));
        locks.insert(parent_key.to_owned(), entry.clone());
        entry
    }

    /// The identity's last list without waiting for its lock (a write in flight keeps it
    /// current); `None` if it was never listed.
    pub fn peek(&self, parent_key: &str) -> Option<Peeked> {
        let state = lock(&self.lists).get(parent_key)?.clone();
        let state = lock(&state);
        state.listed.then(|| Peeked {
            credentials: state.credentials.clone(),
            fresh: state.fetched.is_some_and(|at| at.elapsed() < self.list_ttl),
        })
    }

    /// The lock of pool `name`, held (never across an await) while a placement is decided and
    /// its slot reserved.
    pub fn pool_lock(&self, name: &str) -> Arc<Mutex<()>> {
        lock(&self.pools).entry(name.to_owned()).or_default().clone()
    }

    /// Reserves a slot on identity `parent_key` for credential `name` (a pool placement whose
    /// credential is being created).
    pub(crate) fn reserve(&self, parent_key: &str, name: &str) {
        let mut map = lock(&self.reservations);
        let names = map.entry(parent_key.to_owned()).or_default();
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name.to_owned());
        }
    }

    /// Releases a reservation (the credential was written, or the write failed).
    pub fn release(&self, parent_key: &str, name: &str) {
        let mut map = lock(&self.reservations);
        if let Some(names) = map.get_mut(parent_key) {
            names.retain(|n| !n.eq_ignore_ascii_case(name));
        }
    }

    /// Names reserved on identity `parent_key`.
    pub(crate) fn reserved(&self, parent_key: &str) -> Vec<String> {
        lock(&self.reservations)
            .get(parent_key)
            .cloned()
            .unwrap_or_default()
    }

    /// Number of identities seen.
    pub fn identities(&self) -> usize {
        lock(&self.locks).len()
    }

    /// A cached resolution of `key`.
    pub fn resolved(&self, key: &str) -> Option<ResolvedIdentity> {
        let map = lock(&self.resolved);
        map.get(key)
            .filter(|(_, at)| at.elapsed() < self.resolve_ttl)
            .map(|(r, _)| r.clone())
    }

    /// Caches a resolution.
    pub(crate) fn remember(&self, key: String, resolved: ResolvedIdentity) {
        lock(&self.resolved).insert(key, (resolved, Instant::now()));
    }

    /// Forgets a resolution (the identity was not found where it was).
    pub fn forget(&self, key: &str) {
        lock(&self.resolved).remove(key);
    }
}

/// Delay until the next periodic resync of a binding of identity `parent_key`.
///
/// Each identity gets a fixed phase in the interval (a hash of its key), so identities are
/// spread over the interval (no thundering herd) while all bindings of one identity come due
/// together and share one list. `jitter` (random, small) spreads the bindings of one identity
/// a little. Never less than half an interval.
pub(crate) fn next_resync(
    parent_key: &str,
    interval: Duration,
    jitter: Duration,
    now: SystemTime,
) -> Duration {
    let interval_ms = interval.as_millis().max(1);
    let mut hasher = DefaultHasher::new();
    parent_key.hash(&mut hasher);
    let phase = u128::from(hasher.finish()) % interval_ms;
    let now_ms = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    let since_phase = (now_ms + interval_ms - phase) % interval_ms;
    let mut wait = interval_ms - since_phase;
    if wait < interval_ms / 2 {
        wait += interval_ms;
    }
    let spread = if jitter.is_zero() {
        Duration::ZERO
    } else {
        Duration::from_millis(rand::random::<u64>() % (jitter.as_millis().max(1) as u64))
    };
    Duration::from_millis(u64::try_from(wait).unwrap_or(u64::MAX)) + spread
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fic(name: &str) -> FederatedCredential {
        FederatedCredential {
            id: name.into(),
            name: name.into(),
            issuer: "i".into(),
            subject: "s".into(),
            audiences: vec!["a".into()],
            description: None,
        }
    }

    #[test]
    fn listing_freshness_and_edits() {
        let mut l = Listing::default();
        assert!(l.fresh(Duration::from_secs(10)).is_none());
        l.set(vec![fic("a")]);
        assert_eq!(l.fresh(Duration::from_secs(10)).map(|l| l.len()), Some(1));
        assert!(l.fresh(Duration::ZERO).is_none());
        l.upsert(fic("B"));
        l.upsert(fic("b"));
        assert_eq!(l.fresh(Duration::from_secs(10)).map(|l| l.len()), Some(2));
        l.remove("A");
        assert_eq!(l.fresh(Duration::from_secs(10)).map(|l| l.len()), Some(1));
        l.invalidate();
        assert!(l.fresh(Duration::from_secs(10)).is_none());
    }

    #[test]
    fn resyncs_of_one_identity_align() {
        let interval = Duration::from_secs(600);
        let now = SystemTime::now();
        let a = next_resync("arm/x", interval, Duration::ZERO, now);
        let b = next_resync("arm/x", interval, Duration::ZERO, now + Duration::from_millis(1));
        // Both land on the same phase: one millisecond later, one millisecond sooner.
        assert!(a.abs_diff(b) <= Duration::from_millis(1), "{a:?} {b:?}");
        assert!(a >= interval / 2 && a <= interval + interval / 2, "{a:?}");
        // Different identities are spread.
        let phases: std::collections::HashSet<u64> = (0..20)
            .map(|i| next_resync(&format!("graph/t/{i}"), interval, Duration::ZERO, now).as_secs())
            .collect();
        assert!(phases.len() > 10, "{phases:?}");
    }

    #[test]
    fn jitter_is_bounded() {
        let interval = Duration::from_secs(10);
        for _ in 0..50 {
            let d = next_resync("k", interval, Duration::from_millis(300), SystemTime::now());
            assert!(d <= interval + interval / 2 + Duration::from_millis(300));
        }
    }

    #[test]
    fn reservations_are_per_identity_and_released() {
        let dir = Directory::new(Duration::from_secs(1), Duration::from_secs(1));
        dir.reserve("a", "x");
        dir.reserve("a", "X");
        dir.reserve("b", "y");
        assert_eq!(dir.reserved("a"), ["x"]);
        dir.release("a", "x");
        assert!(dir.reserved("a").is_empty());
        assert_eq!(dir.reserved("b"), ["y"]);
    }

    #[tokio::test]
    async fn lists_are_peeked_without_the_lock() {
        let dir = Directory::new(Duration::from_secs(10), Duration::from_secs(1));
        assert!(dir.peek("k").is_none());
        let mut guard = dir.lock("k").await;
        assert!(dir.peek("k").is_none(), "never listed");
        guard.set(vec![fic("a")]);
        guard.upsert(fic("b"));
        // Held by a writer, still readable, and current with its writes.
        let p = dir.peek("k").unwrap();
        assert!(p.fresh);
        assert_eq!(p.credentials.len(), 2);
        assert!(dir.try_lock("k").is_none());
        guard.invalidate();
        let p = dir.peek("k").unwrap();
        assert!(
            !p.fresh && p.credentials.len() == 2,
            "an invalidated list still counts"
        );
        drop(guard);
        assert!(dir.try_lock("k").is_some());
    }

    #[tokio::test]
    async fn one_identity_one_writer() {
        let dir = Arc::new(Directory::new(Duration::from_secs(1), Duration::from_secs(1)));
        let guard = dir.lock("k").await;
        let other = {
            let dir = dir.clone();
            tokio::spawn(async move {
                let _g = dir.lock("k").await;
            })
        };
        // A different identity is not blocked.
        let _free = dir.lock("other").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!other.is_finished());
        drop(guard);
        other.await.unwrap();
        assert_eq!(dir.identities(), 2);
    }
}
