//! Streams and consumers: objects with state on the NATS server. Each reconcile runs five steps:
//! **build** the desired configuration from the spec (pure) -> **observe** the server (one typed
//! read) -> **plan** (pure: in sync, create, recreate, update, repair drift, adopt, refuse as
//! immutable, already exists, conflict) -> **execute** the plan (at most one write) ->
//! **report** (conditions, Event, requeue; the frame writes them).
//!
//! Ownership: created or adopted streams and consumers carry the metadata key
//! `nats-cdr.dev/owner: <namespace>/<name>/<uid>`; deletion only ever removes what carries it.

mod consumer;
mod diff;
mod plan;
mod stream;

use kube::{Resource, ResourceExt};

use self::diff::{FieldDiff, describe};
use self::plan::History;
use crate::nats;
use crate::reconcile::{Failure, Reason, Reconciler, Report, Requeue};
use crate::status::{self, Cond, ObjectStatus};
use crate::telemetry::{Kind, Metrics};

/// Metadata key on a stream or consumer naming the object that owns it: `<ns>/<name>/<uid>`.
const OWNER_KEY: &str = "nats-cdr.dev/owner";

/// Failure of a stream or consumer reconcile.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error(transparent)]
    Nats(#[from] nats::Error),
    #[error("{field}: {message}")]
    InvalidSpec { field: String, message: String },
    #[error("{0}")]
    ImmutableField(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    StreamNotFound(String),
}

impl Error {
    fn reason(&self) -> Reason {
        match self {
            Self::Nats(e) => Reason::from(e),
            Self::InvalidSpec { .. } => Reason::InvalidSpec,
            Self::ImmutableField(_) => Reason::ImmutableField,
            Self::AlreadyExists(_) => Reason::AlreadyExists,
            Self::Conflict(_) => Reason::Conflict,
            Self::StreamNotFound(_) => Reason::StreamNotFound,
        }
    }
}

impl<K: Reconciler<Error = Error>> From<Error> for Failure<K> {
    fn from(error: Error) -> Self {
        Self {
            error,
            observed: None,
        }
    }
}

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::InvalidSpec {
        field: format!("spec.{field}"),
        message: message.into(),
    }
}

/// How a kind's messages name things.
struct Words {
    /// `stream`, `consumer`.
    noun: &'static str,
    /// What a recreation loses.
    lost: &'static str,
    /// The field that names it on the server (`spec.name`).
    name_field: &'static str,
    /// Why it is never recreated, beyond losing data (` (its ack state would be lost)`).
    never_recreated: &'static str,
    /// What else to do after creating a new one (` and move consumers to it`).
    then: &'static str,
}

/// `<namespace>/<name>/<uid>`: the owner mark written into NATS metadata.
fn owner_mark<K: Resource>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
        obj.meta().uid.as_deref().unwrap_or_default()
    )
}

/// What the object's status says about earlier reconciles.
fn history<K: ObjectStatus>(obj: &K) -> History {
    let Some(s) = obj.status() else {
        return History::default();
    };
    let common = K::common(s);
    let synced = status::reason_of(&common.conditions, "Synced").and_then(Reason::parse);
    History {
        was_synced: synced.is_some_and(Reason::is_success),
        observed_current: common.observed_generation == obj.meta().generation,
        refused: matches!(synced, Some(Reason::InvalidSpec | Reason::ImmutableField)),
    }
}

/// `AlreadyExists` for `what` (`stream S`), naming the owner mark it carries.
fn already_exists(what: &str, owner: Option<String>) -> Error {
    Error::AlreadyExists(match owner {
        Some(m) => format!(
            "{what} already exists on the server, owned by {m}; set spec.adoptExisting: true to take it over"
        ),
        None => format!(
            "{what} already exists on the server and was not created by this object; set spec.adoptExisting: true to take it over (its configuration will be changed to match the spec)"
        ),
    })
}

/// `Conflict`: `owner`, an older object of the same kind, manages `what` on `cluster`.
fn conflict<K: Resource<DynamicType = ()>>(
    what: &str,
    cluster: &str,
    owner: &K,
    rename: &str,
) -> Error {
    Error::Conflict(format!(
        "{what} on NatsCluster {cluster} is already managed by {} {}/{} (the older object); delete one of the two or rename {rename}",
        K::kind(&()),
        owner.namespace().unwrap_or_default(),
        owner.name_any(),
    ))
}

/// `ImmutableField` before anything was tried: the plan refused `blocked`.
fn immutable(words: &Words, blocked: &[FieldDiff]) -> Error {
    let noun = words.noun;
    Error::ImmutableField(format!(
        "NATS cannot change {} of an existing {noun} in place, and the operator never deletes a {noun} to recreate it{}; revert the field, or create a new {noun} (new object, new {}){}",
        describe(blocked),
        words.never_recreated,
        words.name_field,
        words.then,
    ))
}

/// `ImmutableField` after the server refused an update of `diffs` in place.
fn refused_in_place(words: &Words, diffs: &[FieldDiff], description: &str) -> Error {
    let noun = words.noun;
    Error::ImmutableField(format!(
        "NATS refused to change {} in place: \"{description}\"; the operator never deletes a {noun} to recreate it: revert the change, or create a new {noun}",
        describe(diffs)
    ))
}

/// What the execute step did.
#[derive(Debug, Clone, PartialEq)]
enum Done {
    InSync,
    Created,
    Recreated,
    Updated(Vec<FieldDiff>),
    DriftRepaired(Vec<FieldDiff>),
    Adopted,
}

impl Done {
    fn reason(&self) -> Reason {
        match self {
            Self::InSync => Reason::InSync,
            Self::Created => Reason::Created,
            Self::Recreated | Self::DriftRepaired(_) => Reason::DriftRepaired,
            Self::Updated(_) => Reason::Updated,
            Self::Adopted => Reason::Adopted,
        }
    }

    fn message(&self, words: &Words) -> String {
        let noun = words.noun;
        match self {
            Self::InSync => format!("the {noun} on the server matches the spec"),
            Self::Created => format!("{noun} created on the server"),
            Self::Recreated => format!(
                "the {noun} had been deleted on the server behind the operator's back; recreated ({})",
                words.lost
            ),
            Self::DriftRepaired(diffs) => {
                format!("reverted changes made on the server: {}", describe(diffs))
            }
            Self::Updated(diffs) => format!("updated on the server: {}", describe(diffs)),
            Self::Adopted => format!(
                "existing {noun} adopted (spec.adoptExisting) and brought in line with the spec"
            ),
        }
    }
}

/// The report of a successful apply: `Ready` and `Synced` with the reason of what was done (a
/// steady state keeps the reason of the last change, so it writes nothing), an Event for every
/// change, drift repairs counted.
fn report<O>(
    done: &Done,
    words: &Words,
    history: History,
    observed: O,
    metrics: &Metrics,
    kind: Kind,
) -> Report<O> {
    let (reason, message) = (done.reason(), done.message(words));
    if reason == Reason::DriftRepaired {
        metrics.drift_repaired(kind);
    }
    let report = Report::new(Requeue::Resync).observed(observed);
    if *done == Done::InSync && history.was_synced && history.observed_current {
        return report;
    }
    let report = report.conditions(vec![
        Cond::new("Ready", Some(true), reason.as_str(), message.clone()),
        Cond::new("Synced", Some(true), reason.as_str(), message.clone()),
    ]);
    match done {
        Done::InSync => report,
        _ => report.event(reason, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::stream::WORDS;

    #[test]
    fn a_steady_state_reports_no_conditions_and_no_event() {
        let metrics = Metrics::default();
        let synced = History {
            was_synced: true,
            observed_current: true,
            refused: false,
        };
        let r = report(
            &Done::InSync,
            &WORDS,
            synced,
            (),
            &metrics,
            Kind::JetStreamStream,
        );
        assert!(r.conditions.is_empty() && r.event.is_none());
        let r = report(
            &Done::InSync,
            &WORDS,
            History::default(),
            (),
            &metrics,
            Kind::JetStreamStream,
        );
        assert_eq!(r.conditions.len(), 2);
        assert!(r.event.is_none());
    }

    #[test]
    fn changes_are_announced_and_drift_is_counted() {
        let metrics = Metrics::default();
        let r = report(
            &Done::Recreated,
            &WORDS,
            History::default(),
            (),
            &metrics,
            Kind::JetStreamStream,
        );
        let (reason, note) = r.event.unwrap();
        assert_eq!(reason, Reason::DriftRepaired);
        assert!(note.contains("its messages are gone"), "{note}");
        assert_eq!(r.conditions[1].reason, "DriftRepaired");
        assert_eq!(metrics.drift_repair_count(Kind::JetStreamStream), 1);
        let r = report(
            &Done::Created,
            &WORDS,
            History::default(),
            (),
            &metrics,
            Kind::JetStreamStream,
        );
        assert_eq!(r.event.unwrap().0, Reason::Created);
        assert_eq!(r.requeue, Requeue::Resync);
    }
}
