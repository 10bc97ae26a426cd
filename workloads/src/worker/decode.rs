//! One fetched message into a record to store, or into the reason it is poison.

use async_nats::HeaderMap;

use super::store::RecordRow;
use crate::contract::headers::{CDR_SOURCE, NATS_MSG_ID};
use crate::contract::msg_id::msg_id;
use crate::contract::record::parse_line;

/// What a message holds.
#[derive(Debug)]
pub enum Decoded {
    /// A record to store.
    Record(Box<RecordRow>),
    /// A payload that can never be stored; dead-letter it.
    Poison {
        /// The dead-letter reason, from [`ParseError::reason`](crate::contract::ParseError::reason).
        reason: &'static str,
        /// The human detail.
        detail: String,
        /// The message's id.
        msg_id: String,
    },
}

/// Header `name` of `headers` as text, when present and non-empty.
pub fn header<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?
        .get(name)
        .map(|value| value.as_str())
        .filter(|value| !value.is_empty())
}

/// The record id of a message: its `Nats-Msg-Id`, or for a message without one (not published
/// by the bridge) the id the bridge would have given it. Never parses the payload.
pub fn record_id(payload: &[u8], headers: Option<&HeaderMap>) -> String {
    header(headers, NATS_MSG_ID)
        .map(str::to_owned)
        .unwrap_or_else(|| msg_id(header(headers, CDR_SOURCE).unwrap_or(""), payload))
}

/// Decodes the payload of a `cdr.raw` message; its id is [`record_id`].
pub fn decode(payload: &[u8], headers: Option<&HeaderMap>, stream_seq: Option<u64>) -> Decoded {
    let source_node = header(headers, CDR_SOURCE).map(str::to_owned);
    let id = record_id(payload, headers);
    match parse_line(payload) {
        Ok(record) => Decoded::Record(Box::new(RecordRow {
            msg_id: id,
            record,
            source_node,
            stream_seq,
        })),
        Err(error) => Decoded::Poison {
            reason: error.reason(),
            detail: error.detail(),
            msg_id: id,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_with_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(NATS_MSG_ID, "cdr1-abc");
        headers.insert(CDR_SOURCE, "sip-01");
        let line = br#"{"method":"INVITE","callid":"c1","sip_code":"200","time":1700000000}"#;
        let Decoded::Record(row) = decode(line, Some(&headers), Some(7)) else {
            panic!("not a record");
        };
        assert_eq!(row.msg_id, "cdr1-abc");
        assert_eq!(row.source_node.as_deref(), Some("sip-01"));
        assert_eq!(row.stream_seq, Some(7));
        assert_eq!(row.record.call_id, "c1");
    }

    #[test]
    fn missing_id_is_derived_like_the_bridge() {
        let line = br#"{"method":"BYE","callid":"c1","time":1700000000}"#;
        let Decoded::Record(row) = decode(line, None, None) else {
            panic!("not a record");
        };
        assert_eq!(row.msg_id, msg_id("", line));
    }

    #[test]
    fn poison_reasons() {
        for (line, reason) in [
            (&b"not json"[..], "not_json"),
            (br#"{"method":"INVITE","time":1}"#, "missing_callid"),
            (br#"{"callid":"x"}"#, "bad_time"),
        ] {
            match decode(line, None, None) {
                Decoded::Poison { reason: got, .. } => assert_eq!(got, reason),
                Decoded::Record(_) => panic!("{line:?} decoded"),
            }
        }
    }
}
