//! cdr-worker: a durable pull consumer that writes CDRs into PostgreSQL and acks after commit.
//!
//! The data path, one module per stage:
//! - [`nats`]: connect, find the stream, create (or expect) the durable consumer, pull a batch;
//! - [`decode`]: a message into a [`RecordRow`] (its `Nats-Msg-Id`, the parsed line), or poison;
//! - [`store`]: the schema and the one transaction per batch (records stored once by msg id, the
//!   calls' `cdr` rows recomputed from all their records with the contract's merge rules, then
//!   rated and their accounts debited through a ledger keyed by call: [`rating`]);
//! - [`batch`]: one batch end to end: poison to [`dead_letter`], the rest written (bisected when
//!   the database refuses a record), acked only after the commit;
//! - [`health`], [`metrics`]: `/readyz`, `/metrics`; retries are paced by the crate's
//!   [`backoff`](crate::backoff).
//!
//! The delivery limit (`max_deliver`) is the worker's own: the consumer it creates has an unlimited
//! server-side `max_deliver`, because with a server-side limit a message whose worker dies during
//! its last delivery is never delivered again, a CDR lost without a trace. A message delivered more
//! often than the limit is dead-lettered by [`batch`] before it is processed again. A consumer
//! made by the operator (`--expect-consumer`) with a server-side limit gets a warning at start.
//!
//! [`run`] wires them: `concurrency` loops pull from the same durable consumer (as do other
//! worker processes), each holding at most one batch. While PostgreSQL or NATS is unreachable a
//! loop keeps its batch, backs off (exponential, capped, jittered) and is not ready; it fetches
//! nothing new until its batch is done. On shutdown each loop finishes (or naks) its batch.

pub mod batch;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod health;
pub mod metrics;
pub mod nats;
pub mod rating;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use nats_cdr_observability::Readiness;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use batch::{BatchContext, BatchReport};
pub use config::{ConsumerMode, WorkerConfig};
pub use health::Health;
pub use metrics::Metrics;
pub use nats::NatsError;
pub use store::{RecordRow, Store, StoreError, WriteOutcome};

use crate::backoff::{self, Backoff, sleep_unless_cancelled};
use batch::error_chain;

/// Why the worker could not run.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A setting is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The database settings are unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The NATS settings are unusable.
    #[error(transparent)]
    Nats(#[from] NatsError),
}

impl WorkerError {
    /// Short category for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Store(error) => error.reason(),
            Self::Nats(error) => error.reason(),
        }
    }
}

/// Runs the worker until `shutdown` is cancelled: see the module doc. Returns an error only for
/// settings that can never work (bad URL, unreadable credentials); everything else is retried.
pub async fn run(
    config: WorkerConfig,
    metrics: Metrics,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    if config.batch_size == 0 || config.concurrency == 0 {
        return Err(WorkerError::Config(
            "batch size and concurrency must be at least 1".to_owned(),
        ));
    }
    if config.ack_wait < Duration::from_millis(200) {
        return Err(WorkerError::Config(
            "ack wait must be at least 200ms".to_owned(),
        ));
    }
    info!(config = ?config, "cdr-worker starting");
    let health = Arc::new(Health::new(readiness));
    let store = Store::connect_lazy(
        &config.database_url,
        u32::try_from(config.concurrency + 1).unwrap_or(u32::MAX),
        // Short enough that a held batch gets its progress ack before its ack wait runs out.
        (config.ack_wait / 2).clamp(Duration::from_millis(100), Duration::from_secs(5)),
    )?
    .with_rating(config.rating.clone());
    let client = nats::connect(&config).await?;
    let js = jetstream::new(client.clone());

    health.starting("applying database migrations");
    let migrated = retry(
        &shutdown,
        &metrics,
        config.max_backoff,
        "migrations",
        || {
            let store = store.clone();
            let health = health.clone();
            async move {
                let result = store.migrate().await;
                match &result {
                    Ok(()) => health.database_up(),
                    Err(error) => health.database_down(error.reason()),
                }
                result
            }
        },
    )
    .await;
    if migrated.is_none() {
        return Ok(());
    }

    health.starting("binding the consumer");
    let bound = retry(&shutdown, &metrics, config.max_backoff, "consumer", || {
        let (js, config, health) = (js.clone(), config.clone(), health.clone());
        async move {
            let result = async {
                let stream = nats::stream(&js, &config).await?;
                nats::consumer(&stream, &config).await
            }
            .await;
            match &result {
                Ok(_) => health.nats_up(),
                Err(error) => health.nats_down(error.reason()),
            }
            result
        }
    })
    .await;
    let Some(consumer) = bound else {
        return Ok(());
    };
    let consumer_config = &consumer.cached_info().config;
    let max_deliver = delivery_limit(config.max_deliver, consumer_config.max_deliver);
    if consumer_config.max_deliver > 0 {
        // Only in Expect mode: in Ensure mode the worker itself set it to -1.
        warn!(
            durable = %config.durable,
            server_max_deliver = consumer_config.max_deliver,
            worker_max_deliver = max_deliver,
            "the consumer has a server-side max_deliver: a message whose worker dies (killed, \
             OOM, crash) during its last delivery is never delivered again and its CDR is lost \
             without a dead letter; set the consumer's max_deliver to -1 and let the worker \
             enforce its own limit"
        );
    }
    let ack_wait = if consumer_config.ack_wait.is_zero() {
        config.ack_wait
    } else {
        consumer_config.ack_wait
    };
    info!(
        durable = %config.durable,
        stream = %config.stream,
        max_deliver,
        ack_wait_ms = ack_wait.as_millis() as u64,
        max_ack_pending = consumer_config.max_ack_pending,
        "consumer bound"
    );
    health.started();

    let ctx = BatchContext {
        js,
        store,
        metrics: metrics.clone(),
        health: health.clone(),
        max_deliver,
        ack_wait,
        max_backoff: config.max_backoff,
        shutdown: shutdown.clone(),
    };
    let refresher = tokio::spawn(refresh_pending(
        consumer.clone(),
        metrics.clone(),
        config.pending_refresh,
        shutdown.clone(),
    ));
    let batch_ids = Arc::new(AtomicU64::new(0));
    let mut loops = tokio::task::JoinSet::new();
    for index in 0..config.concurrency {
        loops.spawn(fetch_loop(
            index,
            consumer.clone(),
            ctx.clone(),
            config.clone(),
            batch_ids.clone(),
        ));
    }
    while let Some(result) = loops.join_next().await {
        if let Err(error) = result {
            warn!(%error, "a fetch loop ended abnormally");
        }
    }
    refresher.abort();
    // Acks are queued in the client: make sure they are on the wire before returning. Bounded:
    // with NATS unreachable a flush never completes, and the messages are redelivered anyway.
    match tokio::time::timeout(Duration::from_secs(5), client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            warn!(%error, "flushing acks at shutdown failed; unacked messages will be redelivered");
        }
        Err(_) => {
            warn!("flushing acks at shutdown timed out; unacked messages will be redelivered")
        }
    }
    info!("cdr-worker stopped");
    Ok(())
}

/// The delivery limit the worker enforces: its own, or the server's when that is lower (the
/// server would stop delivering there, so the worker must give up no later).
fn delivery_limit(worker: i64, server: i64) -> i64 {
    let worker = worker.max(1);
    if server > 0 {
        worker.min(server)
    } else {
        worker
    }
}

/// One loop: pull a batch, process it, repeat until shutdown.
async fn fetch_loop(
    index: usize,
    consumer: PullConsumer,
    ctx: BatchContext,
    config: WorkerConfig,
    batch_ids: Arc<AtomicU64>,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), config.max_backoff);
    while !ctx.shutdown.is_cancelled() {
        let fetched = tokio::select! {
            fetched = nats::fetch(&consumer, config.batch_size, config.fetch_expiry) => fetched,
            () = ctx.shutdown.cancelled() => break,
        };
        match fetched {
            Ok(messages) => {
                if backoff.attempts() > 0 {
                    info!(loop_index = index, "pulling again");
                    backoff.reset();
                }
                ctx.health.nats_up();
                if messages.is_empty() {
                    continue;
                }
                ctx.metrics.fetched.inc_by(messages.len() as u64);
                let id = batch_ids.fetch_add(1, Ordering::Relaxed);
                batch::process(&ctx, id, messages).await;
            }
            Err(error) => {
                ctx.metrics.error(error.reason());
                ctx.health.nats_down(error.reason());
                let delay = backoff.next_delay();
                warn!(loop_index = index, error = %error_chain(&error),
                      retry_in_ms = delay.as_millis() as u64, "pull failed");
                if sleep_unless_cancelled(&ctx.shutdown, delay).await {
                    break;
                }
            }
        }
    }
}

/// Keeps the pending gauges up to date from consumer info.
async fn refresh_pending(
    mut consumer: PullConsumer,
    metrics: Metrics,
    every: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match consumer.info().await {
            Ok(info) => {
                metrics
                    .consumer_pending
                    .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                metrics
                    .consumer_ack_pending
                    .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
            }
            Err(error) => {
                metrics.error("consumer_info");
                tracing::debug!(%error, "consumer info failed");
            }
        }
        if sleep_unless_cancelled(&shutdown, every).await {
            return;
        }
    }
}

/// Calls `attempt` until it succeeds, backing off between failures; `None` at shutdown.
async fn retry<T, E, F, Fut>(
    shutdown: &CancellationToken,
    metrics: &Metrics,
    max_backoff: Duration,
    what: &str,
    attempt: F,
) -> Option<T>
where
    E: std::error::Error + Reason,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let policy = Backoff::new(Duration::from_millis(200), max_backoff);
    backoff::retry(shutdown, policy, attempt, |error: &E, delay| {
        metrics.error(error.reason());
        warn!(step = what, error = %error_chain(error), reason = error.reason(),
              retry_in_ms = delay.as_millis() as u64, "start-up step failed; retrying");
    })
    .await
}

/// Errors with a short category.
trait Reason {
    fn reason(&self) -> &'static str;
}

impl Reason for StoreError {
    fn reason(&self) -> &'static str {
        StoreError::reason(self)
    }
}

impl Reason for NatsError {
    fn reason(&self) -> &'static str {
        NatsError::reason(self)
    }
}

#[cfg(test)]
mod tests {
    use super::delivery_limit;

    #[test]
    fn the_worker_limit_applies_when_the_server_has_none() {
        assert_eq!(delivery_limit(5, -1), 5);
        assert_eq!(delivery_limit(5, 0), 5);
        assert_eq!(delivery_limit(0, -1), 1);
    }

    #[test]
    fn a_lower_server_limit_wins() {
        assert_eq!(delivery_limit(5, 3), 3);
        assert_eq!(delivery_limit(5, 10), 5);
    }
}
