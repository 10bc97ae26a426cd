//! Finding the JSON object in a log line, with or without a syslog prefix.

/// Marks the end of a syslog prefix: `... json_acc[812]: {...}`.
const PREFIX_MARKER: &[u8] = b": ";

/// The part of `line` that should hold the acc_json object, or `None` when there is none.
///
/// Surrounding whitespace (including the `"\r\n"` line ending) is ignored. A line that starts with
/// `{` is pure JSON (rsyslog template `%msg%`). Any other line is taken to carry a syslog prefix
/// (`Nov 22 10:00:00 sip-01 json_acc[812]: `, or one with an RFC 3339 timestamp): the JSON starts
/// at the first `{` after the first `": "`. Whether that slice really is JSON is for the decoder
/// to say.
pub(super) fn json_object(line: &[u8]) -> Option<&[u8]> {
    let line = line.trim_ascii();
    if line.starts_with(b"{") {
        return Some(line);
    }
    let marker = line
        .windows(PREFIX_MARKER.len())
        .position(|window| window == PREFIX_MARKER)?;
    let after_marker = line.get(marker + PREFIX_MARKER.len()..)?;
    let brace = after_marker.iter().position(|&b| b == b'{')?;
    after_marker.get(brace..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pure_json_is_taken_whole() {
        assert_eq!(json_object(b"{\"a\":1}"), Some(&b"{\"a\":1}"[..]));
    }

    #[test]
    fn line_ending_and_surrounding_whitespace_are_ignored() {
        assert_eq!(json_object(b"  {\"a\":1}\r\n"), Some(&b"{\"a\":1}"[..]));
        assert_eq!(json_object(b"{\"a\":1}\n"), Some(&b"{\"a\":1}"[..]));
    }

    #[test]
    fn bsd_syslog_prefix_is_stripped() {
        let line = b"Nov 22 10:00:00 sip-01 json_acc[812]: {\"a\":1}\n";
        assert_eq!(json_object(line), Some(&b"{\"a\":1}"[..]));
    }

    #[test]
    fn rfc3339_syslog_prefix_is_stripped() {
        let line = b"2024-11-22T10:00:00.123456+00:00 sip-01 json_acc[812]: {\"a\":1}";
        assert_eq!(json_object(line), Some(&b"{\"a\":1}"[..]));
    }

    #[test]
    fn text_between_marker_and_brace_is_skipped() {
        let line = b"Nov 22 10:00:00 sip-01 kamailio[812]: ACC: {\"a\":1}";
        assert_eq!(json_object(line), Some(&b"{\"a\":1}"[..]));
    }

    #[test]
    fn a_brace_before_the_marker_does_not_count() {
        assert_eq!(json_object(b"x{ y: {\"a\":1}"), Some(&b"{\"a\":1}"[..]));
    }

    #[test]
    fn lines_without_an_object_have_none() {
        assert_eq!(json_object(b""), None);
        assert_eq!(json_object(b"\r\n"), None);
        assert_eq!(json_object(b"hello world"), None);
        assert_eq!(
            json_object(b"Nov 22 10:00:00 sip-01 json_acc[812]: no json"),
            None
        );
        assert_eq!(json_object(b"prefix without marker {\"a\":1}"), None);
        assert_eq!(json_object(b"ends with marker: "), None);
    }
}
