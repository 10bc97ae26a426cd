//! kam-cdr-bridge: tails Kamailio's acc_json file and publishes every line to NATS JetStream.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use nats_cdr_observability::{CancellationToken, cancel_on_signal};
use nats_cdr_workloads::bridge::{self, BridgeConfig};
use nats_cdr_workloads::cli::{self, NatsArgs, TelemetryArgs};

/// Tails a Kamailio acc_json file and publishes every line to NATS JetStream.
#[derive(Parser)]
#[command(name = "kam-cdr-bridge", version)]
struct Args {
    /// The acc_json file to tail.
    #[arg(
        long,
        env = "KAM_CDR_FILE",
        default_value = "/var/log/kamailio/acc/cdr.jsonl"
    )]
    file: PathBuf,
    /// Where the read position is persisted.
    #[arg(
        long,
        env = "KAM_CDR_CHECKPOINT",
        default_value = "/var/lib/kam-cdr-bridge/checkpoint.json"
    )]
    checkpoint: PathBuf,
    #[command(flatten)]
    nats: NatsArgs,
    /// Name of this SIP node (`cdr-source` header, part of every Nats-Msg-Id).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Most lines awaiting their ack at once.
    #[arg(long, env = "BRIDGE_IN_FLIGHT", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    in_flight: u32,
    /// Most lines per atomic batch when the stream allows atomic publish (`allow_atomic`); 1
    /// publishes every line on its own (one disk sync each with `sync_interval: always`).
    #[arg(long, env = "BRIDGE_BATCH_MAX", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    batch_max: u32,
    /// Most batches awaiting their ack at once (nats-server allows 50 open atomic batches per
    /// stream by default, for all bridges together).
    #[arg(long, env = "BRIDGE_BATCHES_IN_FLIGHT", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=50))]
    batches_in_flight: u32,
    /// How often to look at the file again at its end (`200ms`, `1s`).
    #[arg(long, env = "BRIDGE_POLL_INTERVAL", default_value = "200ms", value_parser = cli::duration)]
    poll_interval: Duration,
    /// How often the checkpoint is written.
    #[arg(long, env = "BRIDGE_CHECKPOINT_INTERVAL", default_value = "1s", value_parser = cli::duration)]
    checkpoint_interval: Duration,
    /// How long a renamed-away file is still read after the new one appeared.
    #[arg(long, env = "BRIDGE_ROTATE_GRACE", default_value = "1s", value_parser = cli::duration)]
    rotate_grace: Duration,
    /// Longest line kept in memory (`8MiB`, `65536`); longer lines are dead-lettered (truncated).
    #[arg(long, env = "BRIDGE_MAX_LINE_BYTES", default_value = "8MiB", value_parser = cli::size)]
    max_line_bytes: usize,
    /// How long a publish waits for its ack before it is retried.
    #[arg(long, env = "BRIDGE_ACK_TIMEOUT", default_value = "5s", value_parser = cli::duration)]
    ack_timeout: Duration,
    /// Longest retry delay of a failed publish (the first is 100ms, doubling).
    #[arg(long, env = "BRIDGE_MAX_BACKOFF", default_value = "5s", value_parser = cli::duration)]
    max_backoff: Duration,
    /// How long to wait for in-flight acks on shutdown.
    #[arg(long, env = "BRIDGE_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = cli::duration)]
    shutdown_timeout: Duration,
    #[command(flatten)]
    telemetry: TelemetryArgs,
    /// Create this stream if missing (local runs only; in a cluster the operator owns it).
    #[arg(long, env = "BRIDGE_CREATE_STREAM")]
    create_stream: Option<String>,
}

impl Args {
    fn into_config(self) -> anyhow::Result<BridgeConfig> {
        let mut config = BridgeConfig::new(
            self.file,
            self.checkpoint,
            self.nats.nats_url.clone(),
            self.node_name,
        );
        config.auth = self.nats.auth()?;
        config.in_flight = usize::try_from(self.in_flight)?;
        config.batch_max = usize::try_from(self.batch_max)?;
        config.batches_in_flight = usize::try_from(self.batches_in_flight)?;
        config.poll_interval = self.poll_interval;
        config.checkpoint_interval = self.checkpoint_interval;
        config.rotate_grace = self.rotate_grace;
        config.max_line_bytes = self.max_line_bytes;
        config.ack_timeout = self.ack_timeout;
        config.backoff_max = self.max_backoff;
        config.shutdown_timeout = self.shutdown_timeout;
        config.metrics_addr = Some(self.telemetry.metrics_addr);
        config.create_stream = self.create_stream;
        Ok(config)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.telemetry
        .init_tracing()
        .context("setting up logging")?;
    let config = args.into_config()?;
    let shutdown = CancellationToken::new();
    tokio::select! {
        result = bridge::run(config, shutdown.clone()) => result.context("kam-cdr-bridge failed"),
        // A second signal while draining: stop now (unacked lines are read again on restart).
        () = cancel_on_signal(shutdown.clone()) => std::process::exit(130),
    }
}
