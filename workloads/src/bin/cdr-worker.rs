//! cdr-worker: pulls CDR lines from NATS JetStream and writes them into PostgreSQL.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use nats_cdr_observability::{CancellationToken, Readiness, Telemetry, cancel_on_signal, serve};
use nats_cdr_workloads::cli::{self, NatsArgs, TelemetryArgs};
use nats_cdr_workloads::contract::subjects::{CDR_RAW, DEFAULT_STREAM_NAME};
use nats_cdr_workloads::worker::{
    self, ConsumerMode, Metrics, WorkerConfig, config::DEFAULT_DURABLE,
};
use prometheus_client::registry::Registry;

/// Pulls CDR lines from a durable JetStream consumer and upserts them into PostgreSQL.
#[derive(Parser)]
#[command(name = "cdr-worker", version)]
struct Args {
    #[command(flatten)]
    nats: NatsArgs,
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
    /// Consumer ack wait (at least `200ms`).
    #[arg(long, env = "WORKER_ACK_WAIT", default_value = "30s", value_parser = ack_wait)]
    ack_wait: Duration,
    /// Deliveries of a message the worker processes, enforced by the worker itself (the consumer
    /// it creates has an unlimited server-side max_deliver, so a worker killed on a message's last
    /// delivery cannot strand it): a record the database still refuses on this delivery goes to
    /// cdr.dlq.db_rejected; a message delivered more often (its workers died holding it) goes to
    /// cdr.dlq.max_deliver without being processed again.
    #[arg(long, env = "WORKER_MAX_DELIVER", default_value_t = 5,
          value_parser = clap::value_parser!(i64).range(1..))]
    max_deliver: i64,
    /// How long an idle pull waits for a message (at least `100ms`).
    #[arg(long, env = "WORKER_FETCH_EXPIRY", default_value = "5s", value_parser = at_least_100ms)]
    fetch_expiry: Duration,
    /// Longest back-off while NATS or PostgreSQL is down (at least `100ms`).
    #[arg(long, env = "WORKER_MAX_BACKOFF", default_value = "30s", value_parser = at_least_100ms)]
    max_backoff: Duration,
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
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

fn ack_wait(text: &str) -> Result<Duration, cli::FlagError> {
    cli::duration_at_least(text, Duration::from_millis(200))
}

fn at_least_100ms(text: &str) -> Result<Duration, cli::FlagError> {
    cli::duration_at_least(text, Duration::from_millis(100))
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
        let mut config = WorkerConfig::new(self.nats.nats_url.clone(), database_url);
        config.nats_auth = self.nats.auth()?;
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
        config.ack_wait = self.ack_wait;
        config.max_deliver = self.max_deliver;
        config.fetch_expiry = self.fetch_expiry;
        config.max_backoff = self.max_backoff;
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
    args.telemetry
        .init_tracing()
        .context("setting up logging")?;
    let metrics_addr = args.telemetry.metrics_addr;
    let config = args.into_config()?;

    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let readiness = Arc::new(Readiness::new("starting"));
    let telemetry = Telemetry::new(registry, readiness.clone());
    let shutdown = CancellationToken::new();
    let (bound, server) = serve(metrics_addr, telemetry, shutdown.clone().cancelled_owned())
        .await
        .context("serving metrics")?;
    tracing::info!(%bound, "serving /metrics, /healthz and /readyz");

    let result = tokio::select! {
        result = worker::run(config, metrics, readiness, shutdown.clone()) => {
            result.context("cdr-worker failed")
        }
        // A second signal while draining: stop now (unacked messages are redelivered).
        () = cancel_on_signal(shutdown.clone()) => std::process::exit(130),
    };
    server.abort();
    result
}
