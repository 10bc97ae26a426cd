//! Status of the operator's objects: conditions (with `lastTransitionTime` kept while a
//! condition's status holds), the server-side apply of the status subresource, and Events.
//! Knows the status types of the custom resources, nothing of NATS or of the controllers.

mod conditions;
mod events;

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use nats_cdr_crds::{
    CommonStatus, JetStreamConsumer, JetStreamConsumerStatus, JetStreamStream,
    JetStreamStreamStatus, NatsCluster, NatsClusterStatus,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub(crate) use conditions::{Cond, merge_conditions, reason_of, transitioned};
pub(crate) use events::publish;

use crate::k8s::FIELD_MANAGER;

/// A kind with a status that carries [`CommonStatus`] (generation and conditions).
pub(crate) trait ObjectStatus: Resource<DynamicType = ()> {
    type Status: Clone + Debug + Default + PartialEq + Serialize + Send + Sync;
    fn status(&self) -> Option<&Self::Status>;
    fn common(status: &Self::Status) -> &CommonStatus;
    fn common_mut(status: &mut Self::Status) -> &mut CommonStatus;
}

macro_rules! object_status {
    ($kind:ty, $status:ty) => {
        impl ObjectStatus for $kind {
            type Status = $status;
            fn status(&self) -> Option<&Self::Status> {
                self.status.as_ref()
            }
            fn common(status: &Self::Status) -> &CommonStatus {
                &status.common
            }
            fn common_mut(status: &mut Self::Status) -> &mut CommonStatus {
                &mut status.common
            }
        }
    };
}

object_status!(NatsCluster, NatsClusterStatus);
object_status!(JetStreamStream, JetStreamStreamStatus);
object_status!(JetStreamConsumer, JetStreamConsumerStatus);

/// Writes `status` of `obj` by server-side apply on the status subresource.
pub(crate) async fn apply<K>(api: &Api<K>, obj: &K, status: &K::Status) -> Result<(), kube::Error>
where
    K: ObjectStatus + Clone + DeserializeOwned + Debug,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}
