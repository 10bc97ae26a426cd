//! Prometheus metrics of the operator: reconciles, errors and durations per kind; NATS
//! connection state per cluster; drift repairs; writes to NATS and to the apiserver.

use std::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A kind the operator reconciles (metric label `kind`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Kind {
    NatsCluster,
    JetStreamStream,
    JetStreamConsumer,
}

impl Kind {
    /// Every kind, for sums over them.
    pub const ALL: [Kind; 3] = [
        Kind::NatsCluster,
        Kind::JetStreamStream,
        Kind::JetStreamConsumer,
    ];

    /// The Kubernetes kind name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NatsCluster => "NatsCluster",
            Self::JetStreamStream => "JetStreamStream",
            Self::JetStreamConsumer => "JetStreamConsumer",
        }
    }
}

impl EncodeLabelValue for Kind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.as_str().encode(encoder)
    }
}

/// A JetStream API operation (metric label `op`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Op {
    StreamInfo,
    StreamCreate,
    StreamUpdate,
    StreamDelete,
    ConsumerInfo,
    ConsumerCreate,
    ConsumerUpdate,
    ConsumerDelete,
}

impl Op {
    const ALL: [Op; 8] = [
        Op::StreamInfo,
        Op::StreamCreate,
        Op::StreamUpdate,
        Op::StreamDelete,
        Op::ConsumerInfo,
        Op::ConsumerCreate,
        Op::ConsumerUpdate,
        Op::ConsumerDelete,
    ];

    /// The label value: `stream.info`, `consumer.create`, ...
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::StreamInfo => "stream.info",
            Self::StreamCreate => "stream.create",
            Self::StreamUpdate => "stream.update",
            Self::StreamDelete => "stream.delete",
            Self::ConsumerInfo => "consumer.info",
            Self::ConsumerCreate => "consumer.create",
            Self::ConsumerUpdate => "consumer.update",
            Self::ConsumerDelete => "consumer.delete",
        }
    }

    /// Whether the operation changes the server.
    pub(crate) fn is_write(self) -> bool {
        !matches!(self, Self::StreamInfo | Self::ConsumerInfo)
    }
}

impl EncodeLabelValue for Op {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        self.as_str().encode(encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: Kind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    kind: Kind,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: Op,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabel {
    cluster: String,
}

/// Every metric of the operator.
#[derive(Debug)]
pub struct Metrics {
    reconciles: Family<KindLabel, Counter>,
    reconcile_errors: Family<ReasonLabel, Counter>,
    reconcile_duration: Family<KindLabel, Histogram>,
    drift_repairs: Family<KindLabel, Counter>,
    nats_requests: Family<OpLabel, Counter>,
    nats_writes: Family<OpLabel, Counter>,
    apiserver_writes: Family<KindLabel, Counter>,
    nats_connected: Family<ClusterLabel, Gauge>,
    /// 1 while this instance leads (or runs without election).
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

/// Counts one reconcile and observes its duration when dropped, however the reconcile ends.
pub(crate) struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: Kind,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let label = KindLabel { kind: self.kind };
        self.metrics.reconciles.get_or_create(&label).inc();
        self.metrics
            .reconcile_duration
            .get_or_create(&label)
            .observe(self.started.elapsed().as_secs_f64());
    }
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

    /// Starts timing a reconcile of `kind` (counted when the guard drops).
    pub(crate) fn reconcile_timer(&self, kind: Kind) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            kind,
            started: Instant::now(),
        }
    }

    pub(crate) fn failed(&self, kind: Kind, reason: &'static str) {
        self.reconcile_errors
            .get_or_create(&ReasonLabel { kind, reason })
            .inc();
    }

    pub(crate) fn drift_repaired(&self, kind: Kind) {
        self.drift_repairs.get_or_create(&KindLabel { kind }).inc();
    }

    pub(crate) fn apiserver_write(&self, kind: Kind) {
        self.apiserver_writes
            .get_or_create(&KindLabel { kind })
            .inc();
    }

    pub(crate) fn nats_request(&self, op: Op) {
        let label = OpLabel { op };
        self.nats_requests.get_or_create(&label).inc();
        if op.is_write() {
            self.nats_writes.get_or_create(&label).inc();
        }
    }

    /// Sets the connection gauge of NatsCluster `cluster` (`<namespace>/<name>`).
    pub(crate) fn nats_connected(&self, cluster: &str, connected: bool) {
        let label = ClusterLabel {
            cluster: cluster.to_owned(),
        };
        self.nats_connected
            .get_or_create(&label)
            .set(i64::from(connected));
    }

    /// Drops the connection gauge of a NatsCluster that is gone.
    pub(crate) fn nats_forgotten(&self, cluster: &str) {
        self.nats_connected.remove(&ClusterLabel {
            cluster: cluster.to_owned(),
        });
    }

    /// Total reconciles of `kind` so far.
    pub fn reconcile_count(&self, kind: Kind) -> u64 {
        self.reconciles.get_or_create(&KindLabel { kind }).get()
    }

    /// Total failed reconciles of `kind` with `reason` so far.
    pub fn reconcile_error_count(&self, kind: Kind, reason: &'static str) -> u64 {
        self.reconcile_errors
            .get_or_create(&ReasonLabel { kind, reason })
            .get()
    }

    /// Total JetStream API requests so far.
    pub fn nats_request_count(&self) -> u64 {
        sum_ops(&self.nats_requests)
    }

    /// Total JetStream API writes (create, update, delete) so far.
    pub fn nats_write_count(&self) -> u64 {
        sum_ops(&self.nats_writes)
    }

    /// Total apiserver writes by the controllers so far.
    pub fn apiserver_write_count(&self) -> u64 {
        Kind::ALL
            .iter()
            .map(|&kind| {
                self.apiserver_writes
                    .get_or_create(&KindLabel { kind })
                    .get()
            })
            .sum()
    }

    /// Total drift repairs of `kind` so far.
    pub fn drift_repair_count(&self, kind: Kind) -> u64 {
        self.drift_repairs.get_or_create(&KindLabel { kind }).get()
    }

    /// The connection gauge of NatsCluster `cluster` (`<namespace>/<name>`), when it exists.
    pub fn nats_connected_value(&self, cluster: &str) -> Option<i64> {
        self.nats_connected
            .get(&ClusterLabel {
                cluster: cluster.to_owned(),
            })
            .map(|gauge| gauge.get())
    }
}

fn sum_ops(family: &Family<OpLabel, Counter>) -> u64 {
    Op::ALL
        .iter()
        .map(|&op| family.get_or_create(&OpLabel { op }).get())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_keep_their_wire_names() {
        let metrics = Metrics::default();
        metrics.nats_request(Op::StreamInfo);
        metrics.nats_request(Op::ConsumerCreate);
        metrics.failed(Kind::JetStreamStream, "NatsUnavailable");
        drop(metrics.reconcile_timer(Kind::JetStreamConsumer));
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("nats_cdr_operator_nats_requests_total{op=\"stream.info\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("nats_cdr_operator_nats_writes_total{op=\"consumer.create\"} 1"),
            "{text}"
        );
        assert!(
            !text.contains("nats_writes_total{op=\"stream.info\"}"),
            "{text}"
        );
        assert!(
            text.contains(
                "reconcile_errors_total{kind=\"JetStreamStream\",reason=\"NatsUnavailable\"} 1"
            ),
            "{text}"
        );
        assert_eq!(metrics.reconcile_count(Kind::JetStreamConsumer), 1);
        assert_eq!(metrics.nats_write_count(), 1);
    }

    #[test]
    fn a_forgotten_cluster_leaves_no_series() {
        let metrics = Metrics::default();
        metrics.nats_connected("ns/a", true);
        assert_eq!(metrics.nats_connected_value("ns/a"), Some(1));
        metrics.nats_forgotten("ns/a");
        assert_eq!(metrics.nats_connected_value("ns/a"), None);
    }
}
