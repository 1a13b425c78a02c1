//! Prometheus metrics of the admission server. Labels are bounded enums, never object names.

use std::sync::{Arc, atomic::AtomicI64};

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

/// The protocol a client chose in the TLS handshake (ALPN).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Protocol {
    /// `h2`: HTTP/2, many requests multiplexed on one connection.
    H2,
    /// `http/1.1`.
    Http1,
    /// No ALPN offered; the protocol is recognised from the first bytes.
    NoAlpn,
}

/// How a TLS handshake ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Handshake {
    /// Completed.
    Ok,
    /// Refused or broken by either side.
    Failed,
    /// Not completed within the handshake timeout.
    TimedOut,
}

/// Label set of the per-protocol connection metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// See [`Protocol`].
    pub protocol: Protocol,
}

/// Label set of the handshake counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// See [`Handshake`].
    pub result: Handshake,
}

/// Metrics of the admission listener's connections and load shedding. `Default` gives metrics
/// that are counted but not registered (servers without a `/metrics`, tests).
#[derive(Debug, Default)]
pub struct ConnMetrics {
    /// Connections open now (TLS established), by protocol.
    pub open_connections: Family<ProtocolLabels, Gauge<i64, AtomicI64>>,
    /// Connections accepted since start, by negotiated protocol.
    pub connections: Family<ProtocolLabels, Counter>,
    /// TLS handshakes by result.
    pub handshakes: Family<HandshakeLabels, Counter>,
    /// Admission requests being handled now.
    pub in_flight: Gauge<i64, AtomicI64>,
    /// Admission requests answered 429 because no slot freed in time.
    pub shed: Counter,
}

impl ConnMetrics {
    /// Creates the metrics and registers them under the `wif_webhook` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        let r = registry.sub_registry_with_prefix("wif_webhook");
        r.register(
            "open_connections",
            "Admission connections open now (TLS established), by negotiated protocol",
            m.open_connections.clone(),
        );
        r.register(
            "connections",
            "Admission connections accepted, by the protocol negotiated in TLS (ALPN)",
            m.connections.clone(),
        );
        r.register(
            "tls_handshakes",
            "TLS handshakes on the admission listener, by result",
            m.handshakes.clone(),
        );
        r.register(
            "in_flight_requests",
            "Admission requests being handled now",
            m.in_flight.clone(),
        );
        r.register(
            "shed_requests",
            "Admission requests answered 429 (overloaded) because no slot freed in time",
            m.shed.clone(),
        );
        m
    }

    /// Counts one handshake.
    pub fn handshake(&self, result: Handshake) {
        self.handshakes.get_or_create(&HandshakeLabels { result }).inc();
    }

    /// Counts a connection as open until the returned guard drops.
    pub fn open(self: &Arc<Self>, protocol: Protocol) -> OpenConnection {
        let labels = ProtocolLabels { protocol };
        self.connections.get_or_create(&labels).inc();
        self.open_connections.get_or_create(&labels).inc();
        OpenConnection {
            metrics: self.clone(),
            labels,
        }
    }
}

/// An open connection, counted in [`ConnMetrics::open_connections`] while it lives.
#[derive(Debug)]
pub struct OpenConnection {
    metrics: Arc<ConnMetrics>,
    labels: ProtocolLabels,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.metrics.open_connections.get_or_create(&self.labels).dec();
    }
}
