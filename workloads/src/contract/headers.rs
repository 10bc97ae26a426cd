//! NATS header names of the contract, and the one rule for free-text header values.
//!
//! Decoders tolerate headers they do not know.

/// JetStream de-duplication id of a raw line; see [`msg_id`](super::msg_id::msg_id).
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";

/// Name of the SIP node whose log the line was read from.
pub const CDR_SOURCE: &str = "cdr-source";

/// Correlation id carried from the bridge to the worker's logs.
pub const CORRELATION_ID: &str = "x-correlation-id";

/// W3C trace context, forwarded when present.
pub const TRACEPARENT: &str = "traceparent";

/// On a dead letter: the short category of the failure (the `reason()` of the error).
pub const DLQ_REASON: &str = "cdr-dlq-reason";

/// On a dead letter: the human-readable detail of the failure (the error's message).
pub const DLQ_DETAIL: &str = "cdr-dlq-detail";

/// Longest value [`detail_value`] returns, in characters.
pub const MAX_DETAIL_CHARS: usize = 256;

/// Header of a dead letter holding the `Nats-Msg-Id` of the original message. The dead letter's
/// own `Nats-Msg-Id` must differ from it (`dlq-<original>`): it goes to the same stream, whose
/// duplicate window would otherwise drop it as a re-publish of the original.
pub const DLQ_ORIGINAL_MSG_ID: &str = "cdr-dlq-original-msg-id";

/// Header set to `true` on a dead letter whose payload is a truncated copy of the line.
pub const DLQ_TRUNCATED: &str = "cdr-dlq-truncated";

/// Header with the full length of the line, in bytes, on a truncated dead letter.
pub const DLQ_ORIGINAL_SIZE: &str = "cdr-dlq-original-size";

/// Makes free text, such as an error message, safe as a header value such as [`DLQ_DETAIL`].
///
/// A NATS header value cannot hold CR or LF, so every control character becomes a space; the
/// result is cut to [`MAX_DETAIL_CHARS`] characters so a huge input cannot bloat the message.
pub fn detail_value(detail: &str) -> String {
    detail
        .chars()
        .take(MAX_DETAIL_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detail_value_keeps_plain_text() {
        assert_eq!(detail_value("callid is missing"), "callid is missing");
        assert_eq!(detail_value("zeit: äöü"), "zeit: äöü");
    }

    #[test]
    fn detail_value_removes_line_breaks_and_controls() {
        assert_eq!(detail_value("a\r\nb\tc\0d"), "a  b c d");
    }

    #[test]
    fn detail_value_is_bounded_on_a_char_boundary() {
        let value = detail_value(&"é".repeat(1000));
        assert_eq!(value.chars().count(), MAX_DETAIL_CHARS);
    }
}
