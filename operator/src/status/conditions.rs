//! Typed conditions: what to set, how it merges into what is there, and what counts as a
//! transition (the moment an Event is due).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition to set: type, status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cond {
    pub(crate) type_: &'static str,
    pub(crate) status: &'static str,
    pub(crate) reason: &'static str,
    pub(crate) message: String,
}

impl Cond {
    /// `ok`: `Some(true)` True, `Some(false)` False, `None` Unknown.
    pub(crate) fn new(
        type_: &'static str,
        ok: Option<bool>,
        reason: &'static str,
        message: String,
    ) -> Self {
        let status = match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        };
        Self {
            type_,
            status,
            reason,
            message,
        }
    }
}

/// The conditions after setting `new` on `old`: `lastTransitionTime` kept when the status of a
/// condition did not change; conditions of other types kept as they are; sorted by type.
pub(crate) fn merge_conditions(
    old: &[Condition],
    new: &[Cond],
    generation: Option<i64>,
) -> Vec<Condition> {
    let now = Time(Timestamp::now());
    let mut out: Vec<Condition> = old
        .iter()
        .filter(|c| !new.iter().any(|n| n.type_ == c.type_))
        .cloned()
        .collect();
    for n in new {
        let previous = old.iter().find(|c| c.type_ == n.type_);
        let last_transition_time = match previous {
            Some(p) if p.status == n.status => p.last_transition_time.clone(),
            _ => now.clone(),
        };
        out.push(Condition {
            type_: n.type_.to_owned(),
            status: n.status.to_owned(),
            reason: n.reason.to_owned(),
            message: n.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Whether some condition changed its status or reason between `old` and `new` (a new message
/// for the same reason is not a transition).
pub(crate) fn transitioned(old: &[Condition], new: &[Condition]) -> bool {
    new.iter().any(|n| {
        !old.iter()
            .any(|o| o.type_ == n.type_ && o.status == n.status && o.reason == n.reason)
    })
}

/// The reason of the condition `type_`, if set.
pub(crate) fn reason_of<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(ok: bool, reason: &'static str, message: &str) -> Cond {
        Cond::new("Ready", Some(ok), reason, message.into())
    }

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let first = merge_conditions(&[], &[ready(true, "Created", "ok")], Some(1));
        let second = merge_conditions(&first, &[ready(true, "InSync", "ok")], Some(2));
        assert_eq!(
            first[0].last_transition_time,
            second[0].last_transition_time
        );
        assert_eq!(second[0].reason, "InSync");
        assert_eq!(second[0].observed_generation, Some(2));
        assert_ne!(first, second);
    }

    #[test]
    fn other_types_are_kept_and_the_list_is_sorted() {
        let synced = Cond::new("Synced", Some(true), "Created", "ok".into());
        let first = merge_conditions(&[], &[synced, ready(true, "Created", "ok")], None);
        let second = merge_conditions(&first, &[ready(false, "NatsUnavailable", "down")], None);
        let types: Vec<_> = second.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "Synced"]);
        assert_eq!(reason_of(&second, "Synced"), Some("Created"));
        assert_eq!(reason_of(&second, "Ready"), Some("NatsUnavailable"));
    }

    #[test]
    fn only_a_new_status_or_reason_is_a_transition() {
        let down = merge_conditions(&[], &[ready(false, "NatsUnavailable", "timed out")], None);
        let still = merge_conditions(
            &down,
            &[ready(false, "NatsUnavailable", "disconnected")],
            None,
        );
        let up = merge_conditions(&still, &[ready(true, "InSync", "ok")], None);
        assert!(transitioned(&[], &down));
        assert!(!transitioned(&down, &still), "same reason, new message");
        assert!(transitioned(&still, &up));
    }
}
