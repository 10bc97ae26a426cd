//! Child objects of one owner, applied the way Stackable's `ClusterResources` does it: every
//! child is written by server-side apply with the operator's one field manager, carries the
//! owner's controller reference (so Kubernetes garbage collection deletes it with the owner) and
//! the standard `app.kubernetes.io/*` labels; children the last reconcile did not apply are found
//! by those labels and deleted (orphans).
//!
//! A controller makes one [`Children`] per reconcile, [`Children::apply`]s every child it
//! builds, then calls [`Children::delete_orphans`] once per child kind it manages:
//!
//! ```text
//! let mut children = Children::new(ctx.client.clone(), pipeline.as_ref(), "cdr-pipeline")?;
//! children.apply(config_map).await?;
//! children.apply(deployment).await?;
//! children.delete_orphans::<ConfigMap>().await?;
//! children.delete_orphans::<Deployment>().await?;
//! ```
//!
//! Public (not `pub(crate)`) so that the integration tests drive it against a real apiserver
//! before the controllers that need it (CdrPipeline, managed NatsCluster) exist.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::FIELD_MANAGER;

/// `app.kubernetes.io/name`: what the children make up (`nats`, `cdr-pipeline`).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/instance`: the name of the owner.
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
/// `app.kubernetes.io/managed-by`: always [`FIELD_MANAGER`].
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// `app.kubernetes.io/component`: the part a child plays (`server`, `worker`), when given.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// `app.kubernetes.io/part-of`: always `nats-cdr`.
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";

/// Failure to apply children or to delete orphans.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the owner has no {0}: children need a stored owner")]
    Owner(&'static str),
    #[error("a {kind} child has no metadata.name")]
    UnnamedChild { kind: String },
    #[error("applying {kind} {name} failed")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing {kind} objects labelled {selector} failed")]
    List {
        kind: String,
        selector: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting orphaned {kind} {name} failed")]
    Delete {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// The children of one owner during one reconcile.
pub struct Children {
    client: Client,
    namespace: String,
    owner: OwnerReference,
    labels: BTreeMap<String, String>,
    applied: HashSet<String>,
}

impl Children {
    /// Children of `owner` (a stored object: it has a namespace and a uid), labelled
    /// `app.kubernetes.io/name: <app_name>`.
    pub fn new<O>(client: Client, owner: &O, app_name: &str) -> Result<Self, Error>
    where
        O: Resource<DynamicType = ()>,
    {
        let namespace = owner.namespace().ok_or(Error::Owner("namespace"))?;
        let reference = owner
            .controller_owner_ref(&())
            .ok_or(Error::Owner("name or uid"))?;
        if reference.uid.is_empty() {
            return Err(Error::Owner("uid"));
        }
        let labels = BTreeMap::from([
            (NAME_LABEL.to_owned(), app_name.to_owned()),
            (INSTANCE_LABEL.to_owned(), reference.name.clone()),
            (MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned()),
            (PART_OF_LABEL.to_owned(), "nats-cdr".to_owned()),
        ]);
        Ok(Self {
            client,
            namespace,
            owner: reference,
            labels,
            applied: HashSet::new(),
        })
    }

    /// The labels every child carries (for selectors of Services and workloads).
    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }

    /// The labels plus `app.kubernetes.io/component: <component>`.
    pub fn component_labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.insert(COMPONENT_LABEL.to_owned(), component.to_owned());
        labels
    }

    /// The label selector that finds this owner's children.
    pub fn selector(&self) -> String {
        [NAME_LABEL, INSTANCE_LABEL, MANAGED_BY_LABEL]
            .iter()
            .map(|k| format!("{k}={}", self.labels.get(*k).map_or("", String::as_str)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Applies `child` in the owner's namespace with the owner reference and the labels added
    /// (its own labels kept), by server-side apply with the operator's field manager. An
    /// unchanged child is not changed on the server (same resourceVersion).
    pub async fn apply<K>(&mut self, mut child: K) -> Result<K, Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Serialize
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let name = child
            .meta()
            .name
            .clone()
            .ok_or_else(|| Error::UnnamedChild {
                kind: K::kind(&()).into_owned(),
            })?;
        self.mark(child.meta_mut());
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        let applied = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&child),
            )
            .await
            .map_err(|source| Error::Apply {
                kind: K::kind(&()).into_owned(),
                name,
                source,
            })?;
        if let Some(uid) = applied.uid() {
            self.applied.insert(uid);
        }
        Ok(applied)
    }

    fn mark(&self, meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
        meta.namespace = Some(self.namespace.clone());
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        labels.extend(self.labels.clone());
        let owners = meta.owner_references.get_or_insert_with(Vec::new);
        owners.retain(|o| o.uid != self.owner.uid);
        owners.push(self.owner.clone());
    }

    /// Deletes every `K` of this owner (by label and owner reference) that this reconcile did not
    /// apply. Returns the names deleted.
    pub async fn delete_orphans<K>(&self) -> Result<Vec<String>, Error>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + DeserializeOwned
            + Clone
            + Debug,
    {
        let kind = K::kind(&()).into_owned();
        let api: Api<K> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = self.selector();
        let listed = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(|source| Error::List {
                kind: kind.clone(),
                selector,
                source,
            })?;
        let mut deleted = Vec::new();
        for orphan in listed.items.iter().filter(|o| self.is_orphan(&o.metadata)) {
            let name = orphan.name_any();
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => deleted.push(name),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(source) => {
                    return Err(Error::Delete {
                        kind: kind.clone(),
                        name,
                        source,
                    });
                }
            }
        }
        Ok(deleted)
    }

    /// Owned by this owner (a label match alone is not enough) and not applied this time.
    fn is_orphan(&self, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
        let owned = meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == self.owner.uid);
        let applied = meta.uid.as_ref().is_some_and(|u| self.applied.contains(u));
        owned && !applied && meta.deletion_timestamp.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn owner() -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("owner".into()),
                namespace: Some("ns".into()),
                uid: Some("u-1".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn client() -> Client {
        // Never contacted: these tests only exercise the pure parts.
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn children_get_labels_and_the_controller_reference() {
        let children = Children::new(client(), &owner(), "app").unwrap();
        assert_eq!(
            children.selector(),
            "app.kubernetes.io/name=app,app.kubernetes.io/instance=owner,app.kubernetes.io/managed-by=nats-cdr-operator"
        );
        let mut meta = ObjectMeta {
            labels: Some(BTreeMap::from([("mine".into(), "kept".into())])),
            ..ObjectMeta::default()
        };
        children.mark(&mut meta);
        children.mark(&mut meta);
        let labels = meta.labels.unwrap();
        assert_eq!(labels["mine"], "kept");
        assert_eq!(labels[MANAGED_BY_LABEL], FIELD_MANAGER);
        let owners = meta.owner_references.unwrap();
        assert_eq!(owners.len(), 1, "marking twice adds the reference once");
        assert_eq!(owners[0].controller, Some(true));
        assert_eq!(meta.namespace.as_deref(), Some("ns"));
        let component = children.component_labels("server");
        assert_eq!(component[COMPONENT_LABEL], "server");
        assert_eq!(component[PART_OF_LABEL], "nats-cdr");
        assert_eq!(component[INSTANCE_LABEL], "owner");
    }

    #[tokio::test]
    async fn an_owner_without_uid_is_refused() {
        let mut o = owner();
        o.metadata.uid = None;
        assert!(matches!(
            Children::new(client(), &o, "app"),
            Err(Error::Owner(_))
        ));
    }
}
