//! cdr-worker: pulls CDR lines from NATS JetStream and writes them into PostgreSQL.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use nats_cdr_observability::{LogFormat, Readiness, Telemetry, init_tracing, serve};
use nats_cdr_workloads::contract::subjects::{CDR_RAW, DEFAULT_STREAM_NAME};
use nats_cdr_workloads::worker::{
    self, ConsumerMode, Metrics, NatsAuth, WorkerConfig, config::DEFAULT_DURABLE,
};
use prometheus_client::registry::Registry;

/// Pulls CDR lines from a durable JetStream consumer and upserts them into PostgreSQL.
#[derive(Parser)]
#[command(name = "cdr-worker", version)]
struct Args {
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
    /// The stream holding cdr.raw.
    #[arg(long, env = "CDR_STREAM", default_value = DEFAULT_STREAM_NAME)]
    stream: String,
    /// Create the stream when missing (local runs only; in a cluster the operator owns it).
    #[arg(long, env = "WORKER_CREATE_STREAM")]
    create_stream: bool,
    /// Name of the durable consumer.
    #[arg(long, env = "WORKER_DURABLE", default_value = DEFAULT_DURABLE)]
    durable: String,
    /// Subject the consumer filters on.
    #[arg(long, env = "WORKER_FILTER_SUBJECT", default_value = CDR_RAW)]
    filter_subject: String,
    /// Wait for the consumer the operator creates instead of creating it.
    #[arg(long, env = "WORKER_EXPECT_CONSUMER")]
    expect_consumer: bool,
    /// Most messages per batch (one transaction each).
    #[arg(long, env = "WORKER_BATCH_SIZE", default_value_t = 500,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch_size: u32,
    /// Batches processed at once.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
    /// Consumer ack wait, in milliseconds.
    #[arg(long, env = "WORKER_ACK_WAIT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(200..))]
    ack_wait_ms: u64,
    /// Deliveries of a message the worker processes, enforced by the worker itself (the consumer
    /// it creates has an unlimited server-side max_deliver, so a worker killed on a message's last
    /// delivery cannot strand it): a record the database still refuses on this delivery goes to
    /// cdr.dlq.db_rejected; a message delivered more often (its workers died holding it) goes to
    /// cdr.dlq.max_deliver without being processed again.
    #[arg(long, env = "WORKER_MAX_DELIVER", default_value_t = 5,
          value_parser = clap::value_parser!(i64).range(1..))]
    max_deliver: i64,
    /// How long an idle pull waits for a message, in milliseconds.
    #[arg(long, env = "WORKER_FETCH_EXPIRY_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    fetch_expiry_ms: u64,
    /// Longest back-off while NATS or PostgreSQL is down, in milliseconds.
    #[arg(long, env = "WORKER_MAX_BACKOFF_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(100..))]
    max_backoff_ms: u64,
    /// PostgreSQL URL; prefer --database-url-file in clusters.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        conflicts_with = "database_url_file"
    )]
    database_url: Option<String>,
    /// File holding the PostgreSQL URL (a mounted Secret); read and trimmed, never logged.
    #[arg(long, env = "DATABASE_URL_FILE")]
    database_url_file: Option<PathBuf>,
    /// Rate each CDR and debit its account in the transaction that stores it (tariffs, accounts
    /// and the ledger are tables; see workloads/README.md).
    #[arg(long, env = "WORKER_RATING", default_value_t = true, action = clap::ArgAction::Set)]
    rating: bool,
    /// The acc extra naming the paying account (the calling user by default).
    #[arg(long, env = "WORKER_ACCOUNT_KEY", default_value = worker::rating::DEFAULT_ACCOUNT_KEY)]
    account_key: String,
    /// Country code replacing the single leading 0 of a national called number (e.g. 49);
    /// without it such numbers are not E.164 and their calls are stored unrated.
    #[arg(long, env = "WORKER_DEFAULT_COUNTRY_CODE", value_parser = country_code)]
    default_country_code: Option<String>,
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    log_format: LogFormat,
    /// Log filter (`info`, `debug`, `info,nats_cdr_workloads=debug`, ...).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
}

impl Args {
    fn into_config(self) -> anyhow::Result<WorkerConfig> {
        let database_url = match (self.database_url, &self.database_url_file) {
            (Some(url), _) => url,
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the database URL from {}", path.display()))?
                .trim()
                .to_owned(),
            (None, None) => {
                anyhow::bail!("set --database-url (DATABASE_URL) or --database-url-file")
            }
        };
        anyhow::ensure!(!database_url.is_empty(), "the database URL is empty");
        let nats_auth = match (self.nats_creds, self.nats_user, self.nats_password) {
            (Some(path), _, _) => NatsAuth::CredsFile(path),
            (None, Some(user), Some(password)) => NatsAuth::UserPassword { user, password },
            (None, Some(_), None) => anyhow::bail!("NATS_USER is set but NATS_PASSWORD is not"),
            (None, None, _) => NatsAuth::None,
        };
        let mut config = WorkerConfig::new(self.nats_url, database_url);
        config.nats_auth = nats_auth;
        config.stream = self.stream;
        config.create_stream = self.create_stream;
        config.durable = self.durable;
        config.filter_subject = self.filter_subject;
        config.consumer_mode = if self.expect_consumer {
            ConsumerMode::Expect
        } else {
            ConsumerMode::Ensure
        };
        config.batch_size = usize::try_from(self.batch_size)?;
        config.concurrency = usize::try_from(self.concurrency)?;
        config.ack_wait = Duration::from_millis(self.ack_wait_ms);
        config.max_deliver = self.max_deliver;
        config.fetch_expiry = Duration::from_millis(self.fetch_expiry_ms);
        config.max_backoff = Duration::from_millis(self.max_backoff_ms);
        config.rating = worker::rating::RatingConfig {
            enabled: self.rating,
            account_key: self.account_key,
            default_country_code: self.default_country_code,
        };
        Ok(config)
    }
}

/// A country code: 1 to 3 digits, not starting with 0.
fn country_code(value: &str) -> Result<String, String> {
    let valid = (1..=3).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_digit())
        && !value.starts_with('0');
    if valid {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is not a country code (1 to 3 digits, not starting with 0)"
        ))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format, &args.log_level).context("setting up logging")?;
    let metrics_addr = args.metrics_addr;
    let config = args.into_config()?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = Arc::new(Readiness::new("starting"));
    let telemetry = Telemetry::new(registry, readiness.clone());
    let (trigger, shutdown) = worker::shutdown_channel();
    let (bound, server) = serve(metrics_addr, telemetry, shutdown.clone().wait_owned())
        .await
        .context("serving metrics")?;
    tracing::info!(%bound, "serving /metrics, /healthz and /readyz");

    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested; finishing the batches in flight");
        trigger.trigger();
        // A second signal while draining: stop now (unacked messages are redelivered).
        wait_for_signal().await;
        tracing::warn!("second signal; exiting without waiting");
        std::process::exit(130);
    });

    worker::run(config, metrics, readiness, shutdown)
        .await
        .context("cdr-worker failed")?;
    server.abort();
    Ok(())
}

/// Completes on SIGTERM or SIGINT.
async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT stops the worker");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
