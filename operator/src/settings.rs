//! Command-line flags (with environment fallbacks) and the settings the controllers run with.

use std::net::SocketAddr;
use std::time::Duration;

use nats_cdr_observability::LogFormat;

/// Flags of the operator binary. Every flag has an environment fallback.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "nats-cdr-operator", version, about)]
pub struct Args {
    /// Namespaces to watch, comma-separated; all namespaces when empty.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,
    /// Log format: `json` or `text`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
    /// Log filter (`info`, `info,nats_cdr_operator=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,
    /// Period of the full resync of every object (jittered by up to 10 %), e.g. `5m`.
    #[arg(long, env = "RESYNC_PERIOD", default_value = "5m", value_parser = parse_duration)]
    pub resync_period: Duration,
    /// How often live figures (messages, bytes, pending) are copied into status, e.g. `1m`.
    #[arg(long, env = "STATUS_REFRESH", default_value = "1m", value_parser = parse_duration)]
    pub status_refresh: Duration,
    /// Timeout of every JetStream API call, e.g. `5s`.
    #[arg(long, env = "NATS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub nats_timeout: Duration,
    /// Longest retry delay of a failing object (backoff starts at 1 s and doubles).
    #[arg(long, env = "MAX_BACKOFF", default_value = "5m", value_parser = parse_duration)]
    pub max_backoff: Duration,
    /// Longest a reconcile may take before it is abandoned and retried with backoff (a call that
    /// hangs must not hold a concurrency slot forever), e.g. `2m`.
    #[arg(long, env = "RECONCILE_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub reconcile_timeout: Duration,
    /// Objects reconciled concurrently per kind.
    #[arg(long, env = "CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Run only while holding a coordination.k8s.io Lease (set when running several replicas).
    #[arg(long, env = "LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,
    /// Name of the Lease.
    #[arg(long, env = "LEASE_NAME", default_value = "nats-cdr-operator")]
    pub lease_name: String,
    /// Namespace of the Lease.
    #[arg(long, env = "LEASE_NAMESPACE", default_value = "nats-cdr-system")]
    pub lease_namespace: String,
    /// Identity written into the Lease; the pod name (`POD_NAME`) or the host name when unset.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Image of kam-cdr-bridge for CdrPipelines that name none.
    #[arg(long, env = "BRIDGE_IMAGE", default_value_t = DefaultImages::default().bridge)]
    pub bridge_image: String,
    /// Image of cdr-worker for CdrPipelines that name none.
    #[arg(long, env = "WORKER_IMAGE", default_value_t = DefaultImages::default().worker)]
    pub worker_image: String,
    /// Image of nats-server for managed NatsClusters that name none.
    #[arg(long, env = "NATS_IMAGE", default_value_t = DefaultImages::default().nats_server)]
    pub nats_image: String,
}

/// Version of nats-server the default image carries (scripts/versions.env pins the same).
pub const NATS_SERVER_VERSION: &str = "2.15.2";

/// Images the operator deploys when an object names none: the ones `scripts/images.sh` builds,
/// tagged with this crate's version (nats-server with its own), as the chart's defaults are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultImages {
    pub bridge: String,
    pub worker: String,
    pub nats_server: String,
}

impl Default for DefaultImages {
    fn default() -> Self {
        let version = env!("CARGO_PKG_VERSION");
        Self {
            bridge: format!("ghcr.io/nats-cdr/kam-cdr-bridge:{version}"),
            worker: format!("ghcr.io/nats-cdr/cdr-worker:{version}"),
            nats_server: format!("ghcr.io/nats-cdr/nats-server:{NATS_SERVER_VERSION}"),
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    nats_cdr_crds::units::parse_duration(text).map_err(|e| e.to_string())
}

/// What the controllers run with (built from [`Args`], or directly by tests and the bench).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces to watch; all when empty.
    pub namespaces: Vec<String>,
    /// Resync period of objects that are in sync (jittered by up to 10 %).
    pub resync_period: Duration,
    /// Least time between two status writes that only refresh live figures.
    pub status_refresh: Duration,
    /// Timeout of each JetStream API call and of connecting.
    pub nats_timeout: Duration,
    /// First retry delay of a failing object.
    pub min_backoff: Duration,
    /// Longest retry delay of a failing object.
    pub max_backoff: Duration,
    /// How often an object waiting for something else (its stream, its cluster) looks again.
    pub dependency_poll: Duration,
    /// Longest a reconcile may take before it is abandoned and retried with backoff.
    pub reconcile_timeout: Duration,
    /// Objects reconciled concurrently per kind.
    pub concurrency: u16,
    /// Leader election; `None` runs the controllers at once.
    pub leader_election: Option<crate::LeaseSettings>,
    /// Name of this instance in Events and the Lease.
    pub identity: String,
    /// Images deployed when an object names none.
    pub images: DefaultImages,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            resync_period: Duration::from_secs(300),
            status_refresh: Duration::from_secs(60),
            nats_timeout: Duration::from_secs(5),
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            dependency_poll: Duration::from_secs(10),
            reconcile_timeout: Duration::from_secs(120),
            concurrency: 8,
            leader_election: None,
            identity: default_identity(),
            images: DefaultImages::default(),
        }
    }
}

impl From<&Args> for Settings {
    fn from(args: &Args) -> Self {
        let identity = args.identity.clone().unwrap_or_else(default_identity);
        Self {
            namespaces: args
                .namespaces
                .iter()
                .filter(|n| !n.is_empty())
                .cloned()
                .collect(),
            resync_period: args.resync_period,
            status_refresh: args.status_refresh,
            nats_timeout: args.nats_timeout,
            max_backoff: args.max_backoff,
            reconcile_timeout: args.reconcile_timeout,
            concurrency: args.concurrency,
            leader_election: args.leader_election.then(|| crate::LeaseSettings {
                name: args.lease_name.clone(),
                namespace: args.lease_namespace.clone(),
                identity: identity.clone(),
                ..crate::LeaseSettings::default()
            }),
            identity,
            images: DefaultImages {
                bridge: args.bridge_image.clone(),
                worker: args.worker_image.clone(),
                nats_server: args.nats_image.clone(),
            },
            ..Self::default()
        }
    }
}

fn default_identity() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("nats-cdr-operator-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_parse_with_human_durations() {
        let args = Args::parse_from([
            "op",
            "--namespaces",
            "a,b",
            "--resync-period",
            "30s",
            "--reconcile-timeout",
            "45s",
            "--leader-election",
        ]);
        let settings = Settings::from(&args);
        assert_eq!(settings.namespaces, vec!["a", "b"]);
        assert_eq!(settings.resync_period, Duration::from_secs(30));
        assert_eq!(settings.reconcile_timeout, Duration::from_secs(45));
        assert!(settings.leader_election.is_some());
    }
}
