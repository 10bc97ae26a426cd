//! NatsCluster: status from the server, missing and managed clusters, credentials from Secrets
//! (and their rotation), one unreachable cluster next to a working one, and the connection of a
//! deleted cluster.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use nats_cdr_crds::{JetStreamStream, NatsCluster};
use nats_cdr_testsupport::{NatsOptions, NatsServer, wait_for};
use serde_json::{Value, json};

use crate::support::{Env, T, condition, nats, nats_cluster, settings, start, stream};

fn ready_is(
    status: &'static str,
    reason: &'static str,
) -> impl Fn(&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition) -> bool {
    move |c| c.type_ == "Ready" && c.status == status && (reason.is_empty() || c.reason == reason)
}

/// A Secret with `username` and `password`.
fn user_secret(name: &str, password: &str) -> Secret {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "stringData": {"username": "cdr", "password": password}
    }))
    .unwrap()
}

/// NatsCluster `name` at `url` with credentials from Secret `secret`.
fn with_credentials(name: &str, url: &str, secret: &str) -> crate::support::Obj<NatsCluster> {
    nats_cluster(name, url).spec(json!({"external": {
        "url": url, "credentials": {"secretName": secret, "type": "UserPassword"}
    }}))
}

/// The ids of the connections the operator holds to node 0 of `server` (its `/connz`).
async fn operator_connections(server: &NatsServer) -> Vec<u64> {
    let port = server.monitor_port(0).unwrap();
    let response = tokio::task::spawn_blocking(move || {
        nats_cdr_testsupport::nats::http_get(port, "/connz?limit=1024")
    })
    .await
    .unwrap()
    .unwrap_or_default();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let connz: Value = serde_json::from_str(body).unwrap_or_default();
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == "nats-cdr-operator")
        .filter_map(|c| c["cid"].as_u64())
        .collect()
}

#[tokio::test]
async fn cluster_status_reports_version_and_jetstream() {
    let e = Env::with_nats("op-cluster").await;
    let op = e.start();
    let c = e
        .wait_condition::<NatsCluster>("nats", "Ready", ready_is("True", ""))
        .await;
    let status = c.status.unwrap();
    assert!(status.server_version.unwrap().starts_with("2."));
    assert_eq!(status.jetstream_enabled, Some(true));
    op.stop().await;
}

#[tokio::test]
async fn missing_and_managed_clusters_are_reported() {
    let e = Env::with_nats("op-noclust").await;
    let op = e.start();
    e.apply(
        nats_cluster("managed", "nats://unused:4222")
            .spec(json!({"managed": {"replicas": 1}}))
            .without("external"),
    )
    .await;
    e.apply(stream("orphan", "ORPHAN").cluster("nope")).await;
    e.apply(stream("onmanaged", "ONMANAGED").cluster("managed"))
        .await;

    let o = e
        .wait_reason::<JetStreamStream>("orphan", &["ClusterNotFound"])
        .await;
    assert!(condition(&o, "Ready").unwrap().2.contains("nope"));
    let o = e
        .wait_reason::<JetStreamStream>("onmanaged", &["ClusterNotReady"])
        .await;
    assert!(
        condition(&o, "Ready")
            .unwrap()
            .2
            .contains("not implemented")
    );
    e.wait_condition::<NatsCluster>(
        "managed",
        "NotImplemented",
        ready_is("False", "NotImplemented"),
    )
    .await;
    // Creating the missing cluster lets the waiting object proceed by itself.
    e.apply(nats_cluster("nope", &e.nats.url())).await;
    e.wait_reason::<JetStreamStream>("orphan", &["Created", "InSync"])
        .await;
    op.stop().await;
}

#[tokio::test]
async fn credentials_from_secret_are_used() {
    let e = Env::new("op-creds").await;
    let server = NatsServer::start_with(NatsOptions {
        extra_config: "authorization { user: cdr, password: s3cret-pw }\n".into(),
        ..NatsOptions::default()
    })
    .expect("nats-server");
    let secrets = e.api::<Secret>();
    let pp = PostParams::default();
    secrets
        .create(&pp, &user_secret("nats-creds", "s3cret-pw"))
        .await
        .unwrap();
    secrets
        .create(&pp, &user_secret("wrong", "nope"))
        .await
        .unwrap();
    for (name, secret) in [("nats", "nats-creds"), ("bad", "wrong")] {
        e.apply(with_credentials(name, &server.url(), secret)).await;
    }
    let op = e.start();
    e.apply(stream("auth", "AUTH")).await;
    e.wait_reason::<JetStreamStream>("auth", &["Created", "InSync"])
        .await;
    let args = [
        "--user=cdr",
        "--password=s3cret-pw",
        "stream",
        "info",
        "AUTH",
        "-j",
    ];
    let (ok, out) = nats(&server.url(), &args).await;
    assert!(ok, "{out}");

    let c = e
        .wait_condition::<NatsCluster>(
            "bad",
            "bad credentials reported",
            ready_is("False", "NatsUnavailable"),
        )
        .await;
    assert!(
        !condition(&c, "Ready").unwrap().2.contains("nope"),
        "no password in status"
    );
    op.stop().await;
}

#[tokio::test]
async fn a_black_hole_cluster_does_not_stall_a_working_one() {
    let e = Env::with_nats("op-hole").await;
    // Accepts TCP connections (the kernel does) and never says a word: connecting hangs.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    e.apply(nats_cluster(
        "hole",
        &format!("nats://{}", hole.local_addr().unwrap()),
    ))
    .await;
    for i in 0..8 {
        e.apply(stream(&format!("h{i}"), &format!("HOLE{i}")).cluster("hole"))
            .await;
    }
    let mut s = settings(&e.ns);
    s.nats_timeout = Duration::from_secs(5);
    s.concurrency = 4;
    let op = start(e.client.clone(), s);
    for i in 0..8 {
        e.wait_reason::<JetStreamStream>(&format!("h{i}"), &["NatsUnavailable"])
            .await;
    }
    e.wait_condition::<NatsCluster>("hole", "unreachable", ready_is("False", "NatsUnavailable"))
        .await;

    // While the hole is retried, a stream on the working cluster becomes Ready before even one
    // connection attempt to the hole could time out.
    let created = Instant::now();
    e.apply(stream("w", "WORKS")).await;
    e.wait_reason::<JetStreamStream>("w", &["Created"]).await;
    let took = created.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a stream on the working cluster took {took:?} to become Ready"
    );
    for i in 0..8 {
        let h = e.get::<JetStreamStream>(&format!("h{i}")).await.unwrap();
        assert_eq!(condition(&h, "Ready").unwrap().1, "NatsUnavailable");
    }
    op.stop().await;
    drop(hole);
}

#[tokio::test]
async fn a_reconcile_that_hangs_is_abandoned_and_retried() {
    let e = Env::new("op-hang").await;
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    e.apply(nats_cluster(
        "nats",
        &format!("nats://{}", hole.local_addr().unwrap()),
    ))
    .await;
    e.apply(stream("h", "HANG")).await;
    // The first connection attempt may take 2 x 5 s; a reconcile may take 1 s.
    let mut s = settings(&e.ns);
    s.nats_timeout = Duration::from_secs(5);
    s.reconcile_timeout = Duration::from_secs(1);
    let op = start(e.client.clone(), s);
    wait_for(T, "a reconcile abandoned after 1 s", || async {
        op.metrics
            .reconcile_error_count(nats_cdr_operator::Kind::JetStreamStream, "ReconcileTimeout")
            > 0
    })
    .await
    .unwrap();
    // Once the attempt has failed, reconciles answer at once and say why.
    e.wait_reason::<JetStreamStream>("h", &["NatsUnavailable"])
        .await;
    op.stop().await;
    drop(hole);
}

#[tokio::test]
async fn a_rotated_password_is_picked_up_and_streams_stay_ready() {
    let e = Env::new("op-rotate").await;
    let run = tempfile::tempdir().unwrap();
    let pid_file = run.path().join("nats.pid");
    let mut server = NatsServer::start_with(NatsOptions {
        extra_config: format!(
            "pid_file: \"{}\"\nauthorization {{ user: cdr, password: old-pw }}\n",
            pid_file.display()
        ),
        ..NatsOptions::default()
    })
    .expect("nats-server");
    let secrets = e.api::<Secret>();
    secrets
        .create(&PostParams::default(), &user_secret("creds", "old-pw"))
        .await
        .unwrap();
    e.apply(with_credentials("nats", &server.url(), "creds"))
        .await;
    let op = e.start();
    e.apply(stream("s", "ROTATE")).await;
    let before = e
        .wait_reason::<JetStreamStream>("s", &["Created", "InSync"])
        .await;
    let since = condition_time(&before);
    let old_connections = operator_connections(&server).await;
    assert_eq!(old_connections.len(), 1, "{old_connections:?}");

    // Rotate: the Secret first, then the server (reloaded in place: no restart).
    let patch = json!({"stringData": {"password": "new-pw"}});
    secrets
        .patch("creds", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let config = server.dir().join("n0.conf");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("old-pw", "new-pw")).unwrap();
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let reload = tokio::process::Command::new("kill")
        .args(["-HUP", pid.trim()])
        .status()
        .await
        .unwrap();
    assert!(reload.success());

    // The operator reconnects with the new password: one new connection, the old one gone.
    wait_for(T, "operator reconnected with the new password", || async {
        let now = operator_connections(&server).await;
        now.len() == 1 && now != old_connections
    })
    .await
    .unwrap();
    e.wait_condition::<NatsCluster>("nats", "Ready again", ready_is("True", "Connected"))
        .await;
    // New work goes through the new connection.
    e.apply(stream("s", "ROTATE").spec(json!({"maxAge": "1h"})))
        .await;
    e.wait_reason::<JetStreamStream>("s", &["Updated"]).await;
    e.apply(stream("t", "AFTER")).await;
    e.wait_reason::<JetStreamStream>("t", &["Created"]).await;
    let args = [
        "--user=cdr",
        "--password=new-pw",
        "stream",
        "info",
        "AFTER",
        "-j",
    ];
    let (ok, out) = nats(&server.url(), &args).await;
    assert!(ok, "{out}");
    // And the stream stayed Ready throughout: its Ready condition never transitioned.
    let after = e.get::<JetStreamStream>("s").await.unwrap();
    assert_eq!(
        condition_time(&after),
        since,
        "Ready flipped during the rotation"
    );
    op.stop().await;
    server.stop_node(0).unwrap();
}

fn condition_time(obj: &JetStreamStream) -> String {
    let c = obj.status.as_ref().unwrap();
    let ready = c
        .common
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.status, "True");
    format!("{:?}", ready.last_transition_time)
}

#[tokio::test]
async fn a_deleted_cluster_has_its_connection_closed() {
    let e = Env::with_nats("op-closed").await;
    let op = e.start();
    e.wait_condition::<NatsCluster>("nats", "Ready", ready_is("True", ""))
        .await;
    let key = format!("{}/nats", e.ns);
    assert_eq!(op.metrics.nats_connected_value(&key), Some(1));
    assert_eq!(operator_connections(&e.nats).await.len(), 1);

    e.delete::<NatsCluster>("nats").await;
    wait_for(T, "connection closed on the server", || async {
        operator_connections(&e.nats).await.is_empty()
    })
    .await
    .unwrap();
    wait_for(T, "gauge gone", || async {
        op.metrics.nats_connected_value(&key).is_none()
    })
    .await
    .unwrap();
    op.stop().await;
}
