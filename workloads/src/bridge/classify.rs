//! What to publish for one line: the raw line on `cdr.raw`, or a dead letter.
//!
//! Pure: a line in, an [`Outbound`] message out. The line is parsed only to route it (a line the
//! worker could not decode goes to `cdr.dlq.<reason>` right away) and to derive its call event.

use bytes::Bytes;

use super::dead_letter;
use super::events::{CallEvent, call_event};
use super::tail::Line;
use crate::contract::headers::{
    CDR_SOURCE, CORRELATION_ID, NATS_MSG_ID, TRACEPARENT, detail_value,
};
use crate::contract::msg_id::msg_id;
use crate::contract::parse_line;
use crate::contract::subjects::CDR_RAW;

/// Header names and values of a message, in order.
pub type Headers = Vec<(&'static str, String)>;

/// One message ready to publish.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Concrete subject.
    pub subject: String,
    /// Headers, `Nats-Msg-Id` first.
    pub headers: Headers,
    /// The line's bytes (or a truncated copy, as the headers say).
    pub payload: Bytes,
    /// `Some(reason)` for a dead letter.
    pub dead_letter: Option<&'static str>,
    /// The call event to announce once the message is stored.
    pub event: Option<(String, CallEvent)>,
}

impl Outbound {
    /// Bytes the server counts against `max_payload`: header block plus payload.
    pub fn wire_size(&self) -> usize {
        headers_size(&self.headers) + self.payload.len()
    }

    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Size of the NATS header block holding `headers`.
pub fn headers_size(headers: &Headers) -> usize {
    "NATS/1.0\r\n".len()
        + headers
            .iter()
            .map(|(key, value)| key.len() + 2 + value.len() + 2)
            .sum::<usize>()
        + 2
}

/// The message for `line` read on `node`.
pub fn classify(node: &str, line: &Line) -> Outbound {
    let id = msg_id(node, &line.bytes);
    if let Some(original_len) = line.original_len {
        return dead_letter::oversized(node, id, line.bytes.clone(), original_len, None);
    }
    match parse_line(&line.bytes) {
        Ok(record) => {
            let mut headers: Headers = vec![
                (NATS_MSG_ID, id),
                (CDR_SOURCE, node.to_owned()),
                (CORRELATION_ID, detail_value(&record.call_id)),
            ];
            if let Some(traceparent) = record.extra_str(TRACEPARENT) {
                headers.push((TRACEPARENT, detail_value(traceparent)));
            }
            Outbound {
                subject: CDR_RAW.to_owned(),
                headers,
                payload: line.bytes.clone(),
                dead_letter: None,
                event: call_event(&record, node),
            }
        }
        Err(error) => dead_letter::malformed(node, id, line.bytes.clone(), &error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bridge::checkpoint::FileId;
    use crate::bridge::tail::FileMark;
    use crate::contract::headers::DLQ_REASON;
    use std::sync::Arc;

    fn line(bytes: &[u8]) -> Line {
        Line {
            bytes: Bytes::copy_from_slice(bytes),
            file: Arc::new(FileMark {
                id: FileId { dev: 1, ino: 1 },
                fingerprint_len: 0,
                fingerprint: String::new(),
            }),
            end_offset: 1,
            original_len: None,
        }
    }

    #[test]
    fn valid_line_goes_to_cdr_raw_with_headers() {
        let bytes = br#"Nov 22 10:00:00 sip-01 json_acc[812]: {"method":"INVITE","callid":"c1","sip_code":"200","time":1700000000,"traceparent":"00-abc-def-01"}"#;
        let out = classify("sip-01", &line(bytes));
        assert_eq!(out.subject, "cdr.raw");
        assert_eq!(
            out.header(NATS_MSG_ID),
            Some(msg_id("sip-01", bytes).as_str())
        );
        assert_eq!(out.header(CDR_SOURCE), Some("sip-01"));
        assert_eq!(out.header(CORRELATION_ID), Some("c1"));
        assert_eq!(out.header(TRACEPARENT), Some("00-abc-def-01"));
        assert_eq!(&out.payload[..], bytes);
        assert_eq!(out.event.unwrap().0, "call.events.start");
    }

    #[test]
    fn malformed_line_is_a_dead_letter() {
        let out = classify("sip-01", &line(b"garbage"));
        assert_eq!(out.subject, "cdr.dlq.not_json");
        assert_eq!(out.header(DLQ_REASON), Some("not_json"));
        assert_eq!(&out.payload[..], b"garbage");
        let out = classify("sip-01", &line(br#"{"time":1}"#));
        assert_eq!(out.subject, "cdr.dlq.missing_callid");
    }
}
