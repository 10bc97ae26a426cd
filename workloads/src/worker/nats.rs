//! NATS: the connection, the stream and durable consumer, and pulling a batch.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::Config as PullConfig;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::stream::{Config as StreamConfig, StorageType};
use async_nats::jetstream::{self, Message};
use futures::StreamExt;

use super::config::{ConsumerMode, WorkerConfig};
use crate::contract::subjects::STREAM_SUBJECTS;
use crate::nats_auth::ConnectError;

/// Failure to talk to NATS.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// The connection cannot be set up (unreadable credentials, a malformed URL).
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The stream cannot be created.
    #[error("stream {stream} cannot be created")]
    CreateStream {
        /// The stream.
        stream: String,
        /// Why.
        #[source]
        source: jetstream::context::CreateStreamError,
    },
    /// The stream is missing or unreadable.
    #[error("stream {stream} is unavailable")]
    GetStream {
        /// The stream.
        stream: String,
        /// Why.
        #[source]
        source: jetstream::context::GetStreamError,
    },
    /// The consumer cannot be created or updated.
    #[error("consumer {consumer} cannot be created")]
    CreateConsumer {
        /// The consumer.
        consumer: String,
        /// Why.
        #[source]
        source: jetstream::stream::ConsumerError,
    },
    /// The consumer is missing or unreadable.
    #[error("consumer {consumer} is unavailable")]
    GetConsumer {
        /// The consumer.
        consumer: String,
        /// Why.
        #[source]
        source: async_nats::Error,
    },
    /// A pull request could not be made.
    #[error("pulling messages failed")]
    Fetch(#[source] jetstream::consumer::pull::BatchError),
    /// A pull request ended in an error before any message.
    #[error("pulling messages failed")]
    Pull(#[source] async_nats::Error),
}

impl NatsError {
    /// Short category for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect(error) => error.reason(),
            Self::CreateStream { .. } | Self::GetStream { .. } => "stream_unavailable",
            Self::CreateConsumer { .. } | Self::GetConsumer { .. } => "consumer_unavailable",
            Self::Fetch(_) | Self::Pull(_) => "fetch",
        }
    }
}

/// Connects to NATS. The client keeps reconnecting by itself for ever, also when the server is
/// not up yet at start.
pub async fn connect(config: &WorkerConfig) -> Result<async_nats::Client, NatsError> {
    Ok(
        crate::nats_auth::connect(&config.nats_url, &config.nats_auth, "cdr-worker".to_owned())
            .await?,
    )
}

/// Looks the stream up, creating it first when `config.create_stream` says so.
pub async fn stream(
    js: &jetstream::Context,
    config: &WorkerConfig,
) -> Result<jetstream::stream::Stream, NatsError> {
    let stream = config.stream.clone();
    if config.create_stream {
        js.get_or_create_stream(StreamConfig {
            name: config.stream.clone(),
            subjects: STREAM_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
            storage: StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..StreamConfig::default()
        })
        .await
        .map_err(|source| NatsError::CreateStream { stream, source })
    } else {
        js.get_stream(&config.stream)
            .await
            .map_err(|source| NatsError::GetStream { stream, source })
    }
}

/// The consumer's server-side `max_deliver` the worker asks for: unlimited.
///
/// The worker enforces `--max-deliver` itself (see [`batch`](super::batch)). A server-side limit
/// strands messages: when a worker dies (killed, OOM, a crash on a poison record) while holding a
/// message on its last allowed delivery, the server never delivers it again, and nobody
/// dead-letters it either, so the CDR is silently lost.
pub const SERVER_MAX_DELIVER: i64 = -1;

/// The consumer settings the worker asks for in [`ConsumerMode::Ensure`]: note `max_deliver` is
/// [`SERVER_MAX_DELIVER`], not `config.max_deliver`.
pub fn consumer_config(config: &WorkerConfig) -> PullConfig {
    PullConfig {
        durable_name: Some(config.durable.clone()),
        description: Some("cdr-worker: cdr.raw into PostgreSQL".to_owned()),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: config.ack_wait,
        max_deliver: SERVER_MAX_DELIVER,
        filter_subject: config.filter_subject.clone(),
        max_ack_pending: config.max_ack_pending(),
        ..PullConfig::default()
    }
}

/// The durable consumer: created (or updated) to [`consumer_config`], or expected to exist.
pub async fn consumer(
    stream: &jetstream::stream::Stream,
    config: &WorkerConfig,
) -> Result<PullConsumer, NatsError> {
    let consumer = config.durable.clone();
    match config.consumer_mode {
        ConsumerMode::Ensure => stream
            .create_consumer(consumer_config(config))
            .await
            .map_err(|source| NatsError::CreateConsumer { consumer, source }),
        ConsumerMode::Expect => stream
            .get_consumer(&config.durable)
            .await
            .map_err(|source| NatsError::GetConsumer { consumer, source }),
    }
}

/// Pulls up to `batch_size` messages. Takes what is available at once; when nothing is, waits
/// up to `expiry` for the first message and returns with it (the next pull gets the rest), so
/// an idle worker makes one request per `expiry` and a busy one never waits.
pub async fn fetch(
    consumer: &PullConsumer,
    batch_size: usize,
    expiry: Duration,
) -> Result<Vec<Message>, NatsError> {
    let immediate = collect(
        consumer
            .fetch()
            .max_messages(batch_size)
            .messages()
            .await
            .map_err(NatsError::Fetch)?,
    )
    .await?;
    if !immediate.is_empty() {
        return Ok(immediate);
    }
    collect(
        consumer
            .batch()
            .max_messages(1)
            .expires(expiry)
            .messages()
            .await
            .map_err(NatsError::Fetch)?,
    )
    .await
}

/// Drains one pull response. An error after some messages keeps those messages.
async fn collect(
    mut batch: async_nats::jetstream::consumer::pull::Batch,
) -> Result<Vec<Message>, NatsError> {
    let mut messages = Vec::new();
    while let Some(item) = batch.next().await {
        match item {
            Ok(message) => messages.push(message),
            Err(error) if messages.is_empty() => return Err(NatsError::Pull(error)),
            Err(error) => {
                tracing::debug!(%error, "pull ended early");
                break;
            }
        }
    }
    Ok(messages)
}
