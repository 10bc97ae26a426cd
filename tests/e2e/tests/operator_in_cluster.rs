//! The operator as a user runs it: installed by the Helm chart from the image built by
//! scripts/images.sh, in pods on a real node, as the chart's ServiceAccount (in-cluster config,
//! projected token), two replicas with leader election; it makes a stream Ready on a nats-server
//! that also runs as a pod, and the stream is really on that server.
//!
//! Runs against the local cluster with a real node, or the cluster named by `KUBECONFIG` (kind,
//! with the images loaded: scripts/kind-e2e.sh).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;
use nats_cdr_testsupport::k8s::{running_pods, wait_deployment_available};
use nats_cdr_testsupport::tools::{self, PortForward};
use nats_cdr_testsupport::{
    apply_yaml, images, in_cluster, repo_root, shared_node_cluster, wait_for,
};

const TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn the_chart_installed_operator_makes_a_stream_ready_on_a_nats_server_pod() {
    let cluster = shared_node_cluster()
        .await
        .expect("start or reach a cluster with real nodes");
    let kubeconfig = cluster.kubeconfig_path();
    let client = cluster.client().await.unwrap();
    let ns = cluster.new_namespace("op-pod").await.unwrap();

    let nats_image = images::reference("nats-server").expect("nats-server image");
    apply_yaml(&client, &in_cluster::nats_server("nats", &nats_image), &ns)
        .await
        .expect("nats-server pod");

    // The chart's defaults name the image scripts/images.sh built (ghcr.io/nats-cdr/...:<version>).
    let chart = repo_root().join("charts/nats-cdr");
    tools::run(
        "helm",
        kubeconfig,
        &[
            "install",
            "nc",
            &chart.display().to_string(),
            "-n",
            &ns,
            "--set",
            &format!("watchNamespaces={{{ns}}}"),
            "--set",
            "logFormat=text",
            "--set",
            "resyncPeriod=10s",
            "--wait",
            "--timeout",
            "3m",
        ],
    )
    .expect("helm install");
    wait_deployment_available(&client, &ns, "nc-operator", 2, TIMEOUT)
        .await
        .expect("two operator replicas available");
    wait_deployment_available(&client, &ns, "nats", 1, TIMEOUT)
        .await
        .expect("nats-server pod available");

    let operator_image = images::reference("nats-cdr-operator").unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let operator_pods = pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=nats-cdr-operator"))
        .await
        .unwrap()
        .items;
    assert_eq!(operator_pods.len(), 2, "two operator pods");
    for pod in &operator_pods {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("nc-operator"));
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some(operator_image.as_str())
        );
        assert!(spec.node_name.is_some(), "scheduled on a node");
    }
    // One of them leads (the Lease names a running pod).
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let running: Vec<String> =
        running_pods(&client, &ns, "app.kubernetes.io/name=nats-cdr-operator")
            .await
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
    wait_for(TIMEOUT, "a running operator pod holds the Lease", || {
        let leases = leases.clone();
        let running = running.clone();
        async move {
            leases
                .get_opt("nc-operator")
                .await
                .ok()
                .flatten()
                .and_then(|l| l.spec)
                .and_then(|s| s.holder_identity)
                .is_some_and(|holder| running.contains(&holder))
        }
    })
    .await
    .expect("leader elected");

    let objects = format!(
        r#"apiVersion: nats-cdr.dev/v1alpha1
kind: NatsCluster
metadata: {{name: pod-nats}}
spec:
  external: {{url: "nats://nats.{ns}.svc.cluster.local:4222"}}
---
apiVersion: nats-cdr.dev/v1alpha1
kind: JetStreamStream
metadata: {{name: in-cluster}}
spec:
  clusterRef: {{name: pod-nats}}
  name: IN_CLUSTER
  subjects: ["incluster.>"]
  maxAge: 1h
"#
    );
    apply_yaml(&client, &objects, &ns).await.expect("objects");
    let streams: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::erase::<nats_cdr_crds::JetStreamStream>(&()),
    );
    let ready = wait_for(TIMEOUT, "JetStreamStream Ready", || {
        let streams = streams.clone();
        async move {
            streams.get("in-cluster").await.ok().is_some_and(|s| {
                s.data["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            })
        }
    })
    .await;
    if ready.is_err() {
        let mut logs = String::new();
        for pod in &running {
            logs.push_str(
                &pods
                    .logs(pod, &Default::default())
                    .await
                    .unwrap_or_else(|e| e.to_string()),
            );
        }
        let stream = streams
            .get("in-cluster")
            .await
            .map(|s| s.data["status"].clone());
        panic!("stream not Ready: {stream:?}\noperator logs:\n{logs}");
    }

    // Independently of the operator: the stream is on the server, as the spec says.
    let forward = PortForward::start(kubeconfig, &ns, "svc/nats", 4222).expect("port-forward");
    let info = tools::nats(
        &format!("nats://127.0.0.1:{}", forward.port()),
        &["stream", "info", "IN_CLUSTER", "-j"],
    )
    .expect("stream info");
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["config"]["subjects"][0], "incluster.>");
    assert_eq!(info["config"]["max_age"], 3_600_000_000_000u64);
}
