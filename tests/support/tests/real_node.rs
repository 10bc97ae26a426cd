//! The real node is a real node: pods run in containerd on a kubelet joined to the local control
//! plane, from images imported without a registry; a Deployment serves through a Service reached
//! by its DNS name; a DaemonSet runs on every node; a StatefulSet's volume keeps its data when the
//! pod is deleted and recreated; logs come back through the apiserver from the kubelet.
//!
//! Runs against the local cluster with one real node, or the cluster named by `KUBECONFIG` (the
//! images of scripts/images.sh loaded into it: scripts/kind-e2e.sh does).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams};
use nats_cdr_testsupport::images::BUSYBOX;
use nats_cdr_testsupport::k8s::{
    running_pods, wait_daemonset_ready, wait_deployment_available, wait_pod_finished,
    wait_statefulset_ready,
};
use nats_cdr_testsupport::{apply_yaml, shared_node_cluster, wait_for};

const TIMEOUT: Duration = Duration::from_secs(120);

async fn namespace(prefix: &str) -> (kube::Client, String) {
    let cluster = shared_node_cluster()
        .await
        .expect("start or reach a cluster with real nodes");
    let client = cluster.client().await.expect("client");
    let namespace = cluster.new_namespace(prefix).await.expect("namespace");
    (client, namespace)
}

/// A pod that runs `script` in the probe image and exits.
fn probe_pod(name: &str, script: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: probe
    image: {BUSYBOX}
    imagePullPolicy: IfNotPresent
    command: ["/bin/busybox", "sh", "-c", {script:?}]
"#
    )
}

#[tokio::test]
async fn a_deployment_serves_through_a_service_reached_by_its_dns_name() {
    let (client, ns) = namespace("node-web").await;
    let web = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {BUSYBOX}
        imagePullPolicy: IfNotPresent
        command: ["/bin/busybox", "sh", "-c",
                  "echo served-by-$HOSTNAME > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www"]
        ports: [{{containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
        volumeMounts: [{{name: www, mountPath: /www}}]
      volumes: [{{name: www, emptyDir: {{}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    );
    apply_yaml(&client, &web, &ns).await.expect("apply web");
    wait_deployment_available(&client, &ns, "web", 2, TIMEOUT)
        .await
        .expect("2 web pods available");
    let running = running_pods(&client, &ns, "app=web").await.unwrap();
    assert_eq!(running.len(), 2, "{running:?}");

    // Through CoreDNS (the Service's name) and kube-proxy (its ClusterIP) to a pod.
    let url = format!("http://web.{ns}.svc.cluster.local/");
    let script = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do /bin/busybox timeout 5 /bin/busybox wget -q -O - {url} && exit 0; /bin/busybox sleep 1; done; exit 1"
    );
    apply_yaml(&client, &probe_pod("client", &script), &ns)
        .await
        .expect("client pod");
    let (phase, logs) = wait_pod_finished(&client, &ns, "client", TIMEOUT)
        .await
        .expect("client pod finishes");
    assert_eq!(phase, "Succeeded", "wget {url} failed; logs:\n{logs}");
    let served_by = logs.trim().trim_start_matches("served-by-");
    assert!(
        running.iter().any(|(pod, _)| pod == served_by),
        "answer {logs:?} names none of the web pods {running:?}"
    );
}

#[tokio::test]
async fn a_daemonset_runs_a_pod_on_every_node() {
    let (client, ns) = namespace("node-ds").await;
    let agent = format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: agent
        image: {BUSYBOX}
        imagePullPolicy: IfNotPresent
        command: ["/bin/busybox", "sleep", "3600"]
"#
    );
    apply_yaml(&client, &agent, &ns).await.expect("apply");
    let ready = wait_daemonset_ready(&client, &ns, "agent", TIMEOUT)
        .await
        .expect("DaemonSet ready");
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let schedulable = nodes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|n| {
            !n.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
        })
        .count();
    assert_eq!(ready as usize, schedulable, "one agent per node");
    let pods = running_pods(&client, &ns, "app=agent").await.unwrap();
    let mut on_nodes: Vec<_> = pods.iter().map(|(_, node)| node.clone()).collect();
    on_nodes.dedup();
    assert_eq!(
        on_nodes.len(),
        pods.len(),
        "two agents on one node: {pods:?}"
    );
}

#[tokio::test]
async fn a_statefulset_volume_keeps_its_data_across_pod_recreation() {
    let (client, ns) = namespace("node-sts").await;
    // The pod appends a line at every start and keeps the file's content in its log.
    let sts = format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: store}}
spec:
  clusterIP: None
  selector: {{app: store}}
  ports: [{{port: 80}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: store}}
spec:
  serviceName: store
  replicas: 1
  selector: {{matchLabels: {{app: store}}}}
  template:
    metadata: {{labels: {{app: store}}}}
    spec:
      terminationGracePeriodSeconds: 1
      securityContext: {{runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532}}
      containers:
      - name: store
        image: {BUSYBOX}
        imagePullPolicy: IfNotPresent
        command: ["/bin/busybox", "sh", "-c",
                  "echo start-$(/bin/busybox date +%s%N) >> /data/starts && /bin/busybox cat /data/starts && exec /bin/busybox sleep 3600"]
        readinessProbe: {{exec: {{command: ["/bin/busybox", "test", "-s", "/data/starts"]}}, periodSeconds: 1}}
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 1Gi}}}}
"#
    );
    apply_yaml(&client, &sts, &ns).await.expect("apply");
    wait_statefulset_ready(&client, &ns, "store", 1, TIMEOUT)
        .await
        .expect("store-0 ready");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let first_uid = pods.get("store-0").await.unwrap().metadata.uid.unwrap();
    pods.delete("store-0", &DeleteParams::default())
        .await
        .expect("delete store-0");
    wait_for(TIMEOUT, "store-0 recreated and ready", || {
        let pods = pods.clone();
        let first_uid = first_uid.clone();
        async move {
            pods.get_opt("store-0")
                .await
                .ok()
                .flatten()
                .filter(|p| p.metadata.uid.as_deref() != Some(first_uid.as_str()))
                .and_then(|p| p.status)
                .and_then(|s| s.conditions)
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        }
    })
    .await
    .expect("a new store-0 is ready");
    let logs = pods
        .logs("store-0", &Default::default())
        .await
        .expect("logs of the new pod");
    let starts: Vec<_> = logs.lines().filter(|l| l.starts_with("start-")).collect();
    assert_eq!(
        starts.len(),
        2,
        "the second pod must see the first pod's line in the volume; it saw:\n{logs}"
    );
}
