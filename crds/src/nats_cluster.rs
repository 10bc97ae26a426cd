//! `NatsCluster`: a NATS JetStream server cluster, either run by the operator (`managed`) or
//! reached at a URL (`external`).

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{CommonStatus, SIZE_PATTERN};

/// A NATS JetStream cluster. Set exactly one of `managed` (the operator runs the servers: pilot =
/// 1 node, GA = 3 nodes) or `external` (a URL plus credentials for a NATS the operator does not run).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "nats-cdr.dev",
    version = "v1alpha1",
    kind = "NatsCluster",
    namespaced,
    status = "NatsClusterStatus",
    shortname = "natsc",
    category = "nats-cdr",
    doc = "A NATS JetStream cluster, run by the operator (managed) or reached at a URL (external).",
    printcolumn(
        name = "Replicas",
        type_ = "integer",
        json_path = ".spec.managed.replicas"
    ),
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.external.url"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".status.serverVersion"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.managed) != has(self.external)")
    .message("exactly one of spec.managed and spec.external must be set"))]
#[serde(rename_all = "camelCase")]
pub struct NatsClusterSpec {
    /// The operator runs the NATS servers (StatefulSet, Services, ConfigMap, PodDisruptionBudget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed: Option<ManagedCluster>,
    /// A NATS the operator does not run, reached at a URL with credentials from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalCluster>,
}

/// Servers the operator runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManagedCluster {
    /// Number of NATS servers: 1 (pilot), 3 (GA) or 5. Raising it is a migration the operator
    /// carries out; lowering it is refused (it would drop JetStream peers holding data).
    #[serde(default = "default_replicas")]
    #[schemars(extend("enum" = [1, 3, 5]))]
    #[x_kube(validation = Rule::new("self >= oldSelf")
        .message("spec.managed.replicas cannot be decreased: removing JetStream peers can lose data"))]
    pub replicas: i32,
    /// Container image of nats-server; the operator's built-in default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,
    /// JetStream storage of each server.
    #[serde(default)]
    pub jetstream: JetStreamStorage,
    /// How often JetStream syncs to disk: `always` (the default: an ack means the data is on
    /// disk) or a duration such as `2m` (NATS's own default, faster but an acknowledged write can
    /// be lost on power loss).
    #[serde(default = "default_sync_interval")]
    #[schemars(regex(pattern = r"^(always|([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+)$"))]
    pub sync_interval: String,
    /// TLS for client and route connections, from a Secret of type kubernetes.io/tls (with
    /// `ca.crt`). Plain TCP when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSecret>,
}

/// JetStream storage of a managed server.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JetStreamStorage {
    /// Size of each server's file-storage volume (`10Gi`, `500Gi`).
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub storage_size: String,
    /// StorageClass of the volumes; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Memory JetStream may use for memory-storage streams (`1Gi`); NATS's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SIZE_PATTERN))]
    pub max_memory: Option<String>,
}

impl Default for JetStreamStorage {
    fn default() -> Self {
        Self {
            storage_size: default_storage_size(),
            storage_class_name: None,
            max_memory: None,
        }
    }
}

/// A Secret holding a TLS certificate (`tls.crt`, `tls.key`, `ca.crt`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsSecret {
    /// Name of the Secret in the NatsCluster's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
}

/// A NATS the operator does not run.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalCluster {
    /// Server URL(s), comma-separated: `nats://nats.example:4222` or `tls://...`.
    #[schemars(regex(pattern = r"^(nats|tls|ws|wss)://[^\s,]+(,(nats|tls|ws|wss)://[^\s,]+)*$"))]
    pub url: String,
    /// Credentials, read from a Secret in the NatsCluster's namespace; anonymous when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<NatsCredentials>,
    /// A Secret whose `ca.crt` verifies the server's certificate; system roots when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_secret_name: Option<String>,
}

/// Where the operator finds credentials for an external NATS.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NatsCredentials {
    /// Name of the Secret. Keys by type: `UserPassword` reads `username` and `password`,
    /// `Token` reads `token`, `CredsFile` reads `creds` (a NATS `.creds` file: JWT and NKey seed).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Kind of credential in the Secret: `UserPassword`, `Token` or `CredsFile`.
    #[serde(rename = "type")]
    pub credential_type: CredentialType,
}

/// Kind of credential: `UserPassword`, `Token` or `CredsFile`.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialType {
    UserPassword,
    Token,
    CredsFile,
}

/// Observed state of a NatsCluster.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NatsClusterStatus {
    /// Generation and conditions (`Ready`: the operator can reach the servers and JetStream is on).
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Version the server reported on connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_version: Option<String>,
    /// Whether the server reported JetStream enabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jetstream_enabled: Option<bool>,
    /// Managed clusters: servers Ready and current in the JetStream meta group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
}

fn default_replicas() -> i32 {
    1
}

fn default_sync_interval() -> String {
    "always".into()
}

fn default_storage_size() -> String {
    "10Gi".into()
}
