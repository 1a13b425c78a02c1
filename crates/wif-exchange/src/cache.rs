//! The token cache: one slot per (tenant, scope, claims, CAE), single-flight fetches, and
//! background refresh that keeps serving the cached token.
//!
//! Per slot, at any time at most one fetch runs (a spawned task, so a caller that gives up does
//! not cancel it for the others). A caller finds one of:
//! - a token before its refresh point: returned at once (the hot path: two uncontended locks);
//! - a token past its refresh point but still usable: returned at once, and if no fetch runs
//!   (and the last background refresh did not fail moments ago) one is started;
//! - no usable token: it joins the running fetch, or starts one.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock},
    time::{Duration, Instant},
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};

use tokio::sync::oneshot;

use crate::{error::Error, token::AccessToken};

/// After a failed background refresh, wait this long before the next one (the cached token is
/// still served; once it is no longer usable, callers wait for a fetch as on a cold cache).
const REFRESH_RETRY_INTERVAL: Duration = Duration::from_secs(30);

/// Above this many slots, slots with neither a usable token nor a running fetch are dropped.
const PRUNE_ABOVE: usize = 64;

/// What identifies a cached token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    pub tenant: String,
    pub scope: String,
    /// The caller's claims challenge as given (the CP1 merge is a function of it and `cae`).
    pub claims: Option<String>,
    pub cae: bool,
}

/// A newly issued token and the instants that govern its reuse.
pub(crate) struct Fresh {
    pub token: AccessToken,
    pub refresh_at: Instant,
    pub stale_at: Instant,
}

type SharedFetch = Shared<BoxFuture<'static, Result<AccessToken, Error>>>;

#[derive(Default)]
struct SlotState {
    cached: Option<Fresh>,
    inflight: Option<SharedFetch>,
    no_refresh_before: Option<Instant>,
}

#[derive(Default)]
struct Slot(Mutex<SlotState>);

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Every update leaves the state consistent, so a poisoned lock is still usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_idle(&self, now: Instant) -> bool {
        let st = self.lock();
        st.inflight.is_none() && st.cached.as_ref().is_none_or(|c| now >= c.stale_at)
    }
}

#[derive(Default)]
pub(crate) struct TokenCache {
    slots: RwLock<HashMap<CacheKey, Arc<Slot>>>,
}

impl TokenCache {
    /// Returns a cached token or fetches one with `fetch` (called at most once, and only when
    /// this caller starts the fetch).
    pub(crate) async fn get_or_fetch<F>(&self, key: &CacheKey, fetch: F) -> Result<AccessToken, Error>
    where
        F: FnOnce() -> BoxFuture<'static, Result<Fresh, Error>>,
    {
        let slot = self.slot(key);
        let (join, start) = {
            let mut guard = slot.lock();
            let st = &mut *guard;
            let now = Instant::now();
            if let Some(c) = &st.cached {
                if now < c.refresh_at {
                    return Ok(c.token.clone());
                }
                if now < c.stale_at {
                    let token = c.token.clone();
                    if st.inflight.is_none() && st.no_refresh_before.is_none_or(|t| now >= t) {
                        tracing::debug!("token due for refresh: refreshing in the background");
                        let (done, _) = start_fetch(st);
                        drop(guard);
                        spawn_fetch(slot, fetch(), done);
                    }
                    return Ok(token);
                }
            }
            match &st.inflight {
                Some(running) => (running.clone(), None),
                None => {
                    let (done, join) = start_fetch(st);
                    (join, Some(done))
                }
            }
        };
        if let Some(done) = start {
            spawn_fetch(slot, fetch(), done);
        }
        join.await
    }

    fn slot(&self, key: &CacheKey) -> Arc<Slot> {
        if let Some(slot) = self.slots.read().unwrap_or_else(PoisonError::into_inner).get(key) {
            return slot.clone();
        }
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        if slots.len() >= PRUNE_ABOVE && !slots.contains_key(key) {
            let now = Instant::now();
            slots.retain(|_, s| !s.is_idle(now));
        }
        slots.entry(key.clone()).or_default().clone()
    }
}

type Done = oneshot::Sender<Result<AccessToken, Error>>;

/// Marks a fetch as running (callers arriving from now on join it) and returns the sender its
/// task completes, and the future callers await. The task is spawned only after the slot lock
/// is released.
fn start_fetch(st: &mut SlotState) -> (Done, SharedFetch) {
    let (done, result) = oneshot::channel();
    let joined = async move {
        result.await.unwrap_or_else(|_| {
            Err(Error::Internal(
                "the token fetch task ended without a result".into(),
            ))
        })
    };
    let joined = joined.boxed().shared();
    st.inflight = Some(joined.clone());
    (done, joined)
}

/// Clears the slot's in-flight marker if the fetch task ends without doing so (panic, runtime
/// shutdown), so later callers start a new fetch instead of joining a dead one.
struct ClearInflight(Option<Arc<Slot>>);

impl Drop for ClearInflight {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            slot.lock().inflight = None;
        }
    }
}

/// Runs the fetch in its own task, so callers that give up do not cancel it for the others.
fn spawn_fetch(slot: Arc<Slot>, fetch: BoxFuture<'static, Result<Fresh, Error>>, done: Done) {
    let mut guard = ClearInflight(Some(slot));
    tokio::spawn(async move {
        let result = fetch.await;
        let Some(slot) = guard.0.take() else { return };
        let mut st = slot.lock();
        st.inflight = None;
        let result = match result {
            Ok(fresh) => {
                let token = fresh.token.clone();
                st.cached = Some(fresh);
                st.no_refresh_before = None;
                Ok(token)
            }
            Err(err) => {
                let now = Instant::now();
                if st.cached.as_ref().is_some_and(|c| now < c.stale_at) {
                    tracing::warn!(error = %err, "background token refresh failed; still serving the cached token");
                    st.no_refresh_before = Some(now + REFRESH_RETRY_INTERVAL);
                }
                Err(err)
            }
        };
        drop(st);
        // Nobody waiting (a background refresh) is fine.
        let _ = done.send(result);
    });
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::SystemTime,
    };

    use super::*;

    fn key(tenant: &str) -> CacheKey {
        CacheKey {
            tenant: tenant.into(),
            scope: "api://x/.default".into(),
            claims: None,
            cae: false,
        }
    }

    fn fresh(name: &str, refresh_in: Duration, usable_for: Duration) -> Fresh {
        let now = Instant::now();
        Fresh {
            token: AccessToken::new(name.to_owned(), "Bearer", SystemTime::now(), SystemTime::now()),
            refresh_at: now + refresh_in,
            stale_at: now + usable_for,
        }
    }

    /// A fetch that counts calls, waits `delay`, and yields `token-<n>`.
    fn counting(
        calls: &Arc<AtomicUsize>,
        delay: Duration,
        refresh_in: Duration,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<Fresh, Error>> + use<> {
        let calls = calls.clone();
        move || {
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(delay).await;
                Ok(fresh(
                    &format!("token-{n}"),
                    refresh_in,
                    Duration::from_secs(3600),
                ))
            }
            .boxed()
        }
    }

    fn secret(t: &AccessToken) -> String {
        t.token().expose_secret().to_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_cold_callers_share_one_fetch() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let (cache, calls) = (cache.clone(), calls.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_fetch(
                            &key("t"),
                            counting(&calls, Duration::from_millis(50), Duration::from_secs(60)),
                        )
                        .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(secret(&t.await.expect("join").expect("token")), "token-1");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn keys_are_separate_and_errors_are_not_cached() {
        let cache = TokenCache::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let long = Duration::from_secs(60);
        cache
            .get_or_fetch(&key("a"), counting(&calls, Duration::ZERO, long))
            .await
            .expect("a");
        cache
            .get_or_fetch(&key("a"), counting(&calls, Duration::ZERO, long))
            .await
            .expect("a again");
        cache
            .get_or_fetch(&key("b"), counting(&calls, Duration::ZERO, long))
            .await
            .expect("b");
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let failing = || async { Err(Error::Internal("boom".into())) }.boxed();
        assert!(cache.get_or_fetch(&key("c"), failing).await.is_err());
        let t = cache
            .get_or_fetch(&key("c"), counting(&calls, Duration::ZERO, long))
            .await
            .expect("c");
        assert_eq!(secret(&t), "token-3");
    }

    #[tokio::test]
    async fn background_refresh_serves_cached_token_and_runs_once() {
        let cache = Arc::new(TokenCache::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let refresh_in = Duration::from_millis(100);
        let first = cache
            .get_or_fetch(&key("t"), counting(&calls, Duration::ZERO, refresh_in))
            .await
            .expect("first");
        assert_eq!(secret(&first), "token-1");
        tokio::time::sleep(Duration::from_millis(150)).await;
        // Past refresh_at: every caller gets token-1 immediately while one slow refresh runs.
        for _ in 0..100 {
            let start = Instant::now();
            let t = cache
                .get_or_fetch(
                    &key("t"),
                    counting(&calls, Duration::from_millis(300), Duration::from_secs(60)),
                )
                .await
                .expect("cached");
            assert_eq!(secret(&t), "token-1");
            assert!(start.elapsed() < Duration::from_millis(50));
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        let t = cache
            .get_or_fetch(&key("t"), counting(&calls, Duration::ZERO, refresh_in))
            .await
            .expect("new");
        assert_eq!(secret(&t), "token-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn failed_background_refresh_keeps_the_token_and_backs_off() {
        let cache = TokenCache::default();
        let calls = Arc::new(AtomicUsize::new(0));
        cache
            .get_or_fetch(&key("t"), counting(&calls, Duration::ZERO, Duration::ZERO))
            .await
            .expect("first");
        let failures = Arc::new(AtomicUsize::new(0));
        for _ in 0..5 {
            let failures = failures.clone();
            let t = cache
                .get_or_fetch(&key("t"), move || {
                    async move {
                        failures.fetch_add(1, Ordering::SeqCst);
                        Err(Error::Internal("down".into()))
                    }
                    .boxed()
                })
                .await
                .expect("still served");
            assert_eq!(secret(&t), "token-1");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            failures.load(Ordering::SeqCst),
            1,
            "one failed refresh, then back-off"
        );
    }

    #[tokio::test]
    async fn panicking_fetch_does_not_wedge_the_slot() {
        let cache = TokenCache::default();
        let err = cache
            .get_or_fetch(&key("t"), || async { panic!("fetch panicked") }.boxed())
            .await
            .expect_err("panic surfaces as an error");
        assert!(matches!(err, Error::Internal(_)), "{err}");
        let calls = Arc::new(AtomicUsize::new(0));
        let t = cache
            .get_or_fetch(
                &key("t"),
                counting(&calls, Duration::ZERO, Duration::from_secs(1)),
            )
            .await
            .expect("recovers");
        assert_eq!(secret(&t), "token-1");
    }

    #[tokio::test]
    async fn idle_slots_are_pruned() {
        let cache = TokenCache::default();
        for i in 0..200 {
            let failing = || async { Err(Error::Internal("x".into())) }.boxed();
            let _ = cache.get_or_fetch(&key(&format!("t{i}")), failing).await;
        }
        assert!(cache.slots.read().expect("lock").len() <= PRUNE_ABOVE + 1);
    }
}
