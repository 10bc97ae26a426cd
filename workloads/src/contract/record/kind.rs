//! What a record says about its call: answered, failed, hung up, or nothing.

use super::AccRecord;
use crate::contract::subjects::CallPhase;

/// The role of one record in its call, from its method and response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// An INVITE with a 2xx final response: the call (or a re-INVITE) was answered.
    AnsweredInvite,
    /// An INVITE with a final response >= 300: the call failed.
    FailedInvite {
        /// The response was 487 Request Terminated: the caller cancelled.
        cancelled: bool,
    },
    /// A BYE: the call was hung up.
    Bye,
    /// Anything else: ACK, a provisional or missing code, another method.
    Other,
}

impl RecordKind {
    /// Stable snake_case name, usable as a database column value or a metric label:
    /// `answered_invite`, `cancelled_invite`, `failed_invite`, `bye` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AnsweredInvite => "answered_invite",
            Self::FailedInvite { cancelled: true } => "cancelled_invite",
            Self::FailedInvite { cancelled: false } => "failed_invite",
            Self::Bye => "bye",
            Self::Other => "other",
        }
    }
}

/// SIP 487 Request Terminated, the final response to a cancelled INVITE.
const REQUEST_TERMINATED: u16 = 487;

impl AccRecord {
    /// Classifies the record; the method is compared ignoring ASCII case.
    pub fn kind(&self) -> RecordKind {
        if self.is_method("BYE") {
            return RecordKind::Bye;
        }
        if !self.is_method("INVITE") {
            return RecordKind::Other;
        }
        match self.sip_code_number() {
            Some(200..=299) => RecordKind::AnsweredInvite,
            Some(code @ 300..) => RecordKind::FailedInvite {
                cancelled: code == REQUEST_TERMINATED,
            },
            _ => RecordKind::Other,
        }
    }

    /// The call phase this record announces on `call.events.<phase>`, if any.
    pub fn call_phase(&self) -> Option<CallPhase> {
        match self.kind() {
            RecordKind::AnsweredInvite => Some(CallPhase::Start),
            RecordKind::Bye => Some(CallPhase::End),
            RecordKind::FailedInvite { .. } => Some(CallPhase::Failed),
            RecordKind::Other => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::DateTime;

    use super::*;

    fn record(method: Option<&str>, sip_code: Option<&str>) -> AccRecord {
        AccRecord {
            call_id: "c1".to_owned(),
            method: method.map(str::to_owned),
            from_tag: None,
            to_tag: None,
            sip_code: sip_code.map(str::to_owned),
            sip_reason: None,
            time: DateTime::UNIX_EPOCH,
            extras: serde_json::Map::new(),
        }
    }

    #[test]
    fn classifies_by_method_and_code() {
        use RecordKind::*;
        let cases = [
            (Some("INVITE"), Some("200"), AnsweredInvite),
            (Some("INVITE"), Some("202"), AnsweredInvite),
            (Some("INVITE"), Some("299"), AnsweredInvite),
            (Some("invite"), Some("200"), AnsweredInvite),
            (Some(" Invite "), Some(" 200 "), AnsweredInvite),
            (
                Some("INVITE"),
                Some("302"),
                FailedInvite { cancelled: false },
            ),
            (
                Some("INVITE"),
                Some("486"),
                FailedInvite { cancelled: false },
            ),
            (
                Some("INVITE"),
                Some("487"),
                FailedInvite { cancelled: true },
            ),
            (
                Some("INVITE"),
                Some("603"),
                FailedInvite { cancelled: false },
            ),
            (Some("BYE"), Some("200"), Bye),
            (Some("bye"), Some("481"), Bye),
            (Some("BYE"), None, Bye),
            (Some("INVITE"), Some("180"), Other),
            (Some("INVITE"), Some("100"), Other),
            (Some("INVITE"), None, Other),
            (Some("INVITE"), Some("OK"), Other),
            (Some("ACK"), Some("200"), Other),
            (Some("CANCEL"), Some("200"), Other),
            (Some("INVITEX"), Some("200"), Other),
            (None, Some("200"), Other),
        ];
        for (method, code, expected) in cases {
            assert_eq!(record(method, code).kind(), expected, "{method:?} {code:?}");
        }
    }

    #[test]
    fn call_phases() {
        assert_eq!(
            record(Some("INVITE"), Some("200")).call_phase(),
            Some(CallPhase::Start)
        );
        assert_eq!(
            record(Some("BYE"), Some("200")).call_phase(),
            Some(CallPhase::End)
        );
        assert_eq!(
            record(Some("INVITE"), Some("486")).call_phase(),
            Some(CallPhase::Failed)
        );
        assert_eq!(
            record(Some("INVITE"), Some("487")).call_phase(),
            Some(CallPhase::Failed)
        );
        assert_eq!(record(Some("ACK"), Some("200")).call_phase(), None);
    }

    #[test]
    fn kind_names_are_stable() {
        assert_eq!(RecordKind::AnsweredInvite.as_str(), "answered_invite");
        assert_eq!(
            RecordKind::FailedInvite { cancelled: true }.as_str(),
            "cancelled_invite"
        );
        assert_eq!(
            RecordKind::FailedInvite { cancelled: false }.as_str(),
            "failed_invite"
        );
        assert_eq!(RecordKind::Bye.as_str(), "bye");
        assert_eq!(RecordKind::Other.as_str(), "other");
    }
}
