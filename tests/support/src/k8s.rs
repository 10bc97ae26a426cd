//! Waiting on workloads in tests: Deployments available, DaemonSets ready, pods finished (with
//! their logs, read through the apiserver from the kubelet as `kubectl logs` does).

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, ListParams, LogParams};

use crate::kube_cluster::{ClusterError, wait_for};

/// Waits until Deployment `name` has `replicas` updated, available replicas.
pub async fn wait_deployment_available(
    client: &Client,
    namespace: &str,
    name: &str,
    replicas: i32,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    wait_for(
        timeout,
        &format!("Deployment {namespace}/{name} with {replicas} available"),
        || {
            let api = api.clone();
            async move {
                api.get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|d| d.status)
                    .is_some_and(|s| {
                        s.available_replicas == Some(replicas)
                            && s.updated_replicas == Some(replicas)
                            && s.replicas == Some(replicas)
                    })
            }
        },
    )
    .await
}

/// Waits until DaemonSet `name` is scheduled on at least one node and ready on every one.
pub async fn wait_daemonset_ready(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<i32, ClusterError> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    wait_for(
        timeout,
        &format!("DaemonSet {namespace}/{name} ready"),
        || {
            let api = api.clone();
            async move {
                api.get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|d| d.status)
                    .is_some_and(|s| {
                        s.desired_number_scheduled >= 1
                            && s.number_ready == s.desired_number_scheduled
                    })
            }
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
    wait_for(
        timeout,
        &format!("StatefulSet {namespace}/{name} with {replicas} ready"),
        || {
            let api = api.clone();
            async move {
                api.get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|d| d.status)
                    .is_some_and(|s| s.ready_replicas == Some(replicas))
            }
        },
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
    wait_for(timeout, &format!("pod {namespace}/{name} finished"), || {
        let api = api.clone();
        async move {
            api.get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|p| p.status)
                .and_then(|s| s.phase)
                .is_some_and(|phase| phase == "Succeeded" || phase == "Failed")
        }
    })
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
