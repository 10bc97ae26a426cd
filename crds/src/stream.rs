//! `JetStreamStream`: a JetStream stream, kept in sync with the server by the operator.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    ClusterRef, CommonStatus, DURATION_PATTERN, DeletionPolicy, NATS_NAME_PATTERN, SIZE_PATTERN,
    SUBJECT_PATTERN, string_map_schema,
};

/// A JetStream stream on a `NatsCluster`. Every NATS stream setting; durations as `24h`, `2m`,
/// `7d`; sizes as `10GiB`, `512MB`. Defaults are the safe ones: file storage, limits retention,
/// `Retain` on delete.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "nats-cdr.dev",
    version = "v1alpha1",
    kind = "JetStreamStream",
    namespaced,
    status = "JetStreamStreamStatus",
    shortname = "jss",
    shortname = "stream",
    category = "nats-cdr",
    doc = "A JetStream stream, kept in sync with the NATS server by the nats-cdr operator.",
    printcolumn(name = "Stream", type_ = "string", json_path = ".spec.name"),
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".spec.clusterRef.name"
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Messages", type_ = "integer", json_path = ".status.messages"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!has(self.mirror) || !has(self.subjects) || size(self.subjects) == 0")
        .message("a stream with spec.mirror takes its messages from the mirrored stream and cannot have spec.subjects")
        .field_path(".subjects"),
    validation = Rule::new("!has(self.mirror) || !has(self.sources) || size(self.sources) == 0")
        .message("a stream cannot have both spec.mirror and spec.sources")
        .field_path(".sources"),
    validation = Rule::new("!self.discardNewPerSubject || (self.discard == 'New' && has(self.maxMsgsPerSubject))")
        .message("spec.discardNewPerSubject needs spec.discard: New and spec.maxMsgsPerSubject")
        .field_path(".discardNewPerSubject"),
)]
#[serde(rename_all = "camelCase")]
pub struct JetStreamStreamSpec {
    /// The `NatsCluster` that holds the stream.
    pub cluster_ref: ClusterRef,
    /// Name of the stream on the server. Immutable.
    #[schemars(length(min = 1, max = 255), regex(pattern = NATS_NAME_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.name is immutable: create a new object for a new stream"))]
    pub name: String,
    /// Human description, stored on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,
    /// Subjects the stream binds (wildcards `*` and `>` allowed). Empty for a mirror.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256), inner(regex(pattern = SUBJECT_PATTERN)))]
    pub subjects: Option<Vec<String>>,
    /// When messages may be removed: `Limits` (by the limits below), `Interest` (once every
    /// consumer has acked) or `WorkQueue` (once any consumer has acked).
    #[serde(default)]
    pub retention: Retention,
    /// Where messages live: `File` (default; survives restarts) or `Memory`. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.storage is immutable: NATS cannot change a stream's storage type in place"))]
    pub storage: Storage,
    /// Copies of each message across the cluster's servers, 1 to 5; at most the cluster's size.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,
    /// Oldest message age kept (`24h`, `30d`); unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_age: Option<String>,
    /// Total size kept (`10GiB`); unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub max_bytes: Option<String>,
    /// Number of messages kept; unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_msgs: Option<i64>,
    /// Largest accepted message (`1MiB`); the server's limit when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub max_msg_size: Option<String>,
    /// Messages kept per subject; unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_msgs_per_subject: Option<i64>,
    /// Most consumers the stream accepts; unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_consumers: Option<i32>,
    /// What a full stream does: `Old` drops the oldest messages, `New` refuses new ones.
    #[serde(default)]
    pub discard: Discard,
    /// With `discard: New`, apply the refusal per subject (needs `maxMsgsPerSubject`).
    #[serde(default)]
    pub discard_new_per_subject: bool,
    /// Window in which a repeated `Nats-Msg-Id` is dropped as a duplicate (`2m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub duplicate_window: Option<String>,
    /// Refuse deleting single messages through the API.
    #[serde(default)]
    pub deny_delete: bool,
    /// Refuse purging the stream through the API.
    #[serde(default)]
    pub deny_purge: bool,
    /// Allow `Nats-Rollup` headers to replace a subject's or the stream's content.
    #[serde(default)]
    pub allow_rollup: bool,
    /// Allow direct get of messages from any replica.
    #[serde(default)]
    pub allow_direct: bool,
    /// On-disk compression: `None` or `S2`.
    #[serde(default)]
    pub compression: Compression,
    /// Where the stream's replicas are placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Make this stream a mirror of another stream (then it has no subjects nor sources).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<StreamSource>,
    /// Streams whose messages are copied into this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub sources: Option<Vec<StreamSource>>,
    /// Free-form metadata stored with the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "string_map_schema")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// On delete of this object: `Retain` (default) leaves the stream and its data on the server,
    /// `Delete` deletes it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Take over a stream of the same name that already exists on the server. Without it, such a
    /// stream is left untouched and the object reports `Ready=False`, reason `AlreadyExists`.
    #[serde(default)]
    pub adopt_existing: bool,
}

/// Retention policy: `Limits`, `Interest` or `WorkQueue`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Retention {
    #[default]
    Limits,
    Interest,
    WorkQueue,
}

/// Storage type: `File` or `Memory`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Storage {
    #[default]
    File,
    Memory,
}

/// Discard policy: `Old` or `New`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Discard {
    #[default]
    Old,
    New,
}

/// Compression: `None` or `S2`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    None,
    S2,
}

/// Placement of a stream's replicas.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Name of the NATS cluster (in a supercluster) to place the stream in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Server tags every replica's server must have.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// A stream that a mirror or source copies from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct StreamSource {
    /// Name of the origin stream.
    #[schemars(length(min = 1, max = 255), regex(pattern = NATS_NAME_PATTERN))]
    pub name: String,
    /// Start at this sequence of the origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub opt_start_seq: Option<i64>,
    /// Start at this time of the origin (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub opt_start_time: Option<String>,
    /// Copy only messages on this subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_subject: Option<String>,
    /// JetStream API prefix of another account or domain holding the origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_api_prefix: Option<String>,
    /// Delivery prefix of another account or domain holding the origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_deliver_prefix: Option<String>,
}

/// Observed state of a JetStreamStream.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JetStreamStreamStatus {
    /// Generation and conditions (`Ready`, `Synced`).
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Messages in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,
    /// Bytes in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// First sequence in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_sequence: Option<u64>,
    /// Last sequence in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sequence: Option<u64>,
    /// Consumers on the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_count: Option<u64>,
    /// Replicas the server reports current (leader plus current peers), while a replica change
    /// is in progress and after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,
}

fn default_one() -> i32 {
    1
}
