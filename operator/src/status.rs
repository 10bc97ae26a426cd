//! Conditions, status writes (server-side apply on the status subresource with one field
//! manager), Events on transitions, and the ownership rule for two objects naming one NATS object.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The one field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "nats-cdr-operator";

/// Annotation that pauses reconciliation of an object: `nats-cdr.dev/reconcile: paused`.
pub const PAUSE_ANNOTATION: &str = "nats-cdr.dev/reconcile";
/// Annotation that lets a person remove an object whose NATS cleanup cannot run.
pub const FORCE_DELETE_ANNOTATION: &str = "nats-cdr.dev/force-delete";
/// Finalizer on objects whose NATS counterpart must be cleaned up.
pub const FINALIZER: &str = "nats-cdr.dev/cleanup";
/// Metadata key on a stream or consumer naming the object that owns it: `<ns>/<name>/<uid>`.
pub const OWNER_KEY: &str = "nats-cdr.dev/owner";

/// Reasons that mean success.
pub const SUCCESS_REASONS: &[&str] = &["Created", "InSync", "Updated", "Adopted", "DriftRepaired"];

/// Whether `obj` carries the pause annotation.
pub fn is_paused<K: Resource>(obj: &K) -> bool {
    obj.annotations()
        .get(PAUSE_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("paused"))
}

/// Whether `obj` carries `nats-cdr.dev/force-delete: "true"`.
pub fn is_force_delete<K: Resource>(obj: &K) -> bool {
    obj.annotations()
        .get(FORCE_DELETE_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// `<namespace>/<name>/<uid>`: the owner mark written into NATS metadata.
pub fn owner_mark<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
        obj.meta().uid.as_deref().unwrap_or_default()
    )
}

/// A condition to set: type, status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: &'static str,
    pub reason: String,
    pub message: String,
}

impl Cond {
    pub fn new(type_: &'static str, ok: Option<bool>, reason: &str, message: String) -> Self {
        let status = match ok {
            Some(true) => "True",
            Some(false) => "False",
            None => "Unknown",
        };
        Self {
            type_,
            status,
            reason: reason.to_owned(),
            message,
        }
    }
}

/// The conditions after setting `new` on `old`: `lastTransitionTime` kept when the status of a
/// condition did not change; conditions of other types kept as they are.
pub fn merge_conditions(
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
            reason: n.reason.clone(),
            message: n.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Whether two condition lists say the same (ignoring transition times).
pub fn same_conditions(a: &[Condition], b: &[Condition]) -> bool {
    let key = |c: &Condition| {
        (
            c.type_.clone(),
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    };
    let mut a: Vec<_> = a.iter().map(key).collect();
    let mut b: Vec<_> = b.iter().map(key).collect();
    a.sort();
    b.sort();
    a == b
}

/// Whether an error of this reason can clear without a change of the object (retry with
/// backoff), as opposed to an invalid or refused spec (wait for an edit).
pub fn is_transient_reason(reason: &str) -> bool {
    matches!(
        reason,
        "NatsUnavailable"
            | "KubeError"
            | "FinalizerError"
            | "NatsError"
            | "ClusterNotReady"
            | "ClusterNotFound"
    )
}

/// The reason of the condition `type_`, if set.
pub fn reason_of<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

/// Writes `status` by server-side apply on the status subresource.
pub async fn apply_status<K>(
    api: &Api<K>,
    name: &str,
    status: &impl Serialize,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Publishes an Event about `obj` (failures to publish are logged, never fatal).
pub async fn publish<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    obj: &K,
    warning: bool,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_: if warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: reason.to_owned(),
        note: Some(truncate(note, 1000)),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &obj.object_ref(&())).await {
        tracing::warn!(%error, reason, "cannot publish Event");
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

/// The owner among objects that name the same NATS object: the oldest by creationTimestamp,
/// then by uid (a total order, so the answer never flips). Objects being deleted do not compete.
pub fn oldest<K: Resource>(candidates: impl IntoIterator<Item = Arc<K>>) -> Option<Arc<K>> {
    candidates
        .into_iter()
        .filter(|k| k.meta().deletion_timestamp.is_none())
        .min_by(|a, b| {
            let key = |k: &K| {
                (
                    k.meta().creation_timestamp.as_ref().map(|t| t.0),
                    k.meta().uid.clone().unwrap_or_default(),
                )
            };
            key(a).cmp(&key(b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_kept_while_status_unchanged() {
        let first = merge_conditions(
            &[],
            &[Cond::new("Ready", Some(true), "Created", "ok".into())],
            Some(1),
        );
        let second = merge_conditions(
            &first,
            &[Cond::new("Ready", Some(true), "InSync", "ok".into())],
            Some(2),
        );
        assert_eq!(
            first[0].last_transition_time,
            second[0].last_transition_time
        );
        assert_eq!(second[0].reason, "InSync");
        assert!(!same_conditions(&first, &second));
        assert!(same_conditions(&second, &second.clone()));
    }
}
