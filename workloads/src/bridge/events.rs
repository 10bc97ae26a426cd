//! Live call events on `call.events.<phase>`: core NATS, best effort, small JSON.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::contract::subjects::call_event_subject;
use crate::contract::{AccRecord, CallPhase};

/// The body of a call event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallEvent {
    /// The SIP Call-ID.
    pub callid: String,
    /// `start`, `end` or `failed`.
    pub phase: String,
    /// When the record was accounted.
    pub time: DateTime<Utc>,
    /// Calling user, when logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_user: Option<String>,
    /// Called user, when logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_user: Option<String>,
    /// The SIP response code, when logged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sip_code: Option<String>,
    /// The SIP node that logged it.
    pub node: String,
}

/// The subject and event announcing `record`, when its kind is a call phase.
pub fn call_event(record: &AccRecord, node: &str) -> Option<(String, CallEvent)> {
    let phase: CallPhase = record.call_phase()?;
    let event = CallEvent {
        callid: record.call_id.clone(),
        phase: phase.as_str().to_owned(),
        time: record.time,
        from_user: record.src_user().map(str::to_owned),
        to_user: record.dst_user().map(str::to_owned),
        sip_code: record.sip_code.clone(),
        node: node.to_owned(),
    };
    Some((call_event_subject(phase), event))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::parse_line;

    #[test]
    fn answered_invite_is_a_start() {
        let record = parse_line(br#"{"method":"INVITE","callid":"c1","sip_code":"200","time":1700000000,"src_user":"alice","dst_user":"bob"}"#).unwrap();
        let (subject, event) = call_event(&record, "sip-01").unwrap();
        assert_eq!(subject, "call.events.start");
        assert_eq!(event.from_user.as_deref(), Some("alice"));
        assert_eq!(event.to_user.as_deref(), Some("bob"));
        assert_eq!(event.node, "sip-01");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["callid"], "c1");
    }

    #[test]
    fn bye_ends_and_failure_fails() {
        let bye =
            parse_line(br#"{"method":"BYE","callid":"c1","sip_code":"200","time":1700000000}"#)
                .unwrap();
        assert_eq!(call_event(&bye, "n").unwrap().0, "call.events.end");
        let busy =
            parse_line(br#"{"method":"INVITE","callid":"c1","sip_code":"486","time":1700000000}"#)
                .unwrap();
        assert_eq!(call_event(&busy, "n").unwrap().0, "call.events.failed");
    }
}
