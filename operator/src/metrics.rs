//! Prometheus metrics of the operator: reconciles, errors and durations per kind; NATS
//! connection state per cluster; drift repairs; writes to NATS and to the apiserver.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label set `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// Label set `kind`, `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub kind: String,
    pub reason: String,
}

/// Label set `kind`, `op` (a JetStream API operation such as `stream.info`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: String,
}

/// Label set `cluster` (`<namespace>/<name>` of a NatsCluster).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Family<KindLabel, Counter>,
    pub reconcile_errors: Family<ReasonLabel, Counter>,
    pub reconcile_duration: Family<KindLabel, Histogram>,
    pub drift_repairs: Family<KindLabel, Counter>,
    pub nats_requests: Family<OpLabel, Counter>,
    pub nats_writes: Family<OpLabel, Counter>,
    pub apiserver_writes: Family<KindLabel, Counter>,
    pub nats_connected: Family<ClusterLabel, Gauge>,
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new([
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
            }),
            drift_repairs: Family::default(),
            nats_requests: Family::default(),
            nats_writes: Family::default(),
            apiserver_writes: Family::default(),
            nats_connected: Family::default(),
            leader: Gauge::default(),
        }
    }
}

fn kind(kind: &str) -> KindLabel {
    KindLabel { kind: kind.into() }
}

impl Metrics {
    /// Registers every metric (prefix `nats_cdr_operator`).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("nats_cdr_operator");
        r.register(
            "reconciles",
            "Reconciles run, per kind",
            self.reconciles.clone(),
        );
        r.register(
            "reconcile_errors",
            "Reconciles that failed, per kind and reason",
            self.reconcile_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "Duration of reconciles, per kind",
            self.reconcile_duration.clone(),
        );
        r.register(
            "drift_repairs",
            "Changes made on the NATS server behind the operator's back that were reverted",
            self.drift_repairs.clone(),
        );
        r.register(
            "nats_requests",
            "JetStream API requests, per operation",
            self.nats_requests.clone(),
        );
        r.register(
            "nats_writes",
            "JetStream API requests that change the server (create, update, delete)",
            self.nats_writes.clone(),
        );
        r.register(
            "apiserver_writes",
            "Writes to the Kubernetes API (status, finalizers), per kind",
            self.apiserver_writes.clone(),
        );
        r.register(
            "nats_connected",
            "1 while the connection to a NatsCluster is up, else 0",
            self.nats_connected.clone(),
        );
        r.register(
            "leader",
            "1 while this instance holds the leader Lease (or runs without election)",
            self.leader.clone(),
        );
    }

    pub(crate) fn reconciled(&self, k: &str, seconds: f64) {
        self.reconciles.get_or_create(&kind(k)).inc();
        self.reconcile_duration
            .get_or_create(&kind(k))
            .observe(seconds);
    }

    pub(crate) fn failed(&self, k: &str, reason: &str) {
        self.reconcile_errors
            .get_or_create(&ReasonLabel {
                kind: k.into(),
                reason: reason.into(),
            })
            .inc();
    }

    pub(crate) fn drift_repaired(&self, k: &str) {
        self.drift_repairs.get_or_create(&kind(k)).inc();
    }

    pub(crate) fn apiserver_write(&self, k: &str) {
        self.apiserver_writes.get_or_create(&kind(k)).inc();
    }

    pub(crate) fn nats_request(&self, op: &str, write: bool) {
        let label = OpLabel { op: op.into() };
        self.nats_requests.get_or_create(&label).inc();
        if write {
            self.nats_writes.get_or_create(&label).inc();
        }
    }

    /// Total reconciles of `kind` so far.
    pub fn reconcile_count(&self, k: &str) -> u64 {
        self.reconciles.get_or_create(&kind(k)).get()
    }

    /// Total JetStream API requests so far.
    pub fn nats_request_count(&self) -> u64 {
        sum(&self.nats_requests)
    }

    /// Total JetStream API writes (create, update, delete) so far.
    pub fn nats_write_count(&self) -> u64 {
        sum(&self.nats_writes)
    }

    /// Total apiserver writes by the controllers so far.
    pub fn apiserver_write_count(&self) -> u64 {
        let mut total = 0;
        for k in [
            crate::stream::KIND,
            crate::consumer::KIND,
            crate::cluster::KIND,
        ] {
            total += self.apiserver_writes.get_or_create(&kind(k)).get();
        }
        total
    }

    /// Total drift repairs of `kind` so far.
    pub fn drift_repair_count(&self, k: &str) -> u64 {
        self.drift_repairs.get_or_create(&kind(k)).get()
    }
}

fn sum(family: &Family<OpLabel, Counter>) -> u64 {
    crate::nats::OPS
        .iter()
        .map(|op| family.get_or_create(&OpLabel { op: (*op).into() }).get())
        .sum()
}
