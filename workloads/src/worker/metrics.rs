//! The worker's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of a dead-letter counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The dead-letter reason (`not_json`, `db_rejected`, ...).
    pub reason: String,
}

/// Label of an error counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The error category (`reason()` of the error).
    pub kind: String,
}

/// Every metric of the worker; cheap to clone (the metrics are shared handles).
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Messages fetched from the consumer.
    pub fetched: Counter,
    /// Messages acked after their batch committed.
    pub committed: Counter,
    /// Records stored for the first time.
    pub records_inserted: Counter,
    /// Records that were already stored (replays, redeliveries).
    pub duplicates: Counter,
    /// Messages dead-lettered, by reason.
    pub dead_letters: Family<ReasonLabel, Counter>,
    /// Errors, by kind.
    pub errors: Family<KindLabel, Counter>,
    /// Seconds from fetch to ack of a batch.
    pub batch_seconds: Histogram,
    /// Messages of the consumer not yet delivered (from consumer info).
    pub consumer_pending: Gauge,
    /// Messages delivered and awaiting their ack (from consumer info).
    pub consumer_ack_pending: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            fetched: Counter::default(),
            committed: Counter::default(),
            records_inserted: Counter::default(),
            duplicates: Counter::default(),
            dead_letters: Family::default(),
            errors: Family::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            consumer_pending: Gauge::default(),
            consumer_ack_pending: Gauge::default(),
        }
    }
}

impl Metrics {
    /// New metrics, registered in `registry` under the `cdr_worker` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("cdr_worker");
        r.register(
            "fetched",
            "Messages fetched from the consumer",
            metrics.fetched.clone(),
        );
        r.register(
            "committed",
            "Messages acked after their batch committed",
            metrics.committed.clone(),
        );
        r.register(
            "records_inserted",
            "Records stored for the first time",
            metrics.records_inserted.clone(),
        );
        r.register(
            "duplicates_absorbed",
            "Records already stored (replays, redeliveries)",
            metrics.duplicates.clone(),
        );
        r.register(
            "dead_letters",
            "Messages dead-lettered, by reason",
            metrics.dead_letters.clone(),
        );
        r.register("errors", "Errors, by kind", metrics.errors.clone());
        r.register(
            "batch_seconds",
            "Seconds from fetch to ack of a batch",
            metrics.batch_seconds.clone(),
        );
        r.register(
            "consumer_pending",
            "Messages of the consumer not yet delivered",
            metrics.consumer_pending.clone(),
        );
        r.register(
            "consumer_ack_pending",
            "Messages delivered and awaiting their ack",
            metrics.consumer_ack_pending.clone(),
        );
        metrics
    }

    /// Counts an error of category `kind`.
    pub fn error(&self, kind: &str) {
        self.errors
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a dead letter of `reason`.
    pub fn dead_letter(&self, reason: &str) {
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Dead letters of `reason` so far.
    pub fn dead_letters_of(&self, reason: &str) -> u64 {
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .get()
    }
}
