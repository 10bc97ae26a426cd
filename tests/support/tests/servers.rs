//! The test-support servers are real and behave: nats-server with JetStream (checked with the
//! `nats` CLI), a 3-node JetStream cluster, PostgreSQL (checked with psql), and a control plane
//! with workload controllers and kwok nodes where Deployments get Running pods and deletion
//! cascades through owner references.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use nats_cdr_testsupport::{
    NatsOptions, NatsServer, Postgres, binaries, shared_workload_cluster, wait_for,
};

fn nats_cli(url: &str, args: &[&str]) -> (bool, String) {
    let nats = binaries::find("nats").expect("the nats CLI (bash scripts/setup.sh)");
    let output = Command::new(nats)
        .args(["--server", url])
        .args(args)
        .output()
        .expect("run nats CLI");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn nats_server_runs_jetstream_and_stops_on_drop() {
    let server = NatsServer::start().expect("start nats-server");
    let (ok, out) = nats_cli(
        &server.url(),
        &["stream", "add", "T", "--subjects=t.>", "--defaults"],
    );
    assert!(ok, "stream add failed: {out}");
    let (ok, out) = nats_cli(&server.url(), &["pub", "t.1", "hello"]);
    assert!(ok, "{out}");
    let (ok, out) = nats_cli(&server.url(), &["stream", "info", "T", "-j"]);
    assert!(ok, "{out}");
    let info: serde_json::Value = serde_json::from_str(&out).expect("stream info json");
    assert_eq!(info["state"]["messages"], 1);

    let port = server.monitor_port(0).expect("monitor port");
    drop(server);
    assert!(
        nats_cdr_testsupport::nats::http_status(port, "/healthz").is_none(),
        "nats-server still answers after drop"
    );
}

#[test]
fn nats_node_restart_keeps_jetstream_data() {
    let mut server = NatsServer::start().expect("start nats-server");
    let url = server.url();
    assert!(nats_cli(&url, &["stream", "add", "K", "--subjects=k", "--defaults"]).0);
    // `--jetstream` waits for each publish's ack: only acked messages are promised to survive.
    let (ok, out) = nats_cli(&url, &["pub", "k", "x", "--count=3", "--jetstream"]);
    assert!(ok, "publish with acks: {out}");
    server.kill_node(0).expect("kill");
    assert!(
        !nats_cli(&url, &["stream", "info", "K"]).0,
        "server answered while killed"
    );
    server.restart_node(0).expect("restart");
    let (ok, out) = nats_cli(&url, &["stream", "info", "K", "-j"]);
    assert!(ok, "{out}");
    let info: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        info["state"]["messages"], 3,
        "sync_interval: always keeps acked messages across kill -9"
    );
}

#[test]
fn three_node_cluster_holds_an_r3_stream() {
    let server = NatsServer::start_with(NatsOptions {
        nodes: 3,
        ..Default::default()
    })
    .expect("cluster");
    let url = server.urls();
    let mut last = String::new();
    // The JetStream meta group elects a leader shortly after the servers are healthy.
    for _ in 0..100 {
        let (ok, out) = nats_cli(
            &url,
            &[
                "stream",
                "add",
                "R3",
                "--subjects=r3",
                "--replicas=3",
                "--defaults",
            ],
        );
        if ok {
            last.clear();
            break;
        }
        last = out;
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(last.is_empty(), "R3 stream not created: {last}");
    let (ok, out) = nats_cli(&url, &["stream", "info", "R3", "-j"]);
    assert!(ok, "{out}");
    let info: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(info["config"]["num_replicas"], 3);
    assert_eq!(
        info["cluster"]["replicas"].as_array().map(Vec::len),
        Some(2),
        "two followers: {out}"
    );
}

#[test]
fn postgres_starts_answers_and_keeps_data_across_restart() {
    let mut pg = Postgres::start().expect("start PostgreSQL");
    pg.create_database("t").expect("create database");
    pg.psql(
        "t",
        "CREATE TABLE x (id int primary key); INSERT INTO x VALUES (1), (2)",
    )
    .expect("sql");
    pg.restart().expect("restart");
    assert_eq!(pg.psql("t", "SELECT count(*) FROM x").expect("count"), "2");
    pg.stop();
    assert!(
        pg.psql("t", "SELECT 1").is_err(),
        "PostgreSQL still answers after stop"
    );
}

#[tokio::test]
async fn workload_cluster_runs_pods_and_cascades_deletes() {
    let cluster = shared_workload_cluster()
        .await
        .expect("cluster with controllers and kwok");
    let client = cluster.client().await.expect("client");
    let namespace = cluster.new_namespace("workloads").await.expect("namespace");

    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]}
            }
        }
    }))
    .expect("deployment");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create deployment");

    let daemonset: DaemonSet = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "agent", "image": "example.invalid/agent:1"}]}
            }
        }
    }))
    .expect("daemonset");
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &namespace);
    daemonsets
        .create(&PostParams::default(), &daemonset)
        .await
        .expect("create daemonset");

    wait_for(Duration::from_secs(90), "deployment available", || {
        let deployments = deployments.clone();
        async move {
            deployments
                .get("web")
                .await
                .ok()
                .and_then(|d| d.status)
                .and_then(|s| s.available_replicas)
                == Some(2)
        }
    })
    .await
    .expect("Deployment reaches 2 available replicas");

    wait_for(
        Duration::from_secs(90),
        "daemonset ready on every node",
        || {
            let daemonsets = daemonsets.clone();
            async move {
                daemonsets
                    .get("agent")
                    .await
                    .ok()
                    .and_then(|d| d.status)
                    .is_some_and(|s| {
                        s.desired_number_scheduled >= 1
                            && s.number_ready == s.desired_number_scheduled
                    })
            }
        },
    )
    .await
    .expect("DaemonSet ready");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let running = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count();
    assert_eq!(running, 2);

    deployments
        .delete("web", &DeleteParams::background())
        .await
        .expect("delete deployment");
    let replicasets: Api<ReplicaSet> = Api::namespaced(client.clone(), &namespace);
    wait_for(
        Duration::from_secs(90),
        "garbage collection of ReplicaSet and pods",
        || {
            let replicasets = replicasets.clone();
            let pods = pods.clone();
            async move {
                let rs_left = replicasets
                    .list(&ListParams::default().labels("app=web"))
                    .await
                    .map(|l| l.items.len())
                    .unwrap_or(usize::MAX);
                let pods_left = pods
                    .list(&ListParams::default().labels("app=web"))
                    .await
                    .map(|l| l.items.len())
                    .unwrap_or(usize::MAX);
                rs_left == 0 && pods_left == 0
            }
        },
    )
    .await
    .expect("owner references cascade the delete");
}
