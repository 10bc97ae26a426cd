//! Dead letters: lines that cannot go to `cdr.raw`, on `cdr.dlq.<reason>` with the reason.
//!
//! A dead letter carries the original bytes. When they do not fit in the server's
//! `max_payload`, it carries the first bytes that fit and says so in [`DLQ_TRUNCATED`] and
//! [`DLQ_ORIGINAL_SIZE`].

use bytes::Bytes;

use super::classify::{Headers, Outbound, headers_size};
use crate::contract::ParseError;
use crate::contract::headers::{
    CDR_SOURCE, CORRELATION_ID, DLQ_DETAIL, DLQ_REASON, NATS_MSG_ID, detail_value,
};
use crate::contract::subjects::dead_letter_subject;

pub use crate::contract::headers::{DLQ_ORIGINAL_SIZE, DLQ_TRUNCATED};

/// Reason of a line too large to publish.
pub const OVERSIZED: &str = "oversized";

/// Bytes kept free below `max_payload` for rounding on the wire.
const SLACK: usize = 16;

/// Why a message could not be made to fit.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// Even the headers alone exceed the server's `max_payload`.
    #[error("headers of {headers} bytes leave no room under max_payload {max_payload}")]
    NoRoom {
        /// Size of the header block.
        headers: usize,
        /// The server's limit.
        max_payload: usize,
    },
}

impl DeadLetterError {
    /// Short category for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRoom { .. } => "dlq_no_room",
        }
    }
}

fn base_headers(node: &str, id: String, reason: &str, detail: &str) -> Headers {
    vec![
        (NATS_MSG_ID, id.clone()),
        (CDR_SOURCE, node.to_owned()),
        (CORRELATION_ID, id),
        (DLQ_REASON, reason.to_owned()),
        (DLQ_DETAIL, detail_value(detail)),
    ]
}

/// The dead letter of a line the parser refused.
pub fn malformed(node: &str, id: String, bytes: Bytes, error: &ParseError) -> Outbound {
    let reason = error.reason();
    Outbound {
        subject: dead_letter_subject(reason),
        headers: base_headers(node, id, reason, &error.detail()),
        payload: bytes,
        dead_letter: Some(reason),
        event: None,
    }
}

/// The dead letter of a line of `original_len` bytes, too large to publish; `bytes` is what is
/// kept of it (maybe already cut). `max_payload` cuts it further when given.
pub fn oversized(
    node: &str,
    id: String,
    bytes: Bytes,
    original_len: u64,
    max_payload: Option<usize>,
) -> Outbound {
    let detail = match max_payload {
        Some(max) => {
            format!("line of {original_len} bytes exceeds the server max_payload of {max} bytes")
        }
        None => format!("line of {original_len} bytes exceeds the bridge's line limit"),
    };
    let mut headers = base_headers(node, id, OVERSIZED, &detail);
    if original_len > bytes.len() as u64 {
        headers.push((DLQ_TRUNCATED, "true".to_owned()));
        headers.push((DLQ_ORIGINAL_SIZE, original_len.to_string()));
    }
    Outbound {
        subject: dead_letter_subject(OVERSIZED),
        headers,
        payload: bytes,
        dead_letter: Some(OVERSIZED),
        event: None,
    }
}

/// `message` made to fit in `max_payload`: unchanged when it fits; a raw line that does not
/// becomes an oversized dead letter; a dead letter keeps the first bytes that fit.
pub fn fit(message: Outbound, node: &str, max_payload: usize) -> Result<Outbound, DeadLetterError> {
    if message.wire_size() + SLACK <= max_payload {
        return Ok(message);
    }
    let original_len = message
        .header(DLQ_ORIGINAL_SIZE)
        .and_then(|size| size.parse().ok())
        .unwrap_or(message.payload.len() as u64);
    let id = message.header(NATS_MSG_ID).unwrap_or_default().to_owned();
    let mut letter = if message.dead_letter.is_none() {
        oversized(
            node,
            id,
            message.payload.clone(),
            original_len,
            Some(max_payload),
        )
    } else {
        message
    };
    if !letter.headers.iter().any(|(key, _)| *key == DLQ_TRUNCATED) {
        letter.headers.push((DLQ_TRUNCATED, "true".to_owned()));
        letter
            .headers
            .push((DLQ_ORIGINAL_SIZE, original_len.to_string()));
    }
    let headers = headers_size(&letter.headers);
    let room = max_payload
        .checked_sub(headers + SLACK)
        .filter(|room| *room > 0)
        .ok_or(DeadLetterError::NoRoom {
            headers,
            max_payload,
        })?;
    letter.payload = letter.payload.slice(..room.min(letter.payload.len()));
    Ok(letter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::subjects::CDR_RAW;

    fn raw(payload: &[u8]) -> Outbound {
        Outbound {
            subject: CDR_RAW.to_owned(),
            headers: vec![(NATS_MSG_ID, "id1".to_owned())],
            payload: Bytes::copy_from_slice(payload),
            dead_letter: None,
            event: None,
        }
    }

    #[test]
    fn small_messages_are_unchanged() {
        let out = fit(raw(b"{}"), "n", 4096).unwrap();
        assert_eq!(out.subject, CDR_RAW);
    }

    #[test]
    fn oversized_raw_line_becomes_a_truncated_dead_letter() {
        let out = fit(raw(&[b'x'; 10_000]), "n", 4096).unwrap();
        assert_eq!(out.subject, "cdr.dlq.oversized");
        assert_eq!(out.header(DLQ_REASON), Some("oversized"));
        assert_eq!(out.header(DLQ_TRUNCATED), Some("true"));
        assert_eq!(out.header(DLQ_ORIGINAL_SIZE), Some("10000"));
        assert_eq!(out.header(NATS_MSG_ID), Some("id1"));
        assert!(out.wire_size() <= 4096);
        assert!(out.payload.len() > 3000);
    }

    #[test]
    fn no_room_is_an_error() {
        assert_eq!(
            fit(raw(&[b'x'; 100]), "n", 50).unwrap_err().reason(),
            "dlq_no_room"
        );
    }
}
