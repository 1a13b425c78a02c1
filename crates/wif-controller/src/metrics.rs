//! Prometheus metrics of the controller. Every label is a bounded enum or an HTTP status code,
//! never an object name or an error message.

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::azure::Service;

/// Labels of the reconcile counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    /// `success`, `pending`, or the error category (`Conflict`, `AzureApi`, …).
    pub result: &'static str,
}

/// Labels of the Azure request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AzureLabels {
    /// Graph or ARM.
    pub service: Service,
    /// HTTP method.
    pub method: &'static str,
    /// HTTP status code, or `transport` when there was no answer.
    pub status: String,
}

/// Labels of the per-identity gauges of pools.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityLabels {
    /// The identity as its pool lists it (client id or resource id; bounded by the pools).
    pub identity: String,
}

/// Labels of the time spent waiting, by what was waited on.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WaitLabels {
    /// `pool_lock`, `identity_lock`, `pool_survey` (resolving and listing a pool's identities
    /// under its lock) or `status_write`.
    pub on: &'static str,
}

/// The controller's metrics.
#[derive(Debug)]
pub struct Metrics {
    /// Reconciles by result.
    pub reconciles: Family<ReconcileLabels, Counter>,
    /// Reconcile duration, seconds.
    pub reconcile_duration: Histogram,
    /// Graph and ARM requests by service, method and status.
    pub azure_requests: Family<AzureLabels, Counter>,
    /// Reconciles started and not finished (including those waiting for an identity's lock).
    pub queue_depth: Gauge<i64, AtomicI64>,
    /// Bindings whose credential is in sync and owned by this controller.
    pub credentials_owned: Gauge<i64, AtomicI64>,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge<i64, AtomicI64>,
    /// Token exchanges made to verify propagation, by result.
    pub verifications: Family<ReconcileLabels, Counter>,
    /// Credentials on each identity of a pool (ours and foreign).
    pub identity_credentials: Family<IdentityLabels, Gauge<i64, AtomicI64>>,
    /// Credentials a pool lets wif place on each of its identities (0 when unusable).
    pub identity_capacity: Family<IdentityLabels, Gauge<i64, AtomicI64>>,
    /// Seconds reconciles spent waiting, by what they waited on.
    pub waited: Family<WaitLabels, Counter<f64, AtomicU64>>,
}

fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        _ => "OTHER",
    }
}

impl Metrics {
    /// Creates the metrics and registers them under the `wif_controller` prefix.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 16,
            )),
            azure_requests: Family::default(),
            queue_depth: Gauge::default(),
            credentials_owned: Gauge::default(),
            leader: Gauge::default(),
            verifications: Family::default(),
            identity_credentials: Family::default(),
            identity_capacity: Family::default(),
            waited: Family::default(),
        };
        registry.register(
            "wif_identity_credentials",
            "Federated credentials on each identity of a FederatedIdentityPool (ours and foreign)",
            m.identity_credentials.clone(),
        );
        registry.register(
            "wif_identity_capacity",
            "Credentials wif may place on each identity of a FederatedIdentityPool",
            m.identity_capacity.clone(),
        );
        let r = registry.sub_registry_with_prefix("wif_controller");
        r.register(
            "reconciles",
            "Reconciles of FederatedIdentityBindings by result",
            m.reconciles.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            m.reconcile_duration.clone(),
        );
        r.register(
            "azure_requests",
            "Requests to Microsoft Graph and ARM by service, method and HTTP status",
            m.azure_requests.clone(),
        );
        r.register(
            "queue_depth",
            "Reconciles in progress, including those waiting for their identity's write lock",
            m.queue_depth.clone(),
        );
        r.register(
            "credentials_owned",
            "Bindings whose federated identity credential is in sync",
            m.credentials_owned.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the leader Lease",
            m.leader.clone(),
        );
        r.register(
            "propagation_checks",
            "Token exchanges made to verify that a credential is honoured, by result",
            m.verifications.clone(),
        );
        r.register(
            "waited_seconds",
            "Seconds reconciles spent waiting on pool locks, identity locks, pool surveys and status writes",
            m.waited.clone(),
        );
        m
    }

    /// Adds the time since `since` to what was waited on `on`.
    pub fn waited(&self, on: &'static str, since: std::time::Instant) {
        self.waited
            .get_or_create(&WaitLabels { on })
            .inc_by(since.elapsed().as_secs_f64());
    }

    /// Counts one Graph or ARM request.
    pub fn azure_request(&self, service: Service, method: &str, status: &str) {
        self.azure_requests
            .get_or_create(&AzureLabels {
                service,
                method: method_label(method),
                status: status.to_owned(),
            })
            .inc();
    }

    /// Counts one reconcile.
    pub fn reconciled(&self, result: &'static str, seconds: f64) {
        self.reconciles.get_or_create(&ReconcileLabels { result }).inc();
        self.reconcile_duration.observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_encode_with_bounded_labels() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        m.azure_request(Service::Arm, "PUT", "201");
        m.azure_request(Service::Graph, "WEIRD", "transport");
        m.reconciled("success", 0.01);
        m.leader.set(1);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(r#"wif_controller_azure_requests_total{service="Arm",method="PUT",status="201"} 1"#),
            "{out}"
        );
        assert!(out.contains(r#"method="OTHER""#), "{out}");
        assert!(
            out.contains(r#"wif_controller_reconciles_total{result="success"} 1"#),
            "{out}"
        );
        assert!(out.contains("wif_controller_leader 1"), "{out}");
        m.waited("pool_lock", std::time::Instant::now());
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(r#"wif_controller_waited_seconds_total{on="pool_lock"}"#),
            "{out}"
        );
        m.identity_credentials
            .get_or_create(&IdentityLabels { identity: "a".into() })
            .set(7);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(r#"wif_identity_credentials{identity="a"} 7"#),
            "{out}"
        );
    }
}
