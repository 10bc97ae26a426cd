//! JetStreamConsumer against a real nats-server: waiting for its stream, steady state, updates in
//! place, drift, a change NATS refuses, deletion, adoption.

use std::time::Duration;

use kube::ResourceExt;
use nats_cdr_crds::{JetStreamConsumer, JetStreamStream};
use nats_cdr_operator::Kind as K;
use nats_cdr_testsupport::wait_for;
use serde_json::json;

use crate::support::{Env, T, condition, consumer, nats, server_consumer, stream, wait_server};

#[tokio::test]
async fn consumer_waits_for_its_stream_then_syncs_and_deletes() {
    let e = Env::with_nats("op-consumer").await;
    let url = e.nats.url();
    let op = e.start();
    let worker = |extra: serde_json::Value| {
        consumer("worker", "LATE", "cdr-worker")
            .spec(json!({"ackWait": "30s", "maxDeliver": 5, "maxAckPending": 100, "filterSubject": "late.raw"}))
            .spec(extra)
    };
    e.apply(worker(json!({}))).await;
    let o = e
        .wait_reason::<JetStreamConsumer>("worker", &["StreamNotFound"])
        .await;
    assert!(condition(&o, "Ready").unwrap().2.contains("LATE"));

    e.apply(stream("late", "LATE")).await;
    e.wait_reason::<JetStreamConsumer>("worker", &["Created", "InSync"])
        .await;
    let info = server_consumer(&url, "LATE", "cdr-worker")
        .await
        .expect("consumer on the server");
    assert_eq!(info["config"]["max_deliver"], 5);
    assert_eq!(info["config"]["ack_wait"].as_u64(), Some(30_000_000_000));
    assert_eq!(info["config"]["max_ack_pending"], 100);
    assert_eq!(info["config"]["ack_policy"], "explicit");

    // Steady state: no writes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rv = e
        .get::<JetStreamConsumer>("worker")
        .await
        .unwrap()
        .resource_version();
    let writes = op.metrics.nats_write_count();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(op.metrics.nats_write_count(), writes);
    assert_eq!(
        e.get::<JetStreamConsumer>("worker")
            .await
            .unwrap()
            .resource_version(),
        rv
    );

    // A mutable field is updated in place.
    e.apply(worker(json!({"maxDeliver": 7}))).await;
    wait_server(
        "maxDeliver 7",
        |v| v.is_some_and(|v| v["config"]["max_deliver"] == 7),
        || server_consumer(&url, "LATE", "cdr-worker"),
    )
    .await;
    // Drift on a consumer: an edit behind the operator's back is reverted.
    let (ok, out) = nats(
        &url,
        &[
            "consumer",
            "edit",
            "LATE",
            "cdr-worker",
            "--max-deliver=2",
            "-f",
        ],
    )
    .await;
    assert!(ok, "{out}");
    wait_server(
        "consumer drift reverted",
        |v| v.is_some_and(|v| v["config"]["max_deliver"] == 7),
        || server_consumer(&url, "LATE", "cdr-worker"),
    )
    .await;
    wait_for(T, "consumer drift counted", || async {
        op.metrics.drift_repair_count(K::JetStreamConsumer) >= 1
    })
    .await
    .unwrap();
    // maxWaiting cannot change on the server (CEL does not know): ImmutableField.
    e.apply(worker(json!({"maxDeliver": 7, "maxWaiting": 10})))
        .await;
    let o = e
        .wait_reason::<JetStreamConsumer>("worker", &["ImmutableField"])
        .await;
    assert!(
        condition(&o, "Ready")
            .unwrap()
            .2
            .contains("spec.maxWaiting")
    );

    // Default deletion policy of consumers: Delete.
    e.delete::<JetStreamConsumer>("worker").await;
    wait_server(
        "consumer deleted",
        |v| v.is_none(),
        || server_consumer(&url, "LATE", "cdr-worker"),
    )
    .await;
    op.stop().await;
}

#[tokio::test]
async fn existing_consumer_is_adopted_only_when_asked() {
    let e = Env::with_nats("op-cadopt").await;
    let url = e.nats.url();
    let op = e.start();
    e.apply(stream("s", "CSTREAM")).await;
    e.wait_reason::<JetStreamStream>("s", &["Created", "InSync"])
        .await;
    let (ok, out) = nats(
        &url,
        &[
            "consumer",
            "add",
            "CSTREAM",
            "legacy",
            "--pull",
            "--defaults",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let c = |extra| consumer("c", "CSTREAM", "legacy").spec(extra);
    e.apply(c(json!({"maxDeliver": 9}))).await;
    e.wait_reason::<JetStreamConsumer>("c", &["AlreadyExists"])
        .await;
    assert_ne!(
        server_consumer(&url, "CSTREAM", "legacy").await.unwrap()["config"]["max_deliver"],
        9,
        "untouched"
    );
    e.apply(c(json!({"maxDeliver": 9, "adoptExisting": true})))
        .await;
    e.wait_reason::<JetStreamConsumer>("c", &["Adopted", "InSync"])
        .await;
    let info = server_consumer(&url, "CSTREAM", "legacy").await.unwrap();
    assert_eq!(info["config"]["max_deliver"], 9);
    assert!(
        info["config"]["metadata"]["nats-cdr.dev/owner"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/c/", e.ns))
    );
    op.stop().await;
}
