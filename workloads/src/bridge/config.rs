//! The bridge's settings, independent of how they were given (flags, env, tests).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::nats_auth::NatsAuth;

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// The acc_json file to tail.
    pub file: PathBuf,
    /// Where the checkpoint is persisted.
    pub checkpoint: PathBuf,
    /// NATS server URL(s), comma separated.
    pub nats_url: String,
    /// NATS credentials.
    pub auth: NatsAuth,
    /// Name of this SIP node (`cdr-source` header, part of every msg id).
    pub node: String,
    /// Most lines awaiting their ack at once.
    pub in_flight: usize,
    /// Most lines per atomic batch (nats-server's limit is 1000); 1 publishes line by line.
    pub batch_max: usize,
    /// Most batches (chunks of lines) awaiting their ack at once: 2, so the next batch is staged
    /// while one commits. More does not help: on nats-server 2.15.2 concurrent batches of one
    /// stream interleave and slow each other down (bench: 4 in flight was 2-3x slower than 1 or
    /// 2 with `sync_interval: always`). nats-server allows 50 open atomic batches per stream by
    /// default, shared by every bridge publishing to it.
    pub batches_in_flight: usize,
    /// How often to look at the file again after reaching its end.
    pub poll_interval: Duration,
    /// How often the checkpoint is written (when it moved).
    pub checkpoint_interval: Duration,
    /// How long a renamed-away file is still read after the new file appeared.
    pub rotate_grace: Duration,
    /// Longest line kept in memory; longer lines are cut and dead-lettered as oversized.
    pub max_line_bytes: usize,
    /// First retry delay of a failed publish.
    pub backoff_initial: Duration,
    /// Longest retry delay of a failed publish.
    pub backoff_max: Duration,
    /// How long a publish waits for its ack before it is retried.
    pub ack_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight acks.
    pub shutdown_timeout: Duration,
    /// Where `/metrics`, `/healthz`, `/readyz` are served; `None` serves nothing.
    pub metrics_addr: Option<SocketAddr>,
    /// Create the stream when it does not exist (local runs only; the operator owns it).
    pub create_stream: Option<String>,
}

impl BridgeConfig {
    /// Defaults for everything but the paths, URL and node name.
    pub fn new(file: PathBuf, checkpoint: PathBuf, nats_url: String, node: String) -> Self {
        Self {
            file,
            checkpoint,
            nats_url,
            auth: NatsAuth::None,
            node,
            in_flight: 4096,
            batch_max: 1000,
            batches_in_flight: 2,
            poll_interval: Duration::from_millis(200),
            checkpoint_interval: Duration::from_secs(1),
            rotate_grace: Duration::from_secs(1),
            max_line_bytes: 8 * 1024 * 1024,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
            metrics_addr: None,
            create_stream: None,
        }
    }
}
