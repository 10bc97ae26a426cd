//! Decoding the acc_json `time` value.
//!
//! Kamailio writes `time` as integer epoch seconds (`acc_time_mode` 0), float epoch seconds
//! (mode 2, `seconds.milliseconds`) or a formatted string (modes 3 and 4, default format
//! `%Y-%m-%d %H:%M:%S`). Strings without an offset are read as UTC: mode 4 writes UTC, and mode 3
//! (local time) is only correct when the node's time zone is UTC.
//!
//! Every time is rounded to the microsecond, the resolution of PostgreSQL's `timestamptz`, so a
//! CDR merged here and one recomputed in the database compare equal. Only times from 1970-01-01
//! to 9999-12-31 are accepted: anything else is a broken clock or a broken line, and could not be
//! stored as a `timestamptz` in every case.

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};
use serde_json::{Number, Value};

/// The latest accepted time, 9999-12-31T23:59:59Z, in epoch seconds.
const MAX_EPOCH_SECONDS: i64 = 253_402_300_799;

/// Formats of strings that carry an offset, tried after RFC 3339.
const FORMATS_WITH_OFFSET: [&str; 2] = ["%Y-%m-%d %H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%.f%z"];

/// Formats of strings without an offset, read as UTC (the first is acc's default).
const FORMATS_WITHOUT_OFFSET: [&str; 2] = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"];

/// The instant `value` denotes, or `None` when it is not a supported time.
pub(super) fn parse_time(value: &Value) -> Option<DateTime<Utc>> {
    let time = match value {
        Value::Number(number) => from_number(number),
        Value::String(text) => from_text(text.trim()),
        _ => None,
    }?;
    let time = time.round_subsecs(6);
    (0..=MAX_EPOCH_SECONDS)
        .contains(&time.timestamp())
        .then_some(time)
}

/// Integer or float epoch seconds.
fn from_number(number: &Number) -> Option<DateTime<Utc>> {
    match number.as_i64() {
        Some(seconds) => DateTime::from_timestamp(seconds, 0),
        None => number.as_f64().and_then(from_float_seconds),
    }
}

/// Float epoch seconds, rounded to the microsecond (which also undoes the float's binary
/// rounding of a millisecond value).
fn from_float_seconds(seconds: f64) -> Option<DateTime<Utc>> {
    let micros = (seconds * 1e6).round();
    // False for NaN and infinities too; within the bound the cast is exact.
    if micros.abs() < 9.0e18 {
        DateTime::from_timestamp_micros(micros as i64)
    } else {
        None
    }
}

/// A numeric string (epoch seconds) or a formatted date-time.
fn from_text(text: &str) -> Option<DateTime<Utc>> {
    if is_decimal(text) {
        return match text.parse::<i64>() {
            Ok(seconds) => DateTime::from_timestamp(seconds, 0),
            Err(_) => text.parse::<f64>().ok().and_then(from_float_seconds),
        };
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Some(time.to_utc());
    }
    let with_offset = FORMATS_WITH_OFFSET
        .iter()
        .find_map(|format| DateTime::parse_from_str(text, format).ok())
        .map(|time| time.to_utc());
    with_offset.or_else(|| {
        FORMATS_WITHOUT_OFFSET
            .iter()
            .find_map(|format| NaiveDateTime::parse_from_str(text, format).ok())
            .map(|time| time.and_utc())
    })
}

/// Digits with at most one `.` and at least one digit: `1700000000`, `1700000000.123`.
fn is_decimal(text: &str) -> bool {
    let mut dots = 0;
    let mut digits = 0;
    for b in text.bytes() {
        match b {
            b'0'..=b'9' => digits += 1,
            b'.' => dots += 1,
            _ => return false,
        }
    }
    digits > 0 && dots <= 1
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// 2023-11-14T22:13:20Z
    const EPOCH: i64 = 1_700_000_000;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.to_utc())
            .unwrap_or_else(|e| panic!("bad fixture {text}: {e}"))
    }

    fn parsed(value: Value) -> Option<String> {
        parse_time(&value).map(|t| t.to_rfc3339())
    }

    #[test]
    fn integer_epoch_seconds() {
        assert_eq!(parse_time(&json!(EPOCH)), Some(utc("2023-11-14T22:13:20Z")));
        assert_eq!(parse_time(&json!(0)), DateTime::from_timestamp(0, 0));
    }

    #[test]
    fn float_epoch_seconds_keep_milliseconds_exactly() {
        assert_eq!(
            parse_time(&json!(1_700_000_000.123_f64)),
            Some(utc("2023-11-14T22:13:20.123Z"))
        );
        assert_eq!(
            parse_time(&json!(1_700_000_000.5_f64)),
            Some(utc("2023-11-14T22:13:20.5Z"))
        );
    }

    #[test]
    fn numeric_strings_are_epoch_seconds() {
        assert_eq!(
            parse_time(&json!("1700000000")),
            Some(utc("2023-11-14T22:13:20Z"))
        );
        assert_eq!(
            parse_time(&json!(" 1700000000.250 ")),
            Some(utc("2023-11-14T22:13:20.25Z"))
        );
    }

    #[test]
    fn acc_default_format_is_utc() {
        assert_eq!(
            parse_time(&json!("2023-11-14 22:13:20")),
            Some(utc("2023-11-14T22:13:20Z"))
        );
        assert_eq!(
            parse_time(&json!("2023-11-14 22:13:20.125")),
            Some(utc("2023-11-14T22:13:20.125Z"))
        );
    }

    #[test]
    fn iso_and_rfc3339_strings() {
        let expected = Some(utc("2023-11-14T22:13:20.5Z"));
        for text in [
            "2023-11-14T22:13:20.5Z",
            "2023-11-14T23:13:20.5+01:00",
            "2023-11-14 23:13:20.5+01:00",
            "2023-11-14T23:13:20.5+0100",
            "2023-11-14 23:13:20.5+0100",
            "2023-11-14T22:13:20.5",
        ] {
            assert_eq!(parse_time(&json!(text)), expected, "{text}");
        }
    }

    #[test]
    fn sub_microsecond_digits_are_rounded_to_the_microsecond() {
        assert_eq!(
            parsed(json!("2023-11-14T22:13:20.1234567Z")),
            Some("2023-11-14T22:13:20.123457+00:00".to_owned())
        );
        assert_eq!(
            parsed(json!(1.123_456_7_f64)),
            Some("1970-01-01T00:00:01.123457+00:00".to_owned())
        );
    }

    #[test]
    fn times_outside_1970_to_9999_are_rejected() {
        assert_eq!(parsed(json!(-1)), None);
        assert_eq!(parsed(json!(MAX_EPOCH_SECONDS + 1)), None);
        assert_eq!(parsed(json!(u64::MAX)), None);
        assert_eq!(parsed(json!(i64::MIN)), None);
        assert_eq!(parsed(json!(1e300)), None);
        assert_eq!(parsed(json!(-1e300)), None);
        assert_eq!(parsed(json!("1969-12-31 23:59:59")), None);
        assert!(parsed(json!(MAX_EPOCH_SECONDS)).is_some());
    }

    #[test]
    fn other_values_are_rejected() {
        for value in [
            json!(null),
            json!(true),
            json!([EPOCH]),
            json!({"s": EPOCH}),
            json!(""),
            json!("."),
            json!("1.2.3"),
            json!("-5"),
            json!("NaN"),
            json!("inf"),
            json!("1e9"),
            json!("yesterday"),
            json!("2023-13-01 00:00:00"),
            json!("2023-11-14"),
            json!("22:13:20"),
        ] {
            assert_eq!(parse_time(&value), None, "{value}");
        }
    }
}
