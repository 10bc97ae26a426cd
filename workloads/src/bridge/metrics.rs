//! The bridge's Prometheus metrics (prefix `kam_cdr_bridge_`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the dead-letter counter: `reason`.
pub type ReasonLabels = Vec<(&'static str, &'static str)>;

/// Every metric; clones share the same values.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Complete lines read from the file.
    pub lines_read: Counter,
    /// Lines stored on `cdr.raw` (acked).
    pub published: Counter,
    /// Acks the stream flagged as duplicates (a line re-published after a restart).
    pub duplicates: Counter,
    /// Dead letters stored, by reason.
    pub dead_lettered: Family<ReasonLabels, Counter>,
    /// Lines that could not be published at all (not even as a dead letter).
    pub dropped: Counter,
    /// Publishes awaiting their ack.
    pub in_flight: Gauge,
    /// Size of the current file minus the checkpoint offset.
    pub checkpoint_lag_bytes: Gauge,
    /// Failed publish attempts that were retried.
    pub publish_retries: Counter,
    /// Call events sent.
    pub call_events: Counter,
    /// Checkpoint writes that failed.
    pub checkpoint_errors: Counter,
    /// Atomic batches committed.
    pub batches: Counter,
    /// Atomic batches refused or failed, by reason.
    pub batches_refused: Family<ReasonLabels, Counter>,
    /// 1 while lines are published in atomic batches, 0 while line by line.
    pub atomic_batches: Gauge,
    /// Seconds from the first staged message of a batch to its commit's ack.
    pub batch_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            lines_read: Counter::default(),
            published: Counter::default(),
            duplicates: Counter::default(),
            dead_lettered: Family::default(),
            dropped: Counter::default(),
            in_flight: Gauge::default(),
            checkpoint_lag_bytes: Gauge::default(),
            publish_retries: Counter::default(),
            call_events: Counter::default(),
            checkpoint_errors: Counter::default(),
            batches: Counter::default(),
            batches_refused: Family::default(),
            atomic_batches: Gauge::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.000_5, 2.0, 14)),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "lines_read",
            "Complete lines read from the file",
            self.lines_read.clone(),
        );
        registry.register(
            "published",
            "Lines stored on cdr.raw (acked)",
            self.published.clone(),
        );
        registry.register(
            "duplicates",
            "Publishes the stream acked as duplicates",
            self.duplicates.clone(),
        );
        registry.register(
            "dead_lettered",
            "Dead letters stored, by reason",
            self.dead_lettered.clone(),
        );
        registry.register(
            "dropped",
            "Lines that could not be published at all",
            self.dropped.clone(),
        );
        registry.register(
            "in_flight",
            "Publishes awaiting their ack",
            self.in_flight.clone(),
        );
        registry.register(
            "checkpoint_lag_bytes",
            "Size of the current file minus the checkpoint offset",
            self.checkpoint_lag_bytes.clone(),
        );
        registry.register(
            "publish_retries",
            "Failed publish attempts that were retried",
            self.publish_retries.clone(),
        );
        registry.register("call_events", "Call events sent", self.call_events.clone());
        registry.register(
            "checkpoint_errors",
            "Checkpoint writes that failed",
            self.checkpoint_errors.clone(),
        );
        registry.register("batches", "Atomic batches committed", self.batches.clone());
        registry.register(
            "batches_refused",
            "Atomic batches refused or failed, by reason",
            self.batches_refused.clone(),
        );
        registry.register(
            "batch_seconds",
            "Seconds from the first staged message of a batch to its commit's ack",
            self.batch_seconds.clone(),
        );
        registry.register(
            "atomic_batches",
            "1 while lines are published in atomic batches, 0 while line by line",
            self.atomic_batches.clone(),
        );
    }

    /// Counts one refused or failed batch of `reason`.
    pub fn batch_refused(&self, reason: &'static str) {
        self.batches_refused
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Counts one dead letter of `reason`.
    pub fn dead_letter(&self, reason: &'static str) {
        self.dead_lettered
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_exposed() {
        let metrics = Metrics::default();
        let mut registry = Registry::with_prefix("kam_cdr_bridge");
        metrics.register(&mut registry);
        metrics.dead_letter("not_json");
        metrics.published.inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("kam_cdr_bridge_published_total 1"), "{text}");
        assert!(
            text.contains("kam_cdr_bridge_dead_lettered_total{reason=\"not_json\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("kam_cdr_bridge_checkpoint_lag_bytes"),
            "{text}"
        );
    }
}
