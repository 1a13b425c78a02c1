//! Prometheus metrics of the admission server. Labels are bounded enums, never object names.

use std::sync::atomic::AtomicI64;

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// How an admission request ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Outcome {
    /// The pod was patched.
    Mutated,
    /// Allowed without changes (not labelled, already mutated, or not a create).
    Unchanged,
    /// Refused by policy (bad annotation, collision, missing ServiceAccount).
    Denied,
    /// The request could not be decoded (HTTP 400).
    Invalid,
    /// The ServiceAccount lookup failed (API server unreachable).
    Error,
}

/// Label set of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// See [`Outcome`].
    pub outcome: Outcome,
}

/// The webhook's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Admission requests by outcome.
    pub requests: Family<OutcomeLabels, Counter>,
    /// Time spent answering an admission request, seconds.
    pub latency: Histogram,
    /// ServiceAccounts in the metadata cache.
    pub cached_service_accounts: Gauge<i64, AtomicI64>,
    /// Lookups that missed the cache and went to the API server.
    pub cache_misses: Counter,
    /// `wif_admission_total{result,reason}`: every skip explained.
    pub admissions: crate::skips::AdmissionCounter,
}

impl Metrics {
    /// Creates the metrics and registers them under the `wif_webhook` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            // 100 µs … ~1.6 s: the admission path is expected to sit in the lowest buckets.
            latency: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 2.0, 15,
            )),
            cached_service_accounts: Gauge::default(),
            cache_misses: Counter::default(),
            admissions: crate::skips::AdmissionCounter::new(registry),
        };
        let r = registry.sub_registry_with_prefix("wif_webhook");
        r.register(
            "admission_requests",
            "Admission requests by outcome",
            m.requests.clone(),
        );
        r.register(
            "admission_duration_seconds",
            "Time to answer an admission request",
            m.latency.clone(),
        );
        r.register(
            "cached_service_accounts",
            "ServiceAccounts held in the metadata cache",
            m.cached_service_accounts.clone(),
        );
        r.register(
            "service_account_cache_misses",
            "ServiceAccount lookups answered by the API server instead of the cache",
            m.cache_misses.clone(),
        );
        m
    }

    /// Counts one request.
    pub fn observe(&self, outcome: Outcome, seconds: f64) {
        self.requests.get_or_create(&OutcomeLabels { outcome }).inc();
        self.latency.observe(seconds);
    }
}
