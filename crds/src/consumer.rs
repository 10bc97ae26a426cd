//! `JetStreamConsumer`: a durable JetStream consumer, kept in sync with the server.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    ClusterRef, CommonStatus, DURATION_PATTERN, DeletionPolicy, NATS_NAME_PATTERN, SUBJECT_PATTERN,
    string_map_schema,
};

/// A durable JetStream consumer on a stream of a `NatsCluster`. Every NATS consumer setting;
/// defaults are the safe ones: explicit ack, deliver all.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "nats-cdr.dev",
    version = "v1alpha1",
    kind = "JetStreamConsumer",
    namespaced,
    status = "JetStreamConsumerStatus",
    shortname = "jsc",
    shortname = "consumer",
    category = "nats-cdr",
    doc = "A durable JetStream consumer, kept in sync with the NATS server by the nats-cdr operator.",
    printcolumn(name = "Stream", type_ = "string", json_path = ".spec.streamName"),
    printcolumn(name = "Durable", type_ = "string", json_path = ".spec.durableName"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Pending", type_ = "integer", json_path = ".status.pending"),
    printcolumn(
        name = "AckPending",
        type_ = "integer",
        json_path = ".status.ackPending"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("self.deliverPolicy != 'ByStartSequence' || has(self.optStartSeq)")
        .message("spec.deliverPolicy ByStartSequence needs spec.optStartSeq")
        .field_path(".optStartSeq"),
    validation = Rule::new("self.deliverPolicy != 'ByStartTime' || has(self.optStartTime)")
        .message("spec.deliverPolicy ByStartTime needs spec.optStartTime")
        .field_path(".optStartTime"),
    validation = Rule::new("!has(self.optStartSeq) || self.deliverPolicy == 'ByStartSequence'")
        .message("spec.optStartSeq is only used with spec.deliverPolicy ByStartSequence")
        .field_path(".optStartSeq"),
    validation = Rule::new("!has(self.filterSubject) || !has(self.filterSubjects)")
        .message("set spec.filterSubject or spec.filterSubjects, not both")
        .field_path(".filterSubjects"),
    validation = Rule::new("!has(self.backoff) || self.maxDeliver == -1 || size(self.backoff) <= self.maxDeliver")
        .message("spec.backoff has more steps than spec.maxDeliver allows deliveries")
        .field_path(".backoff"),
)]
#[serde(rename_all = "camelCase")]
pub struct JetStreamConsumerSpec {
    /// The `NatsCluster` that holds the stream.
    pub cluster_ref: ClusterRef,
    /// Name of the stream on the server (`spec.name` of its `JetStreamStream`). Immutable.
    #[schemars(length(min = 1, max = 255), regex(pattern = NATS_NAME_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.streamName is immutable"))]
    pub stream_name: String,
    /// Durable name of the consumer on the server. Immutable.
    #[schemars(length(min = 1, max = 255), regex(pattern = NATS_NAME_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.durableName is immutable: create a new object for a new consumer"))]
    pub durable_name: String,
    /// Human description, stored on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    /// Where delivery starts: `All`, `Last`, `New`, `ByStartSequence`, `ByStartTime` or
    /// `LastPerSubject`. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.deliverPolicy is immutable on the server"))]
    pub deliver_policy: DeliverPolicy,
    /// First sequence delivered, with `deliverPolicy: ByStartSequence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub opt_start_seq: Option<i64>,
    /// First time delivered (RFC 3339), with `deliverPolicy: ByStartTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub opt_start_time: Option<String>,
    /// How messages are acknowledged: `Explicit` (default: each message), `All` (cumulative) or
    /// `None`. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.ackPolicy is immutable on the server"))]
    pub ack_policy: AckPolicy,
    /// How long the server waits for an ack before redelivering (`30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ack_wait: Option<String>,
    /// Deliveries of one message before the server gives up; -1 for unlimited.
    #[serde(default = "default_max_deliver")]
    #[x_kube(validation = Rule::new("self == -1 || self >= 1").message("spec.maxDeliver must be -1 (unlimited) or at least 1"))]
    pub max_deliver: i64,
    /// Redelivery delays, one per attempt (`["1s", "5s", "30s"]`); overrides `ackWait` for
    /// redeliveries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(regex(pattern = DURATION_PATTERN)))]
    pub backoff: Option<Vec<String>>,
    /// Deliver only messages on this subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SUBJECT_PATTERN))]
    pub filter_subject: Option<String>,
    /// Deliver only messages on these subjects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256), inner(regex(pattern = SUBJECT_PATTERN)))]
    pub filter_subjects: Option<Vec<String>>,
    /// `Instant` (default) or `Original` (at the rate the messages were stored).
    #[serde(default)]
    pub replay_policy: ReplayPolicy,
    /// Unacked messages outstanding at most; pulls stop beyond it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_ack_pending: Option<i64>,
    /// Pull requests waiting at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_waiting: Option<i64>,
    /// Largest batch one pull request may ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_batch: Option<i64>,
    /// Longest expiry one pull request may ask for (`30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_expires: Option<String>,
    /// Delete the consumer on the server after this long without activity (`24h`); never when
    /// unset (the safe default for a durable consumer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub inactive_threshold: Option<String>,
    /// Deliver headers only, without payloads.
    #[serde(default)]
    pub headers_only: bool,
    /// Replicas of the consumer's state; 0 inherits the stream's.
    #[serde(default)]
    #[schemars(range(min = 0, max = 5))]
    pub replicas: i32,
    /// Keep the consumer's state in memory instead of on disk. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.memoryStorage is immutable on the server"))]
    pub memory_storage: bool,
    /// Percentage of acks sampled for latency advisories (`100%`, `10`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]|[1-9][0-9]|100)%?$"))]
    pub sample_frequency: Option<String>,
    /// Free-form metadata stored with the consumer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "string_map_schema")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// On delete of this object: `Delete` (default for consumers) removes the consumer from the
    /// server, `Retain` leaves it.
    #[serde(default = "default_consumer_deletion")]
    pub deletion_policy: DeletionPolicy,
    /// Take over a consumer of the same durable name that already exists on the server. Without
    /// it, such a consumer is left untouched and the object reports `Ready=False`, reason
    /// `AlreadyExists`.
    #[serde(default)]
    pub adopt_existing: bool,
}

/// Deliver policy: `All`, `Last`, `New`, `ByStartSequence`, `ByStartTime`, `LastPerSubject`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeliverPolicy {
    #[default]
    All,
    Last,
    New,
    ByStartSequence,
    ByStartTime,
    LastPerSubject,
}

/// Ack policy: `Explicit`, `All` or `None`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AckPolicy {
    #[default]
    Explicit,
    All,
    None,
}

/// Replay policy: `Instant` or `Original`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReplayPolicy {
    #[default]
    Instant,
    Original,
}

/// Observed state of a JetStreamConsumer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JetStreamConsumerStatus {
    /// Generation and conditions (`Ready`, `Synced`).
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Messages not yet delivered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
    /// Messages delivered and not yet acked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_pending: Option<u64>,
    /// Messages delivered more than once and not yet acked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<u64>,
    /// Pull requests waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<u64>,
}

fn default_max_deliver() -> i64 {
    -1
}

fn default_consumer_deletion() -> DeletionPolicy {
    DeletionPolicy::Delete
}
