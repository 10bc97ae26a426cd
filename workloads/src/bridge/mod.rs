//! kam-cdr-bridge: tails Kamailio's acc_json file and publishes every line to JetStream.
//!
//! The stages, one module each, top-down:
//! 1. [`tail`]: read complete lines from the file, across rotations (a blocking thread woken by
//!    [`wake`]: inotify, the poll interval as a fallback);
//! 2. [`classify`]: route each line to `cdr.raw` or, when malformed, to [`dead_letter`];
//! 3. [`publish`]: publish chunks of lines, each line its own message with its `Nats-Msg-Id`, as
//!    one atomic [`batch`] when the stream allows it (one disk sync per batch), else line by line;
//!    retried with back-off until acked; then announce their [`events`] call events;
//! 4. [`window`]: track the chunks in flight in file order; [`checkpoint`]: persist the offset
//!    past the longest acked prefix of lines.
//!
//! [`run`] wires them together with [`metrics`] and the `/metrics`, `/healthz`, `/readyz`
//! endpoint.

pub mod batch;
pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod dead_letter;
pub mod events;
pub mod metrics;
pub mod publish;
pub mod tail;
pub mod wake;
pub mod window;

use std::sync::Arc;
use std::time::Duration;

use nats_cdr_observability::{ObservabilityError, Readiness, Telemetry};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::BridgeConfig;

use checkpoint::{Checkpoint, CheckpointError};
use metrics::Metrics;
use publish::Publisher;
use tail::{CurrentFile, Tailer};
use window::Window;

use crate::backoff::{self, Backoff};
use crate::contract::subjects::{DEFAULT_STREAM_NAME, STREAM_SUBJECTS};
use crate::nats_auth::ConnectError;

/// Why the bridge stopped.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The checkpoint could not be read at start-up.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// NATS could not be set up.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The metrics endpoint could not be served.
    #[error("cannot serve metrics")]
    Telemetry(#[source] ObservabilityError),
    /// The reading thread could not be started.
    #[error("cannot start the reading thread")]
    Spawn(#[source] std::io::Error),
    /// The reading thread stopped on its own.
    #[error("the reading thread stopped")]
    TailerStopped,
    /// A publishing task panicked or was cancelled: a bug. The lines it held are read again
    /// after the restart.
    #[error("a publishing task failed")]
    Publisher(#[source] tokio::task::JoinError),
}

impl BridgeError {
    /// Short category for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Checkpoint(e) => e.reason(),
            Self::Connect(e) => e.reason(),
            Self::Telemetry(_) => "telemetry",
            Self::Spawn(_) => "spawn",
            Self::TailerStopped => "tailer_stopped",
            Self::Publisher(_) => "publisher",
        }
    }
}

/// Runs the bridge until `shutdown` is cancelled, then waits (up to the shutdown timeout) for the
/// acks of what is in flight and writes a last checkpoint.
pub async fn run(config: BridgeConfig, shutdown: CancellationToken) -> Result<(), BridgeError> {
    let metrics = Metrics::default();
    let readiness = Arc::new(Readiness::new("connecting to NATS"));
    if let Some(addr) = config.metrics_addr {
        let mut registry = Registry::with_prefix("kam_cdr_bridge");
        metrics.register(&mut registry);
        let telemetry = Telemetry::new(registry, readiness.clone());
        let (bound, _task) =
            nats_cdr_observability::serve(addr, telemetry, shutdown.clone().cancelled_owned())
                .await
                .map_err(BridgeError::Telemetry)?;
        tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
    }

    let resume = checkpoint::load(&config.checkpoint)?;
    tracing::info!(
        file = %config.file.display(),
        checkpoint = %config.checkpoint.display(),
        resume_offset = resume.as_ref().map(|c| c.offset),
        node = %config.node,
        in_flight = config.in_flight,
        "starting kam-cdr-bridge"
    );
    let client = crate::nats_auth::connect(
        &config.nats_url,
        &config.auth,
        format!("kam-cdr-bridge/{}", config.node),
    )
    .await?;
    if let Some(stream) = &config.create_stream {
        create_stream(&client, stream, &config, &shutdown).await;
    }
    let publisher = Arc::new(Publisher::new(client.clone(), &config, metrics.clone()));

    let tailer = Tailer::new(
        config.file.clone(),
        resume.clone(),
        config.max_line_bytes,
        config.rotate_grace,
    );
    let current_file = tailer.current_file();
    let (tx, rx) = mpsc::channel(4);
    // Stops the reading thread when this function returns, however it returns.
    let tail_stop = CancellationToken::new();
    let _stop_tail_on_return = tail_stop.clone().drop_guard();
    tail::spawn(
        tailer,
        tx,
        config.poll_interval,
        metrics.lines_read.clone(),
        tail_stop,
    )
    .map_err(BridgeError::Spawn)?;

    let mut pipeline = Pipeline {
        config: &config,
        metrics: &metrics,
        readiness: &readiness,
        client: &client,
        current_file,
        saved: resume,
        window: Window::new(
            // Chunks of one line when batches are off: then every line is a unit.
            if config.batch_max > 1 {
                config.batches_in_flight
            } else {
                config.in_flight
            },
            config.in_flight,
        ),
    };
    let result = pipeline.run(publisher, rx, &shutdown).await;
    if let Err(error) = client.flush().await {
        tracing::debug!(error = %error, "flush on shutdown failed");
    }
    result
}

/// The publish window and the checkpoint of its acked prefix.
struct Pipeline<'a> {
    config: &'a BridgeConfig,
    metrics: &'a Metrics,
    readiness: &'a Readiness,
    client: &'a async_nats::Client,
    current_file: CurrentFile,
    /// The checkpoint last written (or loaded).
    saved: Option<Checkpoint>,
    /// What is in flight, and the checkpoint past its acked prefix.
    window: Window<Checkpoint>,
}

impl Pipeline<'_> {
    async fn run(
        &mut self,
        publisher: Arc<Publisher>,
        mut rx: mpsc::Receiver<Vec<tail::Line>>,
        shutdown: &CancellationToken,
    ) -> Result<(), BridgeError> {
        // Each chunk is its own task, so classifying and staging lines use every core.
        let mut in_flight: JoinSet<window::Ticket> = JoinSet::new();
        let mut pending: std::collections::VecDeque<tail::Line> = Default::default();
        let chunk_max = self.config.batch_max.max(1);
        let mut tick = tokio::time::interval(self.config.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut result = Ok(());
        loop {
            // What is read goes out at once, in chunks as large as the window lets in: one line
            // at a time when the lines trickle in, full batches when they pile up meanwhile.
            while !pending.is_empty() && self.window.room() > 0 {
                let take = pending.len().min(self.window.room()).min(chunk_max);
                let chunk: Vec<tail::Line> = pending.drain(..take).collect();
                let Some(mark) = chunk.last().map(tail::Line::checkpoint) else {
                    break;
                };
                let ticket = self.window.open(mark, chunk.len());
                let publisher = publisher.clone();
                in_flight.spawn(async move {
                    publisher.deliver_chunk(chunk).await;
                    ticket
                });
            }
            self.metrics.in_flight.set(self.window.lines() as i64);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    if let Err(error) = self.acked(done) {
                        result = Err(error);
                        break;
                    }
                    // Take every other ack that is already in, without a new select round.
                    while let Some(done) = in_flight.try_join_next() {
                        if let Err(error) = self.acked(done) {
                            result = Err(error);
                            break;
                        }
                    }
                    if result.is_err() {
                        break;
                    }
                }
                // Keep reading while the window is full, up to one chunk ahead.
                batch = rx.recv(), if pending.len() < chunk_max => match batch {
                    Some(batch) => pending.extend(batch),
                    None => {
                        result = Err(BridgeError::TailerStopped);
                        break;
                    }
                },
                _ = tick.tick() => {
                    self.update_readiness();
                    self.save().await;
                }
            }
        }
        drop(rx);
        let left = in_flight.len();
        let shutdown_timeout = self.config.shutdown_timeout;
        let drain = async {
            while let Some(done) = in_flight.join_next().await {
                if self.acked(done).is_err() {
                    break;
                }
            }
        };
        if tokio::time::timeout(shutdown_timeout, drain).await.is_err() {
            tracing::warn!(
                left,
                "shutdown timeout: some lines were not acked; they are read again on restart"
            );
        }
        self.save().await;
        tracing::info!(offset = self.saved.as_ref().map(|c| c.offset), "stopped");
        result
    }

    /// Records the ack of a finished chunk.
    fn acked(
        &mut self,
        done: Result<window::Ticket, tokio::task::JoinError>,
    ) -> Result<(), BridgeError> {
        let ticket = done.map_err(BridgeError::Publisher)?;
        self.window.ack(ticket);
        Ok(())
    }

    fn update_readiness(&self) {
        if self.client.connection_state() == async_nats::connection::State::Connected {
            self.readiness.set_ready();
        } else {
            self.readiness.set_not_ready("NATS is unreachable");
        }
    }

    /// Writes the acked checkpoint when it moved, and updates the lag metric.
    async fn save(&mut self) {
        if let Some(acked) = self.window.acked().cloned()
            && self.saved.as_ref() != Some(&acked)
        {
            let path = self.config.checkpoint.clone();
            let to_store = acked.clone();
            let stored = tokio::task::spawn_blocking(move || checkpoint::store(&path, &to_store))
                .await
                .unwrap_or_else(|e| {
                    Err(CheckpointError::Write {
                        path: self.config.checkpoint.clone(),
                        source: std::io::Error::other(e),
                    })
                });
            match stored {
                Ok(()) => {
                    tracing::debug!(
                        offset = acked.offset,
                        ino = acked.file.ino,
                        "checkpoint written"
                    );
                    self.saved = Some(acked);
                }
                Err(error) => {
                    self.metrics.checkpoint_errors.inc();
                    tracing::warn!(error = %error, reason = error.reason(), "checkpoint not written");
                }
            }
        }
        let current = match self.current_file.lock() {
            Ok(current) => *current,
            Err(_) => None,
        };
        if let Some((id, size)) = current {
            let done = match &self.saved {
                Some(saved) if saved.file == id => saved.offset,
                _ => 0,
            };
            self.metrics
                .checkpoint_lag_bytes
                .set(i64::try_from(size.saturating_sub(done)).unwrap_or(i64::MAX));
        }
    }
}

/// Creates the stream (local runs): `cdr.>`, file storage, 2 min duplicate window. Retries
/// until NATS answers or shutdown.
async fn create_stream(
    client: &async_nats::Client,
    name: &str,
    config: &BridgeConfig,
    shutdown: &CancellationToken,
) {
    let js = async_nats::jetstream::new(client.clone());
    let stream = async_nats::jetstream::stream::Config {
        name: if name.is_empty() {
            DEFAULT_STREAM_NAME.to_owned()
        } else {
            name.to_owned()
        },
        subjects: STREAM_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
        storage: async_nats::jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let created = backoff::retry(
        shutdown,
        Backoff::new(config.backoff_initial, config.backoff_max),
        || js.get_or_create_stream(stream.clone()),
        |error, delay| {
            tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "cannot create the stream yet; retrying");
        },
    )
    .await;
    if created.is_some() {
        tracing::info!(stream = %stream.name, "stream ready");
    }
}
