//! What the two binaries' command lines share: the NATS flags ([`NatsArgs`], flattened into
//! both), the telemetry flags ([`TelemetryArgs`]), and human durations (`5s`, `200ms`, `1m30s`)
//! and sizes (`8MiB`) parsed with the same rules as the custom resources
//! ([`nats_cdr_crds::units`]).

use std::net::SocketAddr;
use std::time::Duration;

use nats_cdr_crds::units::{UnitError, parse_duration, parse_size};
use nats_cdr_observability::{LogFormat, ObservabilityError, init_tracing};

pub use crate::nats_auth::NatsArgs;

/// A flag value that does not parse or is out of range.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// Not a duration or size.
    #[error(transparent)]
    Unit(#[from] UnitError),
    /// Below the flag's minimum.
    #[error("{value:?} is shorter than the minimum of {min:?}")]
    TooShort {
        /// The value given.
        value: String,
        /// The minimum.
        min: Duration,
    },
    /// More bytes than this machine can address.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses a human duration: `200ms`, `5s`, `1m30s`, `2h`.
pub fn duration(text: &str) -> Result<Duration, FlagError> {
    Ok(parse_duration(text)?)
}

/// A duration of at least `min`.
pub fn duration_at_least(text: &str, min: Duration) -> Result<Duration, FlagError> {
    let value = duration(text)?;
    if value < min {
        return Err(FlagError::TooShort {
            value: text.to_owned(),
            min,
        });
    }
    Ok(value)
}

/// Parses a size in bytes: `1048576`, `512KiB`, `8MiB`, `1MB`.
pub fn size(text: &str) -> Result<usize, FlagError> {
    usize::try_from(parse_size(text)?).map_err(|_| FlagError::TooLarge(text.to_owned()))
}

/// `/metrics`, `/healthz`, `/readyz` and logging.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
    /// Log filter (`info`, `debug`, `info,nats_cdr_workloads=debug`, ...).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_level: String,
}

impl TelemetryArgs {
    /// Installs the global tracing subscriber these flags ask for.
    pub fn init_tracing(&self) -> Result<(), ObservabilityError> {
        init_tracing(self.log_format, &self.log_level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Both {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
        #[arg(long, value_parser = duration, default_value = "200ms")]
        poll: Duration,
    }

    #[test]
    fn durations_and_sizes_in_human_forms() {
        assert_eq!(duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(duration("200").is_err(), "a bare number has no unit");
        assert!(matches!(
            duration_at_least("100ms", Duration::from_millis(200)),
            Err(FlagError::TooShort { .. })
        ));
        assert_eq!(size("8MiB").unwrap(), 8 * 1024 * 1024);
        assert_eq!(size("4096").unwrap(), 4096);
        assert!(size("8 MiB").is_err());
    }

    #[test]
    fn flattened_flags_parse_with_their_defaults() {
        let args =
            Both::try_parse_from(["x", "--nats-url", "nats://n:4222", "--poll", "50ms"]).unwrap();
        assert_eq!(args.nats.nats_url, "nats://n:4222");
        assert_eq!(args.poll, Duration::from_millis(50));
        assert!(Both::try_parse_from(["x", "--poll", "fast"]).is_err());
    }
}
