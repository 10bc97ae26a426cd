//! One Kamailio acc_json line, decoded tolerantly into an [`AccRecord`].
//!
//! The decoder accepts what acc_json and syslog write in practice:
//! - pure JSON lines and lines with a syslog prefix (see [`parse_line`]);
//! - the core keys `method`, `from_tag`, `to_tag`, `callid`, `sip_code`, `sip_reason` as strings
//!   or numbers (a number is kept as its decimal text, so `200` and `"200"` are the same code);
//! - `time` as integer or float epoch seconds, a numeric string, `%Y-%m-%d %H:%M:%S` or an ISO
//!   8601 / RFC 3339 date-time;
//! - any other key as an operator-configured extra, kept as JSON.
//!
//! It rejects, with a [`ParseError`] whose [`reason`](ParseError::reason) names a dead-letter
//! subject: a line without a JSON object, a missing or empty `callid`, a missing or unreadable
//! `time`, and a core key holding an array, object or boolean. It never panics, whatever the
//! bytes: there is a no-panic test here and a fuzz target in `workloads/fuzz`.

mod envelope;
mod kind;
mod time;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub use kind::RecordKind;

/// Key of the SIP Call-ID.
const CALLID: &str = "callid";
/// Key of the time of the accounted event.
const TIME: &str = "time";
/// Longest rendering of a bad value kept in an error message, in characters.
const MAX_VALUE_PREVIEW_CHARS: usize = 64;

/// Why a line could not be decoded; [`reason`](Self::reason) is the dead-letter category.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The line neither starts with `{` nor has a `{` after a syslog `": "` prefix.
    #[error("line holds no JSON object")]
    NoJsonObject,
    /// The JSON part of the line is not UTF-8.
    #[error("JSON part of the line is not valid UTF-8")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// The JSON part of the line is not one well-formed JSON object.
    #[error("JSON part of the line is not a valid JSON object")]
    InvalidJson(#[source] serde_json::Error),
    /// `callid` is absent, null or blank.
    #[error("callid is missing or empty")]
    MissingCallId,
    /// A core key holds something other than a string, a number or null.
    #[error("{key} holds {found}, expected a string or a number")]
    BadField {
        /// The core key.
        key: &'static str,
        /// The JSON type found instead.
        found: &'static str,
    },
    /// `time` is absent or null.
    #[error("time is missing")]
    MissingTime,
    /// `time` is neither epoch seconds nor a supported date-time from 1970 to 9999.
    #[error("time {value} is not epoch seconds or a supported date-time")]
    BadTime {
        /// The offending value as JSON, shortened.
        value: String,
    },
}

impl ParseError {
    /// Short category of the failure, usable as a NATS subject token and a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoJsonObject | Self::InvalidJson(_) => "not_json",
            Self::NotUtf8(_) => "not_utf8",
            Self::MissingCallId => "missing_callid",
            Self::BadField { .. } => "bad_field",
            Self::MissingTime | Self::BadTime { .. } => "bad_time",
        }
    }

    /// The message with its sources, `outer: inner: ...`: the human detail for a dead letter.
    pub fn detail(&self) -> String {
        let mut detail = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(error) = source {
            detail.push_str(": ");
            detail.push_str(&error.to_string());
            source = error.source();
        }
        detail
    }
}

/// One accounted SIP transaction, as written by acc_json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccRecord {
    /// The SIP Call-ID (`callid`); never empty in a parsed record.
    pub call_id: String,
    /// The SIP method (`method`), e.g. `INVITE` or `BYE`.
    pub method: Option<String>,
    /// The From tag (`from_tag`).
    pub from_tag: Option<String>,
    /// The To tag (`to_tag`).
    pub to_tag: Option<String>,
    /// The final response code as text (`sip_code`), e.g. `200`.
    pub sip_code: Option<String>,
    /// The final response reason phrase (`sip_reason`), e.g. `OK`.
    pub sip_reason: Option<String>,
    /// When the transaction was accounted (`time`), to the microsecond.
    pub time: DateTime<Utc>,
    /// Every other key of the line (`src_user`, `dst_user`, `src_ip`, ...), as JSON.
    #[serde(default)]
    pub extras: Map<String, Value>,
}

impl AccRecord {
    /// The calling user, from the `src_user` extra when it is a non-empty string.
    pub fn src_user(&self) -> Option<&str> {
        self.extra_str("src_user")
    }

    /// The called user, from the `dst_user` extra when it is a non-empty string.
    pub fn dst_user(&self) -> Option<&str> {
        self.extra_str("dst_user")
    }

    /// The extra `key` when it is a non-empty string.
    pub fn extra_str(&self, key: &str) -> Option<&str> {
        self.extras
            .get(key)
            .and_then(Value::as_str)
            .filter(|value| !value.is_empty())
    }

    /// The response code as a number, when `sip_code` is one.
    pub fn sip_code_number(&self) -> Option<u16> {
        self.sip_code.as_deref()?.trim().parse().ok()
    }

    /// Whether the record's method is `method`, ignoring ASCII case and surrounding whitespace.
    pub fn is_method(&self, method: &str) -> bool {
        self.method
            .as_deref()
            .is_some_and(|own| own.trim().eq_ignore_ascii_case(method))
    }
}

/// Decodes one acc_json line.
///
/// `line` may end in `"\n"` or `"\r\n"`. If it does not start with `{`, it is taken to carry a
/// syslog prefix (`Nov 22 10:00:00 sip-01 json_acc[812]: {...}`, or one with an RFC 3339
/// timestamp) and the JSON starts at the first `{` after the first `": "`.
pub fn parse_line(line: &[u8]) -> Result<AccRecord, ParseError> {
    let json = envelope::json_object(line).ok_or(ParseError::NoJsonObject)?;
    let text = std::str::from_utf8(json).map_err(ParseError::NotUtf8)?;
    let mut fields: Map<String, Value> =
        serde_json::from_str(text).map_err(ParseError::InvalidJson)?;

    let call_id = take_text(&mut fields, CALLID)?
        .filter(|call_id| !call_id.trim().is_empty())
        .ok_or(ParseError::MissingCallId)?;
    let time = match fields.remove(TIME) {
        None | Some(Value::Null) => return Err(ParseError::MissingTime),
        Some(value) => time::parse_time(&value).ok_or_else(|| ParseError::BadTime {
            value: preview(&value),
        })?,
    };
    Ok(AccRecord {
        call_id,
        method: take_text(&mut fields, "method")?,
        from_tag: take_text(&mut fields, "from_tag")?,
        to_tag: take_text(&mut fields, "to_tag")?,
        sip_code: take_text(&mut fields, "sip_code")?,
        sip_reason: take_text(&mut fields, "sip_reason")?,
        time,
        extras: fields,
    })
}

/// Removes the core key `key` and returns it as text: a string as is, a number as its decimal
/// text; an absent key, null and the empty string are `None`.
fn take_text(
    fields: &mut Map<String, Value>,
    key: &'static str,
) -> Result<Option<String>, ParseError> {
    match fields.remove(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text).filter(|text| !text.is_empty())),
        Some(Value::Number(number)) => Ok(Some(number.to_string())),
        Some(other) => Err(ParseError::BadField {
            key,
            found: json_type(&other),
        }),
    }
}

/// The JSON type name of `value`, for messages.
fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// `value` as JSON text, cut to [`MAX_VALUE_PREVIEW_CHARS`] characters.
fn preview(value: &Value) -> String {
    let mut text = value.to_string();
    if let Some((cut, _)) = text.char_indices().nth(MAX_VALUE_PREVIEW_CHARS) {
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests;
