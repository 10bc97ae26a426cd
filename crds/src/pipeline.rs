//! `CdrPipeline`: one object that yields the CDR stream, the worker's durable consumer, the
//! kam-cdr-bridge DaemonSet and the cdr-worker Deployment.

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{
    ClusterRef, CommonStatus, DURATION_PATTERN, NATS_NAME_PATTERN, SIZE_PATTERN, SecretKeyRef,
};

/// Kamailio CDRs into PostgreSQL through JetStream: the stream, the consumer, the bridge on every
/// SIP node and the workers, from one object. Deleting it deletes what it created (the stream
/// itself follows `spec.stream.deletionPolicy`).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "nats-cdr.dev",
    version = "v1alpha1",
    kind = "CdrPipeline",
    namespaced,
    status = "CdrPipelineStatus",
    shortname = "cdrp",
    category = "nats-cdr",
    doc = "A Kamailio-to-PostgreSQL CDR pipeline through NATS JetStream.",
    printcolumn(
        name = "Cluster",
        type_ = "string",
        json_path = ".spec.clusterRef.name"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Bridges",
        type_ = "integer",
        json_path = ".status.bridgePodsReady"
    ),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".status.workerReplicasAvailable"
    ),
    printcolumn(
        name = "Backlog",
        type_ = "integer",
        json_path = ".status.consumerPending"
    ),
    printcolumn(
        name = "DeadLetters",
        type_ = "integer",
        json_path = ".status.deadLetters"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self.consumer.maxAckPending >= self.worker.batchSize * self.worker.concurrency")
    .message("spec.consumer.maxAckPending must be at least spec.worker.batchSize * spec.worker.concurrency, or workers starve")
    .field_path(".consumer.maxAckPending"))]
#[serde(rename_all = "camelCase")]
pub struct CdrPipelineSpec {
    /// The `NatsCluster` to carry the CDRs.
    pub cluster_ref: ClusterRef,
    /// The CDR stream.
    #[serde(default)]
    pub stream: PipelineStream,
    /// The workers' durable consumer.
    #[serde(default)]
    pub consumer: PipelineConsumer,
    /// kam-cdr-bridge, one per SIP node.
    pub bridge: BridgeSpec,
    /// cdr-worker, the PostgreSQL writers.
    pub worker: WorkerSpec,
}

/// Settings of the CDR stream (subjects `cdr.raw` and `cdr.>`, file storage, limits retention).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineStream {
    /// Stream name on the server. Immutable.
    #[serde(default = "default_stream_name")]
    #[schemars(length(min = 1, max = 255), regex(pattern = NATS_NAME_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.stream.name is immutable"))]
    pub name: String,
    /// Copies of each CDR: 1 (pilot) or 3 (GA); at most the cluster's size.
    #[serde(default = "default_one")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,
    /// How long CDRs are kept in the stream (`7d`).
    #[serde(default = "default_max_age")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_age: String,
    /// How much the stream keeps at most (`10GiB`).
    #[serde(default = "default_max_bytes")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub max_bytes: String,
    /// Window in which a re-published line (same `Nats-Msg-Id`) is dropped (`2m`).
    #[serde(default = "default_duplicate_window")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub duplicate_window: String,
    /// `Retain` (default) keeps the stream and its CDRs when the pipeline is deleted.
    #[serde(default)]
    pub deletion_policy: crate::common::DeletionPolicy,
}

impl Default for PipelineStream {
    fn default() -> Self {
        Self {
            name: default_stream_name(),
            replicas: 1,
            max_age: default_max_age(),
            max_bytes: default_max_bytes(),
            duplicate_window: default_duplicate_window(),
            deletion_policy: Default::default(),
        }
    }
}

/// Settings of the workers' durable pull consumer (explicit ack).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PipelineConsumer {
    /// Durable name. Immutable.
    #[serde(default = "default_durable")]
    #[schemars(length(min = 1, max = 255), regex(pattern = NATS_NAME_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.consumer.durableName is immutable"))]
    pub durable_name: String,
    /// Time a worker has to commit and ack a CDR before it is redelivered (`30s`).
    #[serde(default = "default_ack_wait")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub ack_wait: String,
    /// Deliveries before a CDR goes to the dead-letter subject.
    #[serde(default = "default_max_deliver")]
    #[schemars(range(min = 1, max = 100))]
    pub max_deliver: i64,
    /// Unacked CDRs outstanding at most; at least batch size times concurrency.
    #[serde(default = "default_max_ack_pending")]
    #[schemars(range(min = 1))]
    pub max_ack_pending: i64,
}

impl Default for PipelineConsumer {
    fn default() -> Self {
        Self {
            durable_name: default_durable(),
            ack_wait: default_ack_wait(),
            max_deliver: default_max_deliver(),
            max_ack_pending: default_max_ack_pending(),
        }
    }
}

/// The kam-cdr-bridge DaemonSet.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BridgeSpec {
    /// Container image of kam-cdr-bridge.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Nodes that run Kamailio (and so a bridge), by label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Absolute path of Kamailio's acc_json file on the node.
    #[serde(default = "default_acc_file")]
    #[schemars(regex(pattern = r"^/[^\s]*[^/\s]$"))]
    pub acc_file_path: String,
    /// Absolute directory on the node where the bridge keeps its checkpoint.
    #[serde(default = "default_state_dir")]
    #[schemars(regex(pattern = r"^/[^\s]*$"))]
    pub state_dir: String,
}

/// The cdr-worker Deployment.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// Container image of cdr-worker.
    #[schemars(length(min = 1))]
    pub image: String,
    /// Worker pods pulling from the durable consumer.
    #[serde(default = "default_worker_replicas")]
    #[schemars(range(min = 0, max = 64))]
    pub replicas: i32,
    /// The Secret key holding the PostgreSQL URL (`postgres://user:pass@host/db`).
    pub database_secret_ref: SecretKeyRef,
    /// CDRs fetched and committed per transaction.
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch_size: i64,
    /// Batches in flight per worker pod.
    #[serde(default = "default_one_i64")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: i64,
}

/// Observed state of a CdrPipeline.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CdrPipelineStatus {
    /// Generation and conditions (`Ready`, `StreamReady`, `ConsumerReady`, `BridgeReady`,
    /// `WorkerReady`).
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Bridge pods ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge_pods_ready: Option<i32>,
    /// Worker replicas available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_replicas_available: Option<i32>,
    /// Messages in the stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_messages: Option<u64>,
    /// CDRs not yet delivered to a worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_pending: Option<u64>,
    /// Messages on the dead-letter subjects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letters: Option<u64>,
}

fn default_stream_name() -> String {
    "AKIRA_CDR".into()
}
fn default_one() -> i32 {
    1
}
fn default_one_i64() -> i64 {
    1
}
fn default_max_age() -> String {
    "7d".into()
}
fn default_max_bytes() -> String {
    "10GiB".into()
}
fn default_duplicate_window() -> String {
    "2m".into()
}
fn default_durable() -> String {
    "cdr-worker".into()
}
fn default_ack_wait() -> String {
    "30s".into()
}
fn default_max_deliver() -> i64 {
    5
}
fn default_max_ack_pending() -> i64 {
    1000
}
fn default_acc_file() -> String {
    "/var/log/kamailio/acc/cdr.jsonl".into()
}
fn default_state_dir() -> String {
    "/var/lib/kam-cdr-bridge".into()
}
fn default_worker_replicas() -> i32 {
    2
}
fn default_batch_size() -> i64 {
    100
}
