//! Fault injection (throttling, server errors, latency) and per-API request counters.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use serde::{Deserialize, Serialize};

/// The APIs the emulator serves, each with its own faults and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Api {
    /// `POST /{tenant}/oauth2/v2.0/token`.
    Token,
    /// OIDC discovery, JWKS and instance discovery.
    Discovery,
    /// `/graph/…`.
    Graph,
    /// `/arm/…`.
    Arm,
}

impl Api {
    /// Which API a request path belongs to; `None` for the admin API (never counted or faulted).
    pub(crate) fn classify(path: &str) -> Option<Self> {
        if path == "/admin" || path.starts_with("/admin/") {
            None
        } else if path == "/graph" || path.starts_with("/graph/") {
            Some(Self::Graph)
        } else if path == "/arm" || path.starts_with("/arm/") {
            Some(Self::Arm)
        } else if path.ends_with("/oauth2/v2.0/token") {
            Some(Self::Token)
        } else {
            Some(Self::Discovery)
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Discovery => "discovery",
            Self::Graph => "graph",
            Self::Arm => "arm",
        }
    }
}

/// Faults per API. `PUT /admin/faults` replaces the whole set (absent APIs have none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Faults {
    /// Token endpoint.
    pub token: FaultRule,
    /// Discovery and JWKS.
    pub discovery: FaultRule,
    /// Microsoft Graph.
    pub graph: FaultRule,
    /// ARM.
    pub arm: FaultRule,
}

impl Faults {
    fn rule(&self, api: Api) -> &FaultRule {
        match api {
            Api::Token => &self.token,
            Api::Discovery => &self.discovery,
            Api::Graph => &self.graph,
            Api::Arm => &self.arm,
        }
    }
}

/// What can go wrong with one API. Throttling is decided first, then server errors.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FaultRule {
    /// Answer `429` with `Retry-After`.
    pub throttle: Option<Throttle>,
    /// Answer a 5xx.
    pub server_error: Option<ServerError>,
    /// Delay added to every request of this API (faulted or not).
    pub latency_ms: u64,
}

/// `429 Too Many Requests` injection. It fires on request number `n` of the API (counted since
/// the last reset) when `n % everyNth == 0`, or with `probability`, at most `limit` times.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Throttle {
    /// Fire on every n-th request (1 = every request).
    pub every_nth: Option<u64>,
    /// Fire with this probability (0.0–1.0).
    pub probability: Option<f64>,
    /// Fire at most this many times.
    pub limit: Option<u64>,
    /// The `Retry-After` value in seconds (fractions allowed).
    pub retry_after_seconds: f64,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            every_nth: None,
            probability: None,
            limit: None,
            retry_after_seconds: 1.0,
        }
    }
}

/// 5xx injection, triggered like [`Throttle`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServerError {
    /// Fire on every n-th request (1 = every request).
    pub every_nth: Option<u64>,
    /// Fire with this probability (0.0–1.0).
    pub probability: Option<f64>,
    /// Fire at most this many times.
    pub limit: Option<u64>,
    /// The status to answer (500–599).
    pub status: u16,
}

impl Default for ServerError {
    fn default() -> Self {
        Self {
            every_nth: None,
            probability: None,
            limit: None,
            status: 503,
        }
    }
}

fn fires(every_nth: Option<u64>, probability: Option<f64>, limit: Option<u64>, n: u64, fired: u64) -> bool {
    if limit.is_some_and(|limit| fired >= limit) {
        return false;
    }
    let nth = every_nth.is_some_and(|every| every > 0 && n.is_multiple_of(every));
    let chance = probability.is_some_and(|p| p > 0.0 && rand::random::<f64>() < p);
    nth || chance
}

/// Request counters of one API since the last reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiCounters {
    /// Requests received (including faulted ones).
    pub requests: u64,
    /// Requests answered with an injected 429.
    pub throttled: u64,
    /// Requests answered with an injected 5xx.
    pub server_errors: u64,
}

/// Counters of every API, as `GET /admin/counters` returns them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// Token endpoint.
    pub token: ApiCounters,
    /// Discovery and JWKS.
    pub discovery: ApiCounters,
    /// Microsoft Graph.
    pub graph: ApiCounters,
    /// ARM.
    pub arm: ApiCounters,
}

impl Counters {
    fn get_mut(&mut self, api: Api) -> &mut ApiCounters {
        match api {
            Api::Token => &mut self.token,
            Api::Discovery => &mut self.discovery,
            Api::Graph => &mut self.graph,
            Api::Arm => &mut self.arm,
        }
    }
}

/// What to do with one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Decision {
    Pass,
    Throttle { retry_after_seconds: f64 },
    ServerError { status: u16 },
}

#[derive(Debug, Default)]
struct Inner {
    faults: Faults,
    counters: Counters,
    /// How often each (API, is-throttle) fault has fired, for `limit`.
    fired: HashMap<(Api, bool), u64>,
}

/// The runtime fault state shared by all requests.
#[derive(Debug, Default)]
pub(crate) struct FaultInjector {
    inner: Mutex<Inner>,
}

impl FaultInjector {
    pub(crate) fn new(faults: Faults) -> Self {
        Self {
            inner: Mutex::new(Inner {
                faults,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts the request and decides whether to fault it; also returns the latency to add.
    pub(crate) fn decide(&self, api: Api) -> (Decision, Duration) {
        let mut inner = self.lock();
        let Inner {
            faults,
            counters,
            fired,
        } = &mut *inner;
        let counter = counters.get_mut(api);
        counter.requests += 1;
        let n = counter.requests;
        let rule = faults.rule(api);
        let latency = Duration::from_millis(rule.latency_ms);
        if let Some(t) = &rule.throttle {
            let count = fired.entry((api, true)).or_default();
            if fires(t.every_nth, t.probability, t.limit, n, *count) {
                *count += 1;
                counter.throttled += 1;
                return (
                    Decision::Throttle {
                        retry_after_seconds: t.retry_after_seconds.max(0.0),
                    },
                    latency,
                );
            }
        }
        if let Some(e) = &rule.server_error {
            let count = fired.entry((api, false)).or_default();
            if fires(e.every_nth, e.probability, e.limit, n, *count) {
                *count += 1;
                counter.server_errors += 1;
                return (
                    Decision::ServerError {
                        status: e.status.clamp(500, 599),
                    },
                    latency,
                );
            }
        }
        (Decision::Pass, latency)
    }

    pub(crate) fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Replaces the faults and forgets how often the old ones fired.
    pub(crate) fn set_faults(&self, faults: Faults) {
        let mut inner = self.lock();
        inner.faults = faults;
        inner.fired.clear();
    }

    pub(crate) fn counters(&self) -> Counters {
        self.lock().counters
    }

    /// Clears counters and faults.
    pub(crate) fn reset(&self) {
        *self.lock() = Inner::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_classified_by_api() {
        assert_eq!(Api::classify("/admin/counters"), None);
        assert_eq!(Api::classify("/graph/v1.0/applications"), Some(Api::Graph));
        assert_eq!(Api::classify("/arm/subscriptions/x"), Some(Api::Arm));
        assert_eq!(Api::classify("/t/oauth2/v2.0/token"), Some(Api::Token));
        assert_eq!(
            Api::classify("/t/v2.0/.well-known/openid-configuration"),
            Some(Api::Discovery)
        );
    }

    #[test]
    fn every_nth_with_limit_fires_deterministically() {
        let faults = Faults {
            token: FaultRule {
                throttle: Some(Throttle {
                    every_nth: Some(2),
                    limit: Some(2),
                    retry_after_seconds: 3.0,
                    ..Throttle::default()
                }),
                ..FaultRule::default()
            },
            ..Faults::default()
        };
        let injector = FaultInjector::new(faults);
        let decisions: Vec<_> = (0..8).map(|_| injector.decide(Api::Token).0).collect();
        let throttled = decisions
            .iter()
            .filter(|d| matches!(d, Decision::Throttle { .. }))
            .count();
        assert_eq!(throttled, 2);
        assert_eq!(
            decisions[1],
            Decision::Throttle {
                retry_after_seconds: 3.0
            }
        );
        assert_eq!(decisions[0], Decision::Pass);
        assert_eq!(injector.counters().token.requests, 8);
        assert_eq!(injector.counters().token.throttled, 2);
        assert_eq!(injector.counters().graph.requests, 0);
    }

    #[test]
    fn server_errors_follow_throttling_and_reset_clears_everything() {
        let faults = Faults {
            arm: FaultRule {
                server_error: Some(ServerError {
                    every_nth: Some(1),
                    status: 502,
                    ..ServerError::default()
                }),
                ..FaultRule::default()
            },
            ..Faults::default()
        };
        let injector = FaultInjector::new(faults);
        assert_eq!(injector.decide(Api::Arm).0, Decision::ServerError { status: 502 });
        injector.reset();
        assert_eq!(injector.decide(Api::Arm).0, Decision::Pass);
        assert_eq!(injector.counters().arm.requests, 1);
    }
}
