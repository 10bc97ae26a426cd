//! Parsing of the human forms of durations (`24h`, `1h30m`, `7d`) and sizes (`10GiB`, `512MB`)
//! that the custom resources accept (see `common::DURATION_PATTERN` and `common::SIZE_PATTERN`).

use std::time::Duration;

/// A duration or size string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("invalid duration {0:?}: expected groups like 90s, 2m, 24h, 7d, 1h30m")]
    Duration(String),
    #[error("invalid size {0:?}: expected a number with an optional unit like 512MB, 10GiB")]
    Size(String),
}

impl UnitError {
    /// Short category for Events, conditions and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Duration(_) => "InvalidDuration",
            Self::Size(_) => "InvalidSize",
        }
    }
}

/// Parses `90s`, `2m`, `24h`, `7d`, `1h30m`, `1.5h`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(text.to_owned());
    if text.is_empty() {
        return Err(err());
    }
    let mut total_nanos: f64 = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if number_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..number_len].parse().map_err(|_| err())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "d" => 86_400e9,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total_nanos += value * nanos_per_unit;
    }
    if !total_nanos.is_finite() || total_nanos > u64::MAX as f64 {
        return Err(err());
    }
    Ok(Duration::from_nanos(total_nanos.round() as u64))
}

/// Parses `1048576`, `512MB`, `512M`, `10GiB`, `10Gi`, `1.5GB` into bytes. SI units (`K`, `KB`,
/// `M`, `MB`, ...) are powers of 1000, binary units (`Ki`, `KiB`, ...) powers of 1024.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(text.to_owned());
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    if split == 0 {
        return Err(err());
    }
    let value: f64 = text[..split].parse().map_err(|_| err())?;
    let multiplier: f64 = match &text[split..] {
        "" | "B" => 1.0,
        "K" | "KB" => 1e3,
        "M" | "MB" => 1e6,
        "G" | "GB" => 1e9,
        "T" | "TB" => 1e12,
        "P" | "PB" => 1e15,
        "Ki" | "KiB" => 1024.0,
        "Mi" | "MiB" => 1024f64.powi(2),
        "Gi" | "GiB" => 1024f64.powi(3),
        "Ti" | "TiB" => 1024f64.powi(4),
        "Pi" | "PiB" => 1024f64.powi(5),
        _ => return Err(err()),
    };
    let bytes = value * multiplier;
    if !bytes.is_finite() || bytes > i64::MAX as f64 {
        return Err(err());
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_human_forms() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in ["", "10", "h", "1 day", "5y", "1h-", "..s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn sizes_in_human_forms() {
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size("512MB"), Ok(512_000_000));
        assert_eq!(parse_size("512M"), Ok(512_000_000));
        assert_eq!(parse_size("10GiB"), Ok(10 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("10Gi"), Ok(10 * 1024 * 1024 * 1024));
        assert_eq!(parse_size("1.5KB"), Ok(1_500));
    }

    #[test]
    fn bad_sizes_are_refused() {
        for bad in ["", "GB", "10 GB", "10gb", "-1", "1e9"] {
            assert!(parse_size(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn patterns_and_parsers_agree_on_examples() {
        // The CRD patterns and these parsers must accept the same spellings the docs show.
        for good in ["90s", "2m", "24h", "7d", "1h30m"] {
            assert!(parse_duration(good).is_ok());
        }
        for good in ["512MB", "10GiB", "1G", "1024"] {
            assert!(parse_size(good).is_ok());
        }
    }
}
