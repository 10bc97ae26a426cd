//! The `Nats-Msg-Id` of a raw line: content-addressed.
//!
//! `msg_id = "cdr1-" + hex(SHA-256(source_node || 0x00 || line))[..32]`, where `line` is the line
//! without its trailing `"\n"` or `"\r\n"`.
//!
//! Why the content and not the position in the file:
//! - The same line read again (after a bridge restart, or after a copytruncate rotation made the
//!   bridge re-read a file) gets the same id, so JetStream drops the re-publish inside its
//!   duplicate window and the worker's store drops it after that.
//! - Different lines get different ids even when copytruncate makes the file reuse offsets: a
//!   file identity plus an offset names a position, not a line, and two different lines can sit
//!   at the same position one after the other.
//! - Two byte-identical lines from one node are the same accounting record written twice (acc_json
//!   lines carry the call id, the method, the response and the time), so treating them as one is
//!   correct and is exactly what the merge wants.
//!
//! The source node is hashed in so that two nodes logging the same bytes stay two records. The
//! `0x00` separator keeps `("ab", "c")` and `("a", "bc")` apart. The `cdr1-` prefix versions the
//! scheme; 128 bits of the digest keep accidental collisions out of reach.

use sha2::{Digest, Sha256};

/// Prefix of every id of this scheme; a new scheme gets a new prefix.
pub const MSG_ID_PREFIX: &str = "cdr1-";

/// Number of hex characters of the digest kept in the id (128 bits).
pub const MSG_ID_HEX_LEN: usize = 32;

/// The `Nats-Msg-Id` of `line` as read from the log of `source_node`.
///
/// `line` may include its line ending; a trailing `"\n"` or `"\r\n"` does not change the id.
pub fn msg_id(source_node: &str, line: &[u8]) -> String {
    let digest = Sha256::new()
        .chain_update(source_node.as_bytes())
        .chain_update([0u8])
        .chain_update(without_line_ending(line))
        .finalize();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(MSG_ID_PREFIX.len() + MSG_ID_HEX_LEN);
    id.push_str(MSG_ID_PREFIX);
    for byte in digest.iter().take(MSG_ID_HEX_LEN / 2) {
        id.push(char::from(HEX[usize::from(byte >> 4)]));
        id.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    id
}

/// `line` without one trailing `"\r\n"` or `"\n"`.
fn without_line_ending(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r\n")
        .or_else(|| line.strip_suffix(b"\n"))
        .unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &[u8] = br#"{"method":"INVITE","callid":"c1","sip_code":"200","time":1700000000}"#;

    #[test]
    fn has_the_documented_shape() {
        let id = msg_id("sip-01", LINE);
        assert_eq!(id.len(), MSG_ID_PREFIX.len() + MSG_ID_HEX_LEN);
        let hex = id.strip_prefix(MSG_ID_PREFIX).unwrap_or_default();
        assert!(hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }

    #[test]
    fn matches_a_known_vector() {
        // printf 'sip-01\0abc' | sha256sum
        assert_eq!(
            msg_id("sip-01", b"abc"),
            "cdr1-ef06a25a8072e19064ad9a41445c5036"
        );
    }

    #[test]
    fn same_line_read_again_gets_the_same_id() {
        assert_eq!(msg_id("sip-01", LINE), msg_id("sip-01", LINE));
    }

    #[test]
    fn line_ending_does_not_change_the_id() {
        let id = msg_id("sip-01", LINE);
        assert_eq!(msg_id("sip-01", &[LINE, b"\n"].concat()), id);
        assert_eq!(msg_id("sip-01", &[LINE, b"\r\n"].concat()), id);
    }

    #[test]
    fn only_one_line_ending_is_removed() {
        assert_ne!(msg_id("sip-01", b"a\n\n"), msg_id("sip-01", b"a"));
        assert_ne!(msg_id("sip-01", b"a\r"), msg_id("sip-01", b"a"));
    }

    #[test]
    fn different_lines_get_different_ids() {
        // After a copytruncate the new file reuses offsets; the lines differ, so must the ids.
        let before = br#"{"callid":"c1","method":"INVITE","time":1700000000}"#;
        let after = br#"{"callid":"c2","method":"INVITE","time":1700000000}"#;
        assert_ne!(msg_id("sip-01", before), msg_id("sip-01", after));
    }

    #[test]
    fn same_line_from_different_nodes_gets_different_ids() {
        assert_ne!(msg_id("sip-01", LINE), msg_id("sip-02", LINE));
    }

    #[test]
    fn node_and_line_are_separated() {
        assert_ne!(msg_id("ab", b"c"), msg_id("a", b"bc"));
        assert_ne!(msg_id("", b"a"), msg_id("a", b""));
    }
}
