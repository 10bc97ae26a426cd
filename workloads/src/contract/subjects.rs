//! NATS subjects and the JetStream stream that captures them.
//!
//! Producers publish to concrete subjects only; wildcards appear in the stream's subject list and
//! in subscriptions, never in a publish.

use std::fmt;

/// Subject of every raw acc_json line the bridge reads, one message per line.
///
/// The stream also captures dead letters (`cdr.dlq.*`), so the worker's consumer must filter on
/// this subject instead of consuming the whole stream.
pub const CDR_RAW: &str = "cdr.raw";

/// Default name of the JetStream stream holding raw lines and dead letters.
pub const DEFAULT_STREAM_NAME: &str = "AKIRA_CDR";

/// Subjects of the stream: `cdr.>` captures [`CDR_RAW`] and every `cdr.dlq.<reason>`.
///
/// DESIGN.md lists `cdr.raw` and `cdr.>`, but nats-server refuses a stream whose own subjects
/// overlap (`subject "cdr.raw" overlaps with "cdr.>"`, error 10052; checked against
/// nats-server 2.15.2), and `cdr.>` alone already captures `cdr.raw`.
pub const STREAM_SUBJECTS: [&str; 1] = ["cdr.>"];

/// Prefix of the live call-event subjects (core NATS, not stored in the stream).
pub const CALL_EVENTS_PREFIX: &str = "call.events";

/// Prefix of the dead-letter subjects; the full subject is `cdr.dlq.<reason>`.
pub const DEAD_LETTER_PREFIX: &str = "cdr.dlq";

/// Wildcard matching every dead-letter subject, for consumers and alerts.
pub const DEAD_LETTER_WILDCARD: &str = "cdr.dlq.>";

/// Longest reason token [`dead_letter_subject`] keeps.
pub const MAX_REASON_LEN: usize = 64;

/// Reason token used when the given reason sanitises to nothing.
const EMPTY_REASON: &str = "unknown";

/// The phase of a call announced on `call.events.<phase>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallPhase {
    /// The call was answered (a 2xx final response to the INVITE).
    Start,
    /// The call was hung up (a BYE).
    End,
    /// The call was never answered (a final response >= 300 to the INVITE).
    Failed,
}

impl CallPhase {
    /// The subject token of this phase: `start`, `end` or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::End => "end",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for CallPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The subject announcing `phase` of a call: `call.events.start|end|failed`.
pub fn call_event_subject(phase: CallPhase) -> String {
    format!("{CALL_EVENTS_PREFIX}.{}", phase.as_str())
}

/// The dead-letter subject for `reason`: `cdr.dlq.<reason>`.
///
/// The reason is made a single subject token of `[a-z0-9_]`: ASCII letters are lowercased, every
/// other character (including `.`, `*`, `>` and whitespace) becomes `_`, the result is cut to
/// [`MAX_REASON_LEN`] characters, and an empty reason becomes `unknown`. So a caller can pass any
/// error category without producing an invalid or wildcard subject.
pub fn dead_letter_subject(reason: &str) -> String {
    format!("{DEAD_LETTER_PREFIX}.{}", reason_token(reason))
}

/// `reason` as one subject token of `[a-z0-9_]`.
fn reason_token(reason: &str) -> String {
    let token: String = reason
        .chars()
        .take(MAX_REASON_LEN)
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect();
    if token.is_empty() {
        EMPTY_REASON.to_owned()
    } else {
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NATS subject matching: does `pattern` (with `*` and `>`) match the concrete `subject`?
    fn matches(pattern: &str, subject: &str) -> bool {
        let mut subject_tokens = subject.split('.');
        for token in pattern.split('.') {
            match (token, subject_tokens.next()) {
                (">", Some(_)) => return true,
                ("*", Some(_)) => {}
                (literal, Some(actual)) if literal == actual => {}
                _ => return false,
            }
        }
        subject_tokens.next().is_none()
    }

    #[test]
    fn call_event_subjects() {
        assert_eq!(call_event_subject(CallPhase::Start), "call.events.start");
        assert_eq!(call_event_subject(CallPhase::End), "call.events.end");
        assert_eq!(call_event_subject(CallPhase::Failed), "call.events.failed");
        assert_eq!(CallPhase::Failed.to_string(), "failed");
    }

    #[test]
    fn dead_letter_subject_keeps_clean_reasons() {
        assert_eq!(dead_letter_subject("not_json"), "cdr.dlq.not_json");
        assert_eq!(dead_letter_subject("bad_time"), "cdr.dlq.bad_time");
    }

    #[test]
    fn dead_letter_subject_sanitises_to_one_token() {
        assert_eq!(dead_letter_subject("Bad Time"), "cdr.dlq.bad_time");
        assert_eq!(dead_letter_subject("a.b"), "cdr.dlq.a_b");
        assert_eq!(dead_letter_subject("*"), "cdr.dlq._");
        assert_eq!(dead_letter_subject(">"), "cdr.dlq._");
        assert_eq!(dead_letter_subject("zürich-1"), "cdr.dlq.z_rich_1");
        assert_eq!(dead_letter_subject("line\r\nbreak"), "cdr.dlq.line__break");
        assert_eq!(dead_letter_subject(""), "cdr.dlq.unknown");
    }

    #[test]
    fn dead_letter_reason_is_bounded() {
        let subject = dead_letter_subject(&"x".repeat(1000));
        assert_eq!(subject.len(), "cdr.dlq.".len() + MAX_REASON_LEN);
    }

    #[test]
    fn stream_captures_raw_lines_and_dead_letters_but_not_call_events() {
        let captured = |subject: &str| STREAM_SUBJECTS.iter().any(|p| matches(p, subject));
        assert!(captured(CDR_RAW));
        assert!(captured(&dead_letter_subject("not_json")));
        assert!(matches(
            DEAD_LETTER_WILDCARD,
            &dead_letter_subject("bad_time")
        ));
        assert!(!matches(DEAD_LETTER_WILDCARD, CDR_RAW));
        for phase in [CallPhase::Start, CallPhase::End, CallPhase::Failed] {
            assert!(!captured(&call_event_subject(phase)));
        }
    }

    #[test]
    fn stream_subjects_do_not_overlap_each_other() {
        // nats-server rejects a stream whose subjects overlap; with literal subjects and a
        // trailing `>` only, overlap means one matches the other.
        for (i, a) in STREAM_SUBJECTS.iter().enumerate() {
            for b in &STREAM_SUBJECTS[i + 1..] {
                assert!(!matches(a, b) && !matches(b, a), "{a} overlaps {b}");
            }
        }
    }
}
