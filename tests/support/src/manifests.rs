//! Applying YAML manifests and the project's CRDs with server-side apply, as `kubectl apply
//! --server-side` would, through API discovery (works for any kind the cluster serves).

use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope};
use kube::{Client, ResourceExt};
use serde::Deserialize;

use crate::kube_cluster::{ClusterError, wait_for};

/// Field manager of everything the test support applies.
pub const FIELD_MANAGER: &str = "nats-cdr-testsupport";

/// Failure to apply a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("invalid YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("document {index} has no apiVersion/kind")]
    NoType { index: usize },
    #[error("the cluster does not serve {api_version}/{kind}")]
    UnknownKind { api_version: String, kind: String },
    #[error("applying {kind}/{name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// Parses every YAML document in `text` (empty documents skipped).
pub fn parse_documents(text: &str) -> Result<Vec<DynamicObject>, ApplyError> {
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document)?;
        if value.is_null() {
            continue;
        }
        objects.push(serde_yaml::from_value(value)?);
    }
    Ok(objects)
}

/// Server-side applies every document of `text`; namespaced objects without a namespace go to
/// `namespace`. Returns the applied objects as the server returned them.
pub async fn apply_yaml(
    client: &Client,
    text: &str,
    namespace: &str,
) -> Result<Vec<DynamicObject>, ApplyError> {
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut applied = Vec::new();
    for (index, object) in parse_documents(text)?.into_iter().enumerate() {
        let types = object.types.clone().ok_or(ApplyError::NoType { index })?;
        let (resource, caps) = resolve(&discovery, &types.api_version, &types.kind)?;
        let api: Api<DynamicObject> = match caps.scope {
            Scope::Namespaced => Api::namespaced_with(
                client.clone(),
                object.metadata.namespace.as_deref().unwrap_or(namespace),
                &resource,
            ),
            Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        let name = object.name_any();
        let result = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
            .map_err(|source| ApplyError::Apply {
                kind: types.kind.clone(),
                name: name.clone(),
                source,
            })?;
        applied.push(result);
    }
    Ok(applied)
}

fn resolve(
    discovery: &Discovery,
    api_version: &str,
    kind: &str,
) -> Result<(ApiResource, ApiCapabilities), ApplyError> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    discovery
        .groups()
        .filter(|g| g.name() == group)
        .flat_map(|g| g.versioned_resources(version))
        .find(|(r, _)| r.kind == kind)
        .ok_or_else(|| ApplyError::UnknownKind {
            api_version: api_version.to_owned(),
            kind: kind.to_owned(),
        })
}

/// Installs (server-side applies) every CRD of this project and waits until each is Established.
pub async fn install_crds(client: &Client) -> Result<(), ApplyError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in nats_cdr_crds::all() {
        crds.patch(
            &crd.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(|source| ApplyError::Apply {
            kind: "CustomResourceDefinition".into(),
            name: crd.name_any(),
            source,
        })?;
    }
    for (_, crd) in nats_cdr_crds::all() {
        wait_crd_established(client, &crd.name_any(), Duration::from_secs(30)).await?;
    }
    Ok(())
}

/// Waits until the CustomResourceDefinition `name` is Established (its kind is served).
pub async fn wait_crd_established(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    wait_for(timeout, &format!("CRD {name} Established"), || {
        let crds = crds.clone();
        async move {
            crds.get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|c| c.status)
                .and_then(|s| s.conditions)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                })
        }
    })
    .await
}
