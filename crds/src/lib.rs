//! The nats-cdr API: custom resources of group `nats-cdr.dev`, version `v1alpha1`.
//!
//! The Rust types here are the source of truth; `crds/*.yaml` is generated from them by the
//! `crdgen` binary (`cargo run -p nats-cdr-crds --bin crdgen`) and checked for drift by a test.
//! Re-exports kube and k8s-openapi so other crates use the same versions from one path.

// `#[kube(printcolumn(...))]` repeats `type_ = ...` once per column, which clippy mistakes for a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

pub mod common;
pub mod consumer;
pub mod nats_cluster;
pub mod pipeline;
pub mod stream;
pub mod units;

pub use k8s_openapi;
pub use kube;

pub use common::{ClusterRef, CommonStatus, DeletionPolicy, SecretKeyRef};
pub use consumer::{JetStreamConsumer, JetStreamConsumerSpec, JetStreamConsumerStatus};
pub use nats_cluster::{NatsCluster, NatsClusterSpec, NatsClusterStatus};
pub use pipeline::{CdrPipeline, CdrPipelineSpec, CdrPipelineStatus};
pub use stream::{JetStreamStream, JetStreamStreamSpec, JetStreamStreamStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of every custom resource here.
pub const GROUP: &str = "nats-cdr.dev";
/// API version of every custom resource here.
pub const VERSION: &str = "v1alpha1";

/// Every CRD with the file name it is committed under in `crds/`.
pub fn all() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("natsclusters.yaml", NatsCluster::crd()),
        ("jetstreamstreams.yaml", JetStreamStream::crd()),
        ("jetstreamconsumers.yaml", JetStreamConsumer::crd()),
        ("cdrpipelines.yaml", CdrPipeline::crd()),
    ]
}

/// Failure to render a CRD as YAML.
#[derive(Debug, thiserror::Error)]
#[error("cannot render CRD {name} as YAML")]
pub struct RenderError {
    name: String,
    #[source]
    source: serde_yaml::Error,
}

/// The YAML text committed for a CRD: a header saying it is generated, then the manifest.
pub fn render(crd: &CustomResourceDefinition) -> Result<String, RenderError> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let body = serde_yaml::to_string(crd).map_err(|source| RenderError {
        name: name.clone(),
        source,
    })?;
    Ok(format!(
        "# Generated from the Rust types in crds/src by `cargo run -p nats-cdr-crds --bin crdgen`.\n\
         # Do not edit by hand: a test fails when this file differs from what the types generate.\n\
         {body}"
    ))
}
