//! Condition reasons: a closed set, each with what it means for retries. Reasons feed the
//! conditions, the Events and the `reason` label of the error metric.

use crate::nats;

/// Why an object is in the state its conditions say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    // Success.
    Created,
    Updated,
    Adopted,
    InSync,
    DriftRepaired,
    Connected,
    // Progress.
    ReplicasPending,
    Paused,
    // A spec the server or the operator refuses: waits for an edit.
    InvalidSpec,
    ImmutableField,
    NotImplemented,
    // Waiting for something outside this object.
    AlreadyExists,
    Conflict,
    StreamNotFound,
    JetStreamDisabled,
    // Transient: retried with backoff.
    ClusterNotFound,
    ClusterNotReady,
    NatsUnavailable,
    NatsError,
    KubeError,
    FinalizerError,
    /// The reconcile did not finish within `--reconcile-timeout` (log and metric label only).
    ReconcileTimeout,
    // Events only.
    Deleted,
    ForceDeleted,
}

/// When to look at an object again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Requeue {
    /// After the per-object backoff (1 s, 2 s, 4 s, ... capped): the reconcile failed.
    Backoff,
    /// At the periodic resync (jittered).
    Resync,
    /// Soon: waiting for another object (`dependency_poll`).
    Poll,
    /// At the resync, but at least every 30 s: looking costs nothing.
    Watch,
    /// After this long.
    After(std::time::Duration),
    /// Only when the object changes.
    AwaitChange,
}

impl Reason {
    pub(crate) const ALL: [Reason; 24] = [
        Self::Created,
        Self::Updated,
        Self::Adopted,
        Self::InSync,
        Self::DriftRepaired,
        Self::Connected,
        Self::ReplicasPending,
        Self::Paused,
        Self::InvalidSpec,
        Self::ImmutableField,
        Self::NotImplemented,
        Self::AlreadyExists,
        Self::Conflict,
        Self::StreamNotFound,
        Self::JetStreamDisabled,
        Self::ClusterNotFound,
        Self::ClusterNotReady,
        Self::NatsUnavailable,
        Self::NatsError,
        Self::KubeError,
        Self::FinalizerError,
        Self::ReconcileTimeout,
        Self::Deleted,
        Self::ForceDeleted,
    ];

    /// The reason as it appears in conditions, Events and metric labels.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Created => "Created",
            Self::Updated => "Updated",
            Self::Adopted => "Adopted",
            Self::InSync => "InSync",
            Self::DriftRepaired => "DriftRepaired",
            Self::Connected => "Connected",
            Self::ReplicasPending => "ReplicasPending",
            Self::Paused => "Paused",
            Self::InvalidSpec => "InvalidSpec",
            Self::ImmutableField => "ImmutableField",
            Self::NotImplemented => "NotImplemented",
            Self::AlreadyExists => "AlreadyExists",
            Self::Conflict => "Conflict",
            Self::StreamNotFound => "StreamNotFound",
            Self::JetStreamDisabled => "JetStreamDisabled",
            Self::ClusterNotFound => "ClusterNotFound",
            Self::ClusterNotReady => "ClusterNotReady",
            Self::NatsUnavailable => "NatsUnavailable",
            Self::NatsError => "NatsError",
            Self::KubeError => "KubeError",
            Self::FinalizerError => "FinalizerError",
            Self::ReconcileTimeout => "ReconcileTimeout",
            Self::Deleted => "Deleted",
            Self::ForceDeleted => "ForceDeleted",
        }
    }

    /// The reason a condition shows, when it is one of ours.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether retrying without a change of the object can help (backoff), as opposed to a
    /// refused spec (wait for an edit) or a wait for another object.
    pub(crate) fn is_transient(self) -> bool {
        matches!(
            self,
            Self::ClusterNotFound
                | Self::ClusterNotReady
                | Self::NatsUnavailable
                | Self::NatsError
                | Self::KubeError
                | Self::FinalizerError
                | Self::ReconcileTimeout
        )
    }

    /// Whether the object is where its spec wants it.
    pub(crate) fn is_success(self) -> bool {
        matches!(
            self,
            Self::Created
                | Self::Updated
                | Self::Adopted
                | Self::InSync
                | Self::DriftRepaired
                | Self::Connected
        )
    }

    /// When an object failing for this reason is looked at again.
    pub(crate) fn requeue(self) -> Requeue {
        match self {
            r if r.is_transient() => Requeue::Backoff,
            Self::AlreadyExists | Self::Conflict | Self::StreamNotFound => Requeue::Poll,
            Self::JetStreamDisabled => Requeue::Watch,
            Self::NotImplemented | Self::Paused => Requeue::AwaitChange,
            _ => Requeue::Resync,
        }
    }
}

impl From<&nats::Error> for Reason {
    fn from(error: &nats::Error) -> Self {
        use nats::Error as E;
        match error {
            E::ClusterNotFound(_) => Self::ClusterNotFound,
            E::Kube { .. } => Self::KubeError,
            E::ClusterNotReady { .. }
            | E::SecretRead { .. }
            | E::Credentials { .. }
            | E::CaFile { .. } => Self::ClusterNotReady,
            E::Connect { .. }
            | E::ConnectTimeout { .. }
            | E::Disconnected { .. }
            | E::TimedOut { .. }
            | E::Request { .. } => Self::NatsUnavailable,
            E::Api { .. } => Self::NatsError,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_parses_back_and_has_one_retry_policy() {
        for reason in Reason::ALL {
            assert_eq!(Reason::parse(reason.as_str()), Some(reason));
            assert!(
                !(reason.is_success() && reason.is_transient()),
                "{reason:?}"
            );
            assert_eq!(
                reason.requeue() == Requeue::Backoff,
                reason.is_transient(),
                "{reason:?}"
            );
        }
        assert_eq!(Reason::parse("Whatever"), None);
    }

    #[test]
    fn refusals_wait_for_an_edit_and_dependencies_are_polled() {
        assert_eq!(Reason::InvalidSpec.requeue(), Requeue::Resync);
        assert_eq!(Reason::ImmutableField.requeue(), Requeue::Resync);
        assert_eq!(Reason::Conflict.requeue(), Requeue::Poll);
        assert_eq!(Reason::StreamNotFound.requeue(), Requeue::Poll);
        assert_eq!(Reason::NotImplemented.requeue(), Requeue::AwaitChange);
        assert_eq!(Reason::NatsUnavailable.requeue(), Requeue::Backoff);
    }
}
