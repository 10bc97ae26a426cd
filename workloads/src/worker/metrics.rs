//! The worker's Prometheus metrics.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::rating::sql::RatingOutcome;

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

/// Label of a money counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CurrencyLabel {
    /// ISO 4217 code.
    pub currency: String,
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
    /// CDRs that became rated (or got a new charge).
    pub cdrs_rated: Counter,
    /// CDRs that became unrated, by reason.
    pub cdrs_unrated: Family<ReasonLabel, Counter>,
    /// Money debited from accounts, by currency (a float: for dashboards, not for accounting).
    pub money_debited: Family<CurrencyLabel, Counter<f64, AtomicU64>>,
    /// Money credited back to accounts by adjustments, by currency.
    pub money_credited: Family<CurrencyLabel, Counter<f64, AtomicU64>>,
    /// Prepaid accounts whose balance crossed to zero or below.
    pub prepaid_exhausted: Counter,
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
            cdrs_rated: Counter::default(),
            cdrs_unrated: Family::default(),
            money_debited: Family::default(),
            money_credited: Family::default(),
            prepaid_exhausted: Counter::default(),
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
        r.register(
            "cdrs_rated",
            "CDRs that became rated or got a new charge",
            metrics.cdrs_rated.clone(),
        );
        r.register(
            "cdrs_unrated",
            "CDRs that became unrated (stored without a charge), by reason",
            metrics.cdrs_unrated.clone(),
        );
        r.register(
            "money_debited",
            "Money debited from accounts, by currency",
            metrics.money_debited.clone(),
        );
        r.register(
            "money_credited",
            "Money credited back to accounts by adjusting entries, by currency",
            metrics.money_credited.clone(),
        );
        r.register(
            "prepaid_exhausted",
            "Prepaid accounts whose balance crossed to zero or below",
            metrics.prepaid_exhausted.clone(),
        );
        metrics
    }

    /// Counts what rating a batch did.
    pub fn rating(&self, outcome: &RatingOutcome) {
        self.cdrs_rated.inc_by(outcome.rated);
        for (reason, count) in &outcome.unrated {
            self.cdrs_unrated
                .get_or_create(&ReasonLabel {
                    reason: reason.as_str().to_owned(),
                })
                .inc_by(*count);
        }
        for (currency, debited, credited) in outcome.debited_f64() {
            let label = CurrencyLabel {
                currency: currency.to_owned(),
            };
            self.money_debited.get_or_create(&label).inc_by(debited);
            self.money_credited.get_or_create(&label).inc_by(credited);
        }
        self.prepaid_exhausted.inc_by(outcome.exhausted());
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
