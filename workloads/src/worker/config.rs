//! What the worker needs to run, independent of how it was given (flags, env, tests).

use std::time::Duration;

use super::rating::RatingConfig;
use crate::contract::subjects::{CDR_RAW, DEFAULT_STREAM_NAME};

use crate::nats_auth::NatsAuth;

/// Whether the worker creates its consumer or waits for one made by someone else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsumerMode {
    /// Create the durable consumer with the configured settings, or update it to them.
    #[default]
    Ensure,
    /// Wait until the operator has created it; use it as it is.
    Expect,
}

/// Settings of a worker.
#[derive(Clone)]
pub struct WorkerConfig {
    /// NATS server URL(s), comma separated.
    pub nats_url: String,
    /// NATS credentials.
    pub nats_auth: NatsAuth,
    /// The stream holding `cdr.raw`.
    pub stream: String,
    /// Create the stream (contract subjects, file storage) when missing: local runs and tests.
    pub create_stream: bool,
    /// The durable consumer's name.
    pub durable: String,
    /// Subject the consumer filters on.
    pub filter_subject: String,
    /// Create the consumer or expect it.
    pub consumer_mode: ConsumerMode,
    /// Most messages per batch (and per transaction).
    pub batch_size: usize,
    /// Batches processed at once (each in its own transaction).
    pub concurrency: usize,
    /// How long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// Deliveries of a message the worker processes; enforced by the worker, not the server (the
    /// consumer it creates has `max_deliver = -1`). A record the database refuses on its last
    /// delivery is dead-lettered (`db_rejected`); a message delivered more often than this (its
    /// holders died or crashed) is dead-lettered unprocessed (`max_deliver`) and terminated.
    pub max_deliver: i64,
    /// How long one pull waits for a first message when the consumer is idle.
    pub fetch_expiry: Duration,
    /// PostgreSQL URL (a secret: never logged).
    pub database_url: String,
    /// Longest back-off between retries when NATS or PostgreSQL is down.
    pub max_backoff: Duration,
    /// How often consumer info is read for the pending gauges.
    pub pending_refresh: Duration,
    /// Rating and balance debit.
    pub rating: RatingConfig,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("nats_url", &self.nats_url)
            .field("nats_auth", &self.nats_auth)
            .field("stream", &self.stream)
            .field("create_stream", &self.create_stream)
            .field("durable", &self.durable)
            .field("filter_subject", &self.filter_subject)
            .field("consumer_mode", &self.consumer_mode)
            .field("batch_size", &self.batch_size)
            .field("concurrency", &self.concurrency)
            .field("ack_wait", &self.ack_wait)
            .field("max_deliver", &self.max_deliver)
            .field("fetch_expiry", &self.fetch_expiry)
            .field("database_url", &"<redacted>")
            .field("max_backoff", &self.max_backoff)
            .field("pending_refresh", &self.pending_refresh)
            .field("rating", &self.rating)
            .finish()
    }
}

/// Default name of the durable consumer.
pub const DEFAULT_DURABLE: &str = "cdr-worker";

impl WorkerConfig {
    /// The defaults of the design, for `nats_url` and `database_url`.
    pub fn new(nats_url: impl Into<String>, database_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            nats_auth: NatsAuth::None,
            stream: DEFAULT_STREAM_NAME.to_owned(),
            create_stream: false,
            durable: DEFAULT_DURABLE.to_owned(),
            filter_subject: CDR_RAW.to_owned(),
            consumer_mode: ConsumerMode::Ensure,
            batch_size: 500,
            concurrency: 2,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            fetch_expiry: Duration::from_secs(5),
            database_url: database_url.into(),
            max_backoff: Duration::from_secs(30),
            pending_refresh: Duration::from_secs(5),
            rating: RatingConfig::default(),
        }
    }

    /// `max_ack_pending` of the consumer: every worker loop may hold one batch, with room for
    /// a few replicas of the worker.
    pub fn max_ack_pending(&self) -> i64 {
        let per_worker = self
            .batch_size
            .max(1)
            .saturating_mul(self.concurrency.max(1));
        i64::try_from(per_worker.saturating_mul(4)).unwrap_or(i64::MAX)
    }
}
