//! Types shared by several custom resources: references, policies, conditions and the string
//! formats (durations, sizes) that people write in manifests.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// Pattern of a duration as people write it: one or more `<number><unit>` groups with units `ns`,
/// `us`, `ms`, `s`, `m`, `h` or `d` (`90s`, `2m`, `24h`, `7d`, `1h30m`).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h|d))+$";

/// Pattern of a size in bytes: a number with an optional SI (`KB`, `MB`, `GB`, `TB`) or binary
/// (`KiB`, `MiB`, `GiB`, `TiB`) unit; a bare number is bytes (`1048576`, `512MiB`, `10GiB`, `1G`).
pub const SIZE_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?([KMGTP]i?B?|B)?$";

/// Pattern of a NATS stream or consumer name: no whitespace, dots, `*`, `>`, path separators.
pub const NATS_NAME_PATTERN: &str = r"^[^.*>\s/\\]+$";

/// Pattern of a NATS subject a stream may bind (wildcards allowed, no whitespace, no empty tokens).
pub const SUBJECT_PATTERN: &str = r"^[^.\s]+(\.[^.\s]+)*$";

/// A reference to the `NatsCluster` that holds a JetStream object.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRef {
    /// Name of the `NatsCluster` object.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of the `NatsCluster`; defaults to the namespace of the referring object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
}

impl ClusterRef {
    /// Namespace of the referenced `NatsCluster`: the explicit one, else the referring object's.
    pub fn namespace_for(&self, referrer_namespace: Option<String>) -> String {
        self.namespace
            .clone()
            .or(referrer_namespace)
            .unwrap_or_default()
    }

    /// `<namespace>/<name>` of the referenced `NatsCluster`, as seen from a referring object.
    pub fn key_for(&self, referrer_namespace: Option<String>) -> String {
        format!("{}/{}", self.namespace_for(referrer_namespace), self.name)
    }
}

/// What happens on the NATS server when the custom resource is deleted: `Retain` leaves the stream
/// or consumer (and its data) on the server, `Delete` removes it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

/// A reference to one key of a Secret in the object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Status fields every custom resource of this group carries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// The `metadata.generation` that the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Current conditions: `Ready` (usable), `Synced` (the server matches the spec), and
    /// kind-specific ones. Each has a reason from a closed, documented set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// Schema of `status.conditions`: a list keyed by `type`, so server-side apply merges entries.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// Schema of a free-form string map (`metadata` of streams and consumers).
pub fn string_map_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": {"type": "string"},
        "maxProperties": 64
    })
}
