//! Lookups in the watch caches (reflector stores) of the operator's kinds, and the ownership rule
//! for several objects that name the same NATS object: the oldest wins.

use std::sync::Arc;

use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use nats_cdr_crds::{JetStreamConsumer, JetStreamStream, NatsCluster};

/// The caches of every watched namespace, per kind.
#[derive(Default)]
pub(crate) struct Index {
    pub(crate) clusters: Vec<Store<NatsCluster>>,
    pub(crate) streams: Vec<Store<JetStreamStream>>,
    pub(crate) consumers: Vec<Store<JetStreamConsumer>>,
}

impl Index {
    /// NatsCluster `namespace/name` when a watched namespace holds it.
    pub(crate) fn cluster(&self, namespace: &str, name: &str) -> Option<Arc<NatsCluster>> {
        let key = ObjectRef::new(name).within(namespace);
        self.clusters.iter().find_map(|s| s.get(&key))
    }

    /// Every watched JetStreamStream naming stream `name` on cluster `cluster_key`.
    pub(crate) fn streams_named(&self, cluster_key: &str, name: &str) -> Vec<Arc<JetStreamStream>> {
        self.streams
            .iter()
            .flat_map(Store::state)
            .filter(|o| {
                o.spec.name == name && o.spec.cluster_ref.key_for(o.namespace()) == cluster_key
            })
            .collect()
    }

    /// Every watched JetStreamConsumer naming `stream`/`durable` on cluster `cluster_key`.
    pub(crate) fn consumers_named(
        &self,
        cluster_key: &str,
        stream: &str,
        durable: &str,
    ) -> Vec<Arc<JetStreamConsumer>> {
        self.consumers
            .iter()
            .flat_map(Store::state)
            .filter(|o| {
                o.spec.stream_name == stream
                    && o.spec.durable_name == durable
                    && o.spec.cluster_ref.key_for(o.namespace()) == cluster_key
            })
            .collect()
    }
}

/// The owner among objects that name the same NATS object: the oldest by creationTimestamp,
/// then by uid (a total order, so the answer never flips). Objects being deleted do not compete.
pub(crate) fn oldest<K: Resource>(candidates: impl IntoIterator<Item = Arc<K>>) -> Option<Arc<K>> {
    candidates
        .into_iter()
        .filter(|k| k.meta().deletion_timestamp.is_none())
        .min_by_key(|k| {
            (
                k.meta().creation_timestamp.as_ref().map(|t| t.0),
                k.meta().uid.clone().unwrap_or_default(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn stream(uid: &str, created_secs: i64, deleting: bool) -> Arc<JetStreamStream> {
        let mut s: JetStreamStream = serde_json::from_value(serde_json::json!({
            "apiVersion": "nats-cdr.dev/v1alpha1", "kind": "JetStreamStream",
            "metadata": {"name": uid, "namespace": "ns", "uid": uid},
            "spec": {"clusterRef": {"name": "n"}, "name": "S"}
        }))
        .unwrap();
        s.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created_secs).unwrap()));
        if deleting {
            s.metadata.deletion_timestamp = s.metadata.creation_timestamp.clone();
        }
        Arc::new(s)
    }

    #[test]
    fn the_oldest_wins_then_the_lowest_uid_and_the_deleted_never() {
        let owner = |list: Vec<Arc<JetStreamStream>>| oldest(list).map(|s| s.name_any());
        assert_eq!(
            owner(vec![stream("b", 2, false), stream("a", 3, false)]),
            Some("b".into())
        );
        assert_eq!(
            owner(vec![stream("b", 2, false), stream("a", 2, false)]),
            Some("a".into())
        );
        assert_eq!(
            owner(vec![stream("a", 1, true), stream("b", 2, false)]),
            Some("b".into())
        );
        assert_eq!(owner(vec![stream("a", 1, true)]), None);
    }
}
