//! kam-cdr-bridge: tails Kamailio's acc_json file and publishes every line to NATS JetStream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use nats_cdr_observability::{LogFormat, init_tracing};
use nats_cdr_workloads::bridge::{self, BridgeConfig, NatsAuth};

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
    /// NATS server URL(s), comma separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// NATS credentials file (JWT + nkey).
    #[arg(long, env = "NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// NATS user (with NATS_PASSWORD).
    #[arg(long, env = "NATS_USER")]
    nats_user: Option<String>,
    /// NATS password; from the environment only, never printed.
    #[arg(long, env = "NATS_PASSWORD", hide_env_values = true, hide = true)]
    nats_password: Option<String>,
    /// Name of this SIP node (`cdr-source` header, part of every Nats-Msg-Id).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Most publishes awaiting their ack at once.
    #[arg(long, env = "BRIDGE_IN_FLIGHT", default_value_t = 1024)]
    in_flight: usize,
    /// How often to look at the file again at its end, in milliseconds.
    #[arg(long, env = "BRIDGE_POLL_INTERVAL_MS", default_value_t = 200)]
    poll_interval_ms: u64,
    /// How often the checkpoint is written, in milliseconds.
    #[arg(long, env = "BRIDGE_CHECKPOINT_INTERVAL_MS", default_value_t = 1000)]
    checkpoint_interval_ms: u64,
    /// How long a renamed-away file is still read after the new one appeared, in milliseconds.
    #[arg(long, env = "BRIDGE_ROTATE_GRACE_MS", default_value_t = 1000)]
    rotate_grace_ms: u64,
    /// Longest line kept in memory, in bytes; longer lines are dead-lettered (truncated).
    #[arg(long, env = "BRIDGE_MAX_LINE_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_line_bytes: usize,
    /// How long to wait for in-flight acks on shutdown, in seconds.
    #[arg(long, env = "BRIDGE_SHUTDOWN_TIMEOUT_SECS", default_value_t = 10)]
    shutdown_timeout_secs: u64,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Log filter (`info`, `debug`, `info,nats_cdr_workloads=debug`, ...).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
    /// Create this stream if missing (local runs only; in a cluster the operator owns it).
    #[arg(long, env = "BRIDGE_CREATE_STREAM")]
    create_stream: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format, &args.log_level).context("setting up logging")?;
    let auth = match (args.nats_creds, args.nats_user, args.nats_password) {
        (Some(path), _, _) => NatsAuth::CredsFile(path),
        (None, Some(user), Some(password)) => NatsAuth::UserPassword { user, password },
        (None, Some(_), None) => anyhow::bail!("NATS_USER is set but NATS_PASSWORD is not"),
        _ => NatsAuth::None,
    };
    let mut config = BridgeConfig::new(args.file, args.checkpoint, args.nats_url, args.node_name);
    config.auth = auth;
    config.in_flight = args.in_flight;
    config.poll_interval = Duration::from_millis(args.poll_interval_ms);
    config.checkpoint_interval = Duration::from_millis(args.checkpoint_interval_ms);
    config.rotate_grace = Duration::from_millis(args.rotate_grace_ms);
    config.max_line_bytes = args.max_line_bytes;
    config.shutdown_timeout = Duration::from_secs(args.shutdown_timeout_secs);
    config.metrics_addr = Some(args.metrics_addr);
    config.create_stream = args.create_stream;
    bridge::run(config, shutdown_signal())
        .await
        .context("kam-cdr-bridge failed")
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(error = %error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received; shutting down"),
    }
}
