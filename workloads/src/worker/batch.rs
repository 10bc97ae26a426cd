//! One fetched batch, from messages to acks: dead-letter what exceeded the delivery limit,
//! decode, dead-letter poison, write in one transaction (bisecting when the database refuses some
//! record), ack after commit.
//!
//! The delivery limit (`max_deliver`) is the worker's, not the server's: the consumer has an
//! unlimited server-side `max_deliver`, so a message whose holder dies on its last delivery comes
//! back (instead of being silently dropped by the server) and is dead-lettered here as
//! [`MAX_DELIVER`] before anything parses it.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, Message};
use tracing::{Instrument, debug, info, warn};

use tokio_util::sync::CancellationToken;

use super::dead_letter::{self, DeadLetter};
use super::decode::{Decoded, decode, header, record_id};
use super::health::Health;
use super::metrics::Metrics;
use super::store::{RecordRow, Store, StoreError};
use crate::backoff::{Backoff, sleep_unless_cancelled};
use crate::contract::headers::CDR_SOURCE;

/// Dead-letter reason of a record the database refused on its last delivery.
pub const DB_REJECTED: &str = "db_rejected";

/// Dead-letter reason of a message delivered more often than `max_deliver`: every worker that
/// held it before died or crashed before acking it (a poison record that crashes the worker, or
/// plain bad luck with kills). It is dead-lettered unprocessed, so a crash loop ends here; its
/// payload is intact, and replaying it is safe (the store drops records it already has).
pub const MAX_DELIVER: &str = "max_deliver";

/// What processing a batch needs.
#[derive(Clone)]
pub struct BatchContext {
    /// JetStream, for dead letters.
    pub js: jetstream::Context,
    /// The database.
    pub store: Store,
    /// Metrics.
    pub metrics: Metrics,
    /// Readiness, not ready while the database is unreachable.
    pub health: Arc<Health>,
    /// The worker's own delivery limit (the server's is unlimited): a record the database refuses
    /// on this delivery is dead-lettered, and a message delivered more often is dead-lettered
    /// without being processed.
    pub max_deliver: i64,
    /// The consumer's ack wait: retries of a held batch keep it alive more often than this.
    pub ack_wait: Duration,
    /// Longest back-off between retries.
    pub max_backoff: Duration,
    /// Cancelled when the worker must stop.
    pub shutdown: CancellationToken,
}

/// A message with its decoded record.
struct Item {
    message: Message,
    row: RecordRow,
    delivered: i64,
}

/// What became of a batch.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    /// Messages acked after commit.
    pub committed: usize,
    /// Records newly stored.
    pub inserted: u64,
    /// Records already stored.
    pub duplicates: u64,
    /// Messages dead-lettered and terminated.
    pub dead_lettered: usize,
    /// Messages handed back for redelivery (refused by the database, or at shutdown).
    pub nakked: usize,
}

/// Processes one batch. Returns once every message is acked, terminated or nakked; while the
/// database is unreachable, it holds the batch (telling the server it is in progress) and
/// retries with back-off, until it succeeds or the worker shuts down.
pub async fn process(ctx: &BatchContext, batch_id: u64, messages: Vec<Message>) -> BatchReport {
    let span = tracing::info_span!(
        "batch",
        batch_id,
        messages = messages.len(),
        committed = tracing::field::Empty,
        inserted = tracing::field::Empty,
        duplicates = tracing::field::Empty,
        dead_lettered = tracing::field::Empty,
        nakked = tracing::field::Empty,
    );
    let started = Instant::now();
    let report = process_in(ctx, messages).instrument(span.clone()).await;
    span.record("committed", report.committed);
    span.record("inserted", report.inserted);
    span.record("duplicates", report.duplicates);
    span.record("dead_lettered", report.dead_lettered);
    span.record("nakked", report.nakked);
    ctx.metrics
        .batch_seconds
        .observe(started.elapsed().as_secs_f64());
    span.in_scope(|| {
        debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch done"
        )
    });
    report
}

async fn process_in(ctx: &BatchContext, messages: Vec<Message>) -> BatchReport {
    let mut report = BatchReport::default();
    let mut items = Vec::with_capacity(messages.len());
    for message in messages {
        let (stream_seq, delivered) = match message.info() {
            Ok(info) => (Some(info.stream_sequence), info.delivered),
            Err(_) => (None, 1),
        };
        if delivered > ctx.max_deliver {
            // Checked before anything else touches the payload: if it is what crashed the
            // previous holders, it must not crash this worker too.
            let msg_id = record_id(&message.payload, message.headers.as_ref());
            let detail = format!(
                "delivered {delivered} times, more than max_deliver {}; the workers that held it died before acking",
                ctx.max_deliver
            );
            warn!(%msg_id, delivered, max_deliver = ctx.max_deliver,
                  "message exceeded max_deliver; dead-lettering it unprocessed");
            if dead_letter_and_term(ctx, &message, MAX_DELIVER, &detail, &msg_id).await {
                report.dead_lettered += 1;
            } else {
                nak(ctx, &message, Some(Duration::from_secs(1))).await;
                report.nakked += 1;
            }
            continue;
        }
        match decode(&message.payload, message.headers.as_ref(), stream_seq) {
            Decoded::Record(row) => items.push(Item {
                message,
                row: *row,
                delivered,
            }),
            Decoded::Poison {
                reason,
                detail,
                msg_id,
            } => {
                if dead_letter_and_term(ctx, &message, reason, &detail, &msg_id).await {
                    report.dead_lettered += 1;
                } else {
                    nak(ctx, &message, Some(Duration::from_secs(1))).await;
                    report.nakked += 1;
                }
            }
        }
    }
    if !items.is_empty() {
        write_bisecting(ctx, &items, &mut report).await;
    }
    report
}

/// Writes `items`, one transaction per range: the whole batch first; a range the database
/// refuses is split in two until the refused records stand alone.
async fn write_bisecting(ctx: &BatchContext, items: &[Item], report: &mut BatchReport) {
    let mut pending: Vec<Range<usize>> = Vec::with_capacity(8);
    pending.push(0..items.len());
    let mut backoff = Backoff::new(
        Duration::from_millis(200),
        ctx.max_backoff
            .min(ctx.ack_wait / 2)
            .max(Duration::from_millis(200)),
    );
    while let Some(range) = pending.pop() {
        let rows: Vec<&RecordRow> = items[range.clone()].iter().map(|item| &item.row).collect();
        match ctx.store.write(&rows).await {
            Ok(outcome) => {
                if backoff.attempts() > 0 {
                    info!(attempts = backoff.attempts(), "database reachable again");
                    backoff.reset();
                }
                ctx.health.database_up();
                ack(ctx, &items[range.clone()]).await;
                report.committed += range.len();
                report.inserted += outcome.inserted;
                report.duplicates += outcome.duplicates;
                ctx.metrics.records_inserted.inc_by(outcome.inserted);
                ctx.metrics.duplicates.inc_by(outcome.duplicates);
                ctx.metrics.rating(&outcome.rating);
            }
            Err(error) if error.is_data_error() => {
                ctx.metrics.error(error.reason());
                if range.len() > 1 {
                    let middle = range.start + range.len() / 2;
                    debug!(?range, "database refused a range; splitting it");
                    pending.push(middle..range.end);
                    pending.push(range.start..middle);
                } else {
                    refused(ctx, &items[range.start], &error, report).await;
                }
            }
            Err(error) => {
                ctx.metrics.error(error.reason());
                let delay = backoff.next_delay();
                warn!(
                    error = %error_chain(&error),
                    reason = error.reason(),
                    retry_in_ms = delay.as_millis() as u64,
                    "database unavailable; holding the batch"
                );
                ctx.health.database_down(error.reason());
                pending.push(range);
                // Still ours: keep the server from redelivering while we wait.
                for range in &pending {
                    for item in &items[range.clone()] {
                        if let Err(error) = item.message.ack_with(AckKind::Progress).await {
                            debug!(%error, "progress ack failed");
                        }
                    }
                }
                if sleep_unless_cancelled(&ctx.shutdown, delay).await {
                    for range in pending.drain(..) {
                        for item in &items[range] {
                            nak(ctx, &item.message, None).await;
                            report.nakked += 1;
                        }
                    }
                    return;
                }
            }
        }
    }
}

/// A record the database refused on its own: retried on a later delivery, dead-lettered on the
/// last one.
async fn refused(ctx: &BatchContext, item: &Item, error: &StoreError, report: &mut BatchReport) {
    let detail = error_chain(error);
    if item.delivered >= ctx.max_deliver {
        warn!(msg_id = %item.row.msg_id, delivered = item.delivered, %detail,
              "database refused the record on its last delivery; dead-lettering it");
        if dead_letter_and_term(ctx, &item.message, DB_REJECTED, &detail, &item.row.msg_id).await {
            report.dead_lettered += 1;
            return;
        }
    } else {
        warn!(msg_id = %item.row.msg_id, delivered = item.delivered, %detail,
              "database refused the record; it will be retried");
    }
    let delay = Duration::from_millis(500)
        .saturating_mul(u32::try_from(item.delivered.max(1)).unwrap_or(1));
    nak(ctx, &item.message, Some(delay.min(ctx.max_backoff))).await;
    report.nakked += 1;
}

/// Dead-letters `message` and terminates it; `false` (and the message untouched) when the
/// dead letter could not be published.
async fn dead_letter_and_term(
    ctx: &BatchContext,
    message: &Message,
    reason: &str,
    detail: &str,
    msg_id: &str,
) -> bool {
    let letter = DeadLetter {
        reason,
        detail,
        original_msg_id: msg_id,
        source_node: header(message.headers.as_ref(), CDR_SOURCE),
        payload: message.payload.clone(),
    };
    match dead_letter::publish(&ctx.js, letter).await {
        Ok(subject) => {
            ctx.metrics.dead_letter(reason);
            info!(%msg_id, %subject, reason, "dead-lettered");
            if let Err(error) = message.ack_with(AckKind::Term).await {
                ctx.metrics.error("term");
                warn!(%error, %msg_id, "term failed; the message will come back and be dead-lettered again (deduplicated)");
            }
            true
        }
        Err(error) => {
            ctx.metrics.error(error.reason());
            warn!(error = %error_chain(&error), %msg_id, "dead letter failed; will retry");
            false
        }
    }
}

/// Acks every message of `items` (after their commit).
async fn ack(ctx: &BatchContext, items: &[Item]) {
    let results = futures::future::join_all(items.iter().map(|item| item.message.ack())).await;
    let mut acked = 0u64;
    for result in results {
        match result {
            Ok(()) => acked += 1,
            Err(error) => {
                ctx.metrics.error("ack");
                debug!(%error, "ack failed; the message will be redelivered and absorbed");
            }
        }
    }
    ctx.metrics.committed.inc_by(acked);
}

/// Hands `message` back for redelivery after `delay`.
async fn nak(ctx: &BatchContext, message: &Message, delay: Option<Duration>) {
    if let Err(error) = message.ack_with(AckKind::Nak(delay)).await {
        ctx.metrics.error("nak");
        debug!(%error, "nak failed; the message will be redelivered after ack_wait");
    }
}

/// `error: source: source...`, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}
