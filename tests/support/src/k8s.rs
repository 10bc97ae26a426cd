//! Waiting on workloads in tests: Deployments available, DaemonSets ready, pods finished (with
//! their logs, read through the apiserver from the kubelet as `kubectl logs` does).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, LogParams};

use crate::kube_cluster::{ClusterError, wait_for};

/// Waits until the object `name` of `api` exists and `ready` holds for its status.
async fn wait_status<K, S>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    ready: impl Fn(&S) -> bool,
) -> Result<(), ClusterError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + HasStatus<S>,
{
    wait_for(timeout, what, || {
        let api = api.clone();
        let ready = &ready;
        async move {
            api.get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|object| object.status().map(ready))
                .unwrap_or(false)
        }
    })
    .await
}

/// The status of a workload kind.
trait HasStatus<S> {
    fn status(&self) -> Option<&S>;
}

macro_rules! has_status {
    ($kind:ty, $status:ty) => {
        impl HasStatus<$status> for $kind {
            fn status(&self) -> Option<&$status> {
                self.status.as_ref()
            }
        }
    };
}
has_status!(Deployment, k8s_openapi::api::apps::v1::DeploymentStatus);
has_status!(DaemonSet, k8s_openapi::api::apps::v1::DaemonSetStatus);
has_status!(StatefulSet, k8s_openapi::api::apps::v1::StatefulSetStatus);
has_status!(Pod, k8s_openapi::api::core::v1::PodStatus);

/// Waits until Deployment `name` has `replicas` updated, available replicas.
pub async fn wait_deployment_available(
    client: &Client,
    namespace: &str,
    name: &str,
    replicas: i32,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let what = format!("Deployment {namespace}/{name} with {replicas} available");
    wait_status(
        &api,
        name,
        &what,
        timeout,
        |s: &k8s_openapi::api::apps::v1::DeploymentStatus| {
            s.available_replicas == Some(replicas)
                && s.updated_replicas == Some(replicas)
                && s.replicas == Some(replicas)
        },
    )
    .await
}

/// Waits until DaemonSet `name` is scheduled on at least one node and ready on every one, and
/// returns how many pods are ready.
pub async fn wait_daemonset_ready(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<i32, ClusterError> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let what = format!("DaemonSet {namespace}/{name} ready");
    wait_status(
        &api,
        name,
        &what,
        timeout,
        |s: &k8s_openapi::api::apps::v1::DaemonSetStatus| {
            s.desired_number_scheduled >= 1 && s.number_ready == s.desired_number_scheduled
        },
    )
    .await?;
    Ok(api.get(name).await?.status.map_or(0, |s| s.number_ready))
}

/// Waits until StatefulSet `name` has `replicas` ready replicas.
pub async fn wait_statefulset_ready(
    client: &Client,
    namespace: &str,
    name: &str,
    replicas: i32,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let api: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let what = format!("StatefulSet {namespace}/{name} with {replicas} ready");
    wait_status(
        &api,
        name,
        &what,
        timeout,
        |s: &k8s_openapi::api::apps::v1::StatefulSetStatus| s.ready_replicas == Some(replicas),
    )
    .await
}

/// Waits until pod `name` has finished and returns its phase (`Succeeded` or `Failed`) and its
/// logs.
pub async fn wait_pod_finished(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<(String, String), ClusterError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let what = format!("pod {namespace}/{name} finished");
    wait_status(
        &api,
        name,
        &what,
        timeout,
        |s: &k8s_openapi::api::core::v1::PodStatus| {
            matches!(s.phase.as_deref(), Some("Succeeded" | "Failed"))
        },
    )
    .await?;
    let phase = api
        .get(name)
        .await?
        .status
        .and_then(|s| s.phase)
        .unwrap_or_default();
    let logs = api.logs(name, &LogParams::default()).await?;
    Ok((phase, logs))
}

/// Names of the Running pods matching `selector`, with the node each runs on.
pub async fn running_pods(
    client: &Client,
    namespace: &str,
    selector: &str,
) -> Result<Vec<(String, String)>, ClusterError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .map(|p| {
            (
                p.metadata.name.unwrap_or_default(),
                p.spec.and_then(|s| s.node_name).unwrap_or_default(),
            )
        })
        .collect())
}
