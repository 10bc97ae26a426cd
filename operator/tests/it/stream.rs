//! JetStreamStream against a real nats-server: create, update in place, steady state without
//! writes, drift, immutable changes, adoption, conflicts, outages, deletion policies, pause,
//! replicas. The server side is checked with the `nats` CLI, never through the operator's code.

use std::time::Duration;

use kube::ResourceExt;
use nats_cdr_crds::{JetStreamStream, NatsCluster};
use nats_cdr_operator::Kind as K;
use nats_cdr_testsupport::wait_for;
use serde_json::json;

use crate::support::{
    Env, HOUR, T, condition, consumer, nats, server_consumer, server_stream, stream, wait_server,
};

#[tokio::test]
async fn create_update_steady_state_and_delete() {
    let e = Env::with_nats("op-crud").await;
    let url = e.nats.url();
    let op = e.start();
    let cdr = |max_age: &str| {
        stream("cdr", "AKIRA_CDR").spec(json!({"maxAge": max_age, "duplicateWindow": "2m", "maxBytes": "10MiB", "deletionPolicy": "Delete"}))
    };
    e.apply(cdr("1h")).await;
    e.wait_reason::<JetStreamStream>("cdr", &["Created", "InSync"])
        .await;
    let info = server_stream(&url, "AKIRA_CDR")
        .await
        .expect("stream on the server");
    assert_eq!(info["config"]["max_age"].as_u64(), Some(HOUR));
    assert_eq!(info["config"]["max_bytes"].as_u64(), Some(10 * 1024 * 1024));
    assert_eq!(
        info["config"]["duplicate_window"].as_u64(),
        Some(120_000_000_000)
    );
    assert_eq!(info["config"]["storage"], "file");

    // Steady state: several resyncs (2 s each) write nothing to NATS nor to the apiserver.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = e.get::<JetStreamStream>("cdr").await.unwrap();
    let writes = op.metrics.nats_write_count();
    let api_writes = op.metrics.apiserver_write_count();
    let reconciles = op.metrics.reconcile_count(K::JetStreamStream);
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = e.get::<JetStreamStream>("cdr").await.unwrap();
    assert!(
        op.metrics.reconcile_count(K::JetStreamStream) >= reconciles + 2,
        "resyncs ran"
    );
    assert_eq!(
        before.resource_version(),
        after.resource_version(),
        "no status write in steady state"
    );
    assert_eq!(
        op.metrics.nats_write_count(),
        writes,
        "no NATS write in steady state"
    );
    assert_eq!(op.metrics.apiserver_write_count(), api_writes);
    let info2 = server_stream(&url, "AKIRA_CDR").await.unwrap();
    assert_eq!(info["created"], info2["created"]);
    assert_eq!(info["config"], info2["config"]);

    // Update: maxAge 1h -> 2h is applied in place.
    e.apply(cdr("2h")).await;
    wait_server(
        "maxAge 2h",
        |v| v.is_some_and(|v| v["config"]["max_age"].as_u64() == Some(2 * HOUR)),
        || server_stream(&url, "AKIRA_CDR"),
    )
    .await;
    let o = e.wait_reason::<JetStreamStream>("cdr", &["Updated"]).await;
    assert_eq!(
        o.status.unwrap().common.observed_generation,
        o.metadata.generation
    );
    assert_eq!(
        server_stream(&url, "AKIRA_CDR").await.unwrap()["created"],
        info["created"],
        "updated in place, not recreated"
    );

    // Delete with deletionPolicy Delete removes the stream.
    e.delete::<JetStreamStream>("cdr").await;
    wait_server(
        "stream deleted",
        |v| v.is_none(),
        || server_stream(&url, "AKIRA_CDR"),
    )
    .await;
    e.wait_gone::<JetStreamStream>("cdr").await;
    op.stop().await;
}

#[tokio::test]
async fn drift_is_reverted_and_counted() {
    let e = Env::with_nats("op-drift").await;
    let url = e.nats.url();
    let op = e.start();
    e.apply(stream("d", "DRIFT").spec(json!({"maxAge": "1h"})))
        .await;
    e.wait_reason::<JetStreamStream>("d", &["Created", "InSync"])
        .await;

    let (ok, out) = nats(&url, &["stream", "edit", "DRIFT", "--max-age=5h", "-f"]).await;
    assert!(ok, "{out}");
    wait_server(
        "edit reverted",
        |v| v.is_some_and(|v| v["config"]["max_age"].as_u64() == Some(HOUR)),
        || server_stream(&url, "DRIFT"),
    )
    .await;
    e.wait_reason::<JetStreamStream>("d", &["DriftRepaired"])
        .await;
    assert!(op.metrics.drift_repair_count(K::JetStreamStream) >= 1);

    let (ok, out) = nats(&url, &["stream", "rm", "DRIFT", "-f"]).await;
    assert!(ok, "{out}");
    let repairs = op.metrics.drift_repair_count(K::JetStreamStream);
    wait_server(
        "stream recreated",
        |v| v.is_some_and(|v| v["config"]["max_age"].as_u64() == Some(HOUR)),
        || server_stream(&url, "DRIFT"),
    )
    .await;
    wait_for(T, "second repair counted", || async {
        op.metrics.drift_repair_count(K::JetStreamStream) > repairs
    })
    .await
    .unwrap();
    op.stop().await;
}

#[tokio::test]
async fn immutable_change_is_refused_not_recreated() {
    let e = Env::with_nats("op-immutable").await;
    let url = e.nats.url();
    let op = e.start();
    let w = || stream("w", "IMMUT");
    e.apply(w()).await;
    e.wait_reason::<JetStreamStream>("w", &["Created", "InSync"])
        .await;
    let created = server_stream(&url, "IMMUT").await.unwrap()["created"].clone();

    e.apply(w().spec(json!({"retention": "WorkQueue"}))).await;
    let o = e
        .wait_reason::<JetStreamStream>("w", &["ImmutableField"])
        .await;
    let (status, _, message) = condition(&o, "Ready").unwrap();
    assert_eq!(status, "False");
    assert!(message.contains("spec.retention"), "{message}");
    let info = server_stream(&url, "IMMUT").await.unwrap();
    assert_eq!(info["config"]["retention"], "limits");
    assert_eq!(info["created"], created, "never deleted and recreated");

    // A refusal only the server knows about (CEL cannot): deny deletes cannot be cancelled.
    e.apply(w().spec(json!({"denyDelete": true}))).await;
    wait_server(
        "denyDelete on",
        |v| v.is_some_and(|v| v["config"]["deny_delete"] == true),
        || server_stream(&url, "IMMUT"),
    )
    .await;
    e.apply(w().spec(json!({"denyDelete": false}))).await;
    let o = e
        .wait_reason::<JetStreamStream>("w", &["ImmutableField"])
        .await;
    let message = condition(&o, "Ready").unwrap().2;
    assert!(
        message.contains("spec.denyDelete") && message.contains("can not cancel"),
        "{message}"
    );
    let info = server_stream(&url, "IMMUT").await.unwrap();
    assert_eq!(info["config"]["deny_delete"], true);
    assert_eq!(info["created"], created, "never deleted and recreated");

    // Reverting the field makes it Ready again.
    e.apply(w().spec(json!({"denyDelete": true}))).await;
    e.wait_reason::<JetStreamStream>("w", &["InSync", "Updated"])
        .await;
    op.stop().await;
}

#[tokio::test]
async fn retain_policy_keeps_the_stream() {
    let e = Env::with_nats("op-retain").await;
    let url = e.nats.url();
    let op = e.start();
    e.apply(stream("r", "KEEP").spec(json!({"deletionPolicy": "Retain"})))
        .await;
    e.wait_reason::<JetStreamStream>("r", &["Created", "InSync"])
        .await;
    e.delete::<JetStreamStream>("r").await;
    e.wait_gone::<JetStreamStream>("r").await;
    assert!(
        server_stream(&url, "KEEP").await.is_some(),
        "Retain leaves the stream"
    );
    op.stop().await;
}

#[tokio::test]
async fn existing_stream_is_adopted_only_when_asked() {
    let e = Env::with_nats("op-adopt").await;
    let url = e.nats.url();
    let (ok, out) = nats(
        &url,
        &[
            "stream",
            "add",
            "LEGACY",
            "--subjects=legacy.>",
            "--defaults",
        ],
    )
    .await;
    assert!(ok, "{out}");
    let op = e.start();
    e.apply(stream("l", "LEGACY").spec(json!({"maxAge": "3h"})))
        .await;
    let o = e
        .wait_reason::<JetStreamStream>("l", &["AlreadyExists"])
        .await;
    assert!(condition(&o, "Ready").unwrap().2.contains("adoptExisting"));
    assert_eq!(
        server_stream(&url, "LEGACY").await.unwrap()["config"]["max_age"].as_u64(),
        Some(0),
        "untouched"
    );

    e.apply(stream("l", "LEGACY").spec(json!({"maxAge": "3h", "adoptExisting": true})))
        .await;
    e.wait_reason::<JetStreamStream>("l", &["Adopted", "InSync"])
        .await;
    let info = server_stream(&url, "LEGACY").await.unwrap();
    assert_eq!(info["config"]["max_age"].as_u64(), Some(3 * HOUR));
    let owner = info["config"]["metadata"]["nats-cdr.dev/owner"]
        .as_str()
        .unwrap();
    assert!(owner.starts_with(&format!("{}/l/", e.ns)), "{owner}");
    op.stop().await;
}

#[tokio::test]
async fn second_object_for_the_same_stream_is_a_conflict() {
    let e = Env::with_nats("op-conflict").await;
    let op = e.start();
    e.apply(stream("first", "SHARED")).await;
    e.wait_reason::<JetStreamStream>("first", &["Created", "InSync"])
        .await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has 1 s resolution
    e.apply(stream("second", "SHARED").spec(json!({"maxAge": "1h"})))
        .await;
    let o = e
        .wait_reason::<JetStreamStream>("second", &["Conflict"])
        .await;
    assert!(
        condition(&o, "Ready")
            .unwrap()
            .2
            .contains(&format!("{}/first", e.ns))
    );
    // No flip-flopping: the owner stays in sync, the server keeps the owner's config.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let first = e.get::<JetStreamStream>("first").await.unwrap();
    assert_eq!(condition(&first, "Ready").unwrap().0, "True");
    assert_eq!(
        server_stream(&e.nats.url(), "SHARED").await.unwrap()["config"]["max_age"].as_u64(),
        Some(0)
    );
    op.stop().await;
}

#[tokio::test]
async fn nats_outage_is_reported_and_recovered() {
    let mut e = Env::with_nats("op-outage").await;
    let url = e.nats.url();
    let op = e.start();
    let o = |max_age: &str| stream("o", "OUTAGE").spec(json!({"maxAge": max_age}));
    e.apply(o("1h")).await;
    e.wait_reason::<JetStreamStream>("o", &["Created", "InSync"])
        .await;

    e.nats.stop_node(0).unwrap();
    e.apply(o("4h")).await;
    let down = e
        .wait_reason::<JetStreamStream>("o", &["NatsUnavailable"])
        .await;
    assert_eq!(condition(&down, "Ready").unwrap().0, "False");
    let ready = |want: &'static str| {
        move |c: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition| {
            c.type_ == "Ready" && c.status == want
        }
    };
    e.wait_condition::<NatsCluster>("nats", "not Ready", ready("False"))
        .await;

    e.nats.restart_node(0).unwrap();
    wait_server(
        "update applied after recovery",
        |v| v.is_some_and(|v| v["config"]["max_age"].as_u64() == Some(4 * HOUR)),
        || server_stream(&url, "OUTAGE"),
    )
    .await;
    e.wait_reason::<JetStreamStream>("o", &["Updated", "InSync"])
        .await;
    e.wait_condition::<NatsCluster>("nats", "Ready again", ready("True"))
        .await;
    op.stop().await;
}

#[tokio::test]
async fn delete_while_nats_is_down_waits_then_force_delete() {
    let mut e = Env::with_nats("op-deldown").await;
    let op = e.start();
    e.apply(stream("del", "DEL").spec(json!({"deletionPolicy": "Delete"})))
        .await;
    e.apply(stream("ret", "RET").spec(json!({"deletionPolicy": "Retain"})))
        .await;
    e.wait_reason::<JetStreamStream>("del", &["Created", "InSync"])
        .await;
    e.wait_reason::<JetStreamStream>("ret", &["Created", "InSync"])
        .await;
    e.nats.stop_node(0).unwrap();
    e.delete::<JetStreamStream>("ret").await;
    e.delete::<JetStreamStream>("del").await;
    // Retain: the finalizer goes at once, without NATS.
    e.wait_gone::<JetStreamStream>("ret").await;
    // Delete: it waits, saying why and what to do.
    let o = e
        .wait_reason::<JetStreamStream>("del", &["NatsUnavailable"])
        .await;
    assert!(condition(&o, "Ready").unwrap().2.contains("force-delete"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        e.get::<JetStreamStream>("del").await.is_some(),
        "kept while NATS is down"
    );
    e.annotate::<JetStreamStream>("del", "nats-cdr.dev/force-delete", "true")
        .await;
    e.wait_gone::<JetStreamStream>("del").await;
    op.stop().await;
}

#[tokio::test]
async fn paused_object_is_left_alone() {
    let e = Env::with_nats("op-pause").await;
    let url = e.nats.url();
    let op = e.start();
    e.apply(stream("p", "PAUSE").spec(json!({"maxAge": "1h", "deletionPolicy": "Delete"})))
        .await;
    e.wait_reason::<JetStreamStream>("p", &["Created", "InSync"])
        .await;
    e.annotate::<JetStreamStream>("p", "nats-cdr.dev/reconcile", "paused")
        .await;
    e.wait_reason::<JetStreamStream>("p", &["Paused"]).await;
    let (ok, out) = nats(&url, &["stream", "edit", "PAUSE", "--max-age=5h", "-f"]).await;
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        server_stream(&url, "PAUSE").await.unwrap()["config"]["max_age"].as_u64(),
        Some(5 * HOUR),
        "no write while paused"
    );
    e.delete::<JetStreamStream>("p").await;
    e.wait_gone::<JetStreamStream>("p").await;
    assert!(
        server_stream(&url, "PAUSE").await.is_some(),
        "paused: no deletion on the server"
    );
    op.stop().await;
}

#[tokio::test]
async fn every_field_round_trips_without_perpetual_updates() {
    let e = Env::with_nats("op-fields").await;
    let url = e.nats.url();
    let op = e.start();
    e.apply(stream("origin", "ORIGIN")).await;
    e.apply(stream("full", "FULL").spec(json!({
        "description": "every field", "retention": "Limits", "storage": "File", "replicas": 1,
        "maxAge": "7d", "maxBytes": "1GiB", "maxMsgs": 1000000, "maxMsgSize": "1MiB",
        "maxMsgsPerSubject": 100, "maxConsumers": 10, "discard": "New",
        "discardNewPerSubject": true, "duplicateWindow": "2m", "denyDelete": true,
        "denyPurge": false, "allowRollup": true, "allowDirect": true, "compression": "S2",
        "metadata": {"team": "voice"},
        "sources": [{"name": "ORIGIN", "filterSubject": "origin.a"}]
    })))
    .await;
    e.apply(
        stream("mirror", "MIRROR")
            .spec(json!({"mirror": {"name": "ORIGIN", "optStartSeq": 1}}))
            .without("subjects"),
    )
    .await;
    e.apply(consumer("full-c", "FULL", "every").spec(json!({
        "description": "every field", "deliverPolicy": "ByStartSequence", "optStartSeq": 1,
        "ackPolicy": "Explicit", "ackWait": "45s", "maxDeliver": 5, "backoff": ["1s", "10s"],
        "filterSubjects": ["full.a", "full.b"], "replayPolicy": "Instant", "maxAckPending": 50,
        "maxWaiting": 64, "maxBatch": 100, "maxExpires": "30s", "inactiveThreshold": "24h",
        "headersOnly": false, "replicas": 1, "sampleFrequency": "50%",
        "metadata": {"team": "voice"}
    })))
    .await;
    for name in ["origin", "full", "mirror"] {
        e.wait_reason::<JetStreamStream>(name, &["Created", "InSync"])
            .await;
    }
    e.wait_reason::<nats_cdr_crds::JetStreamConsumer>("full-c", &["Created", "InSync"])
        .await;
    let full = server_stream(&url, "FULL").await.unwrap();
    assert_eq!(full["config"]["compression"], "s2");
    assert_eq!(full["config"]["sources"][0]["name"], "ORIGIN");
    assert_eq!(full["config"]["discard_new_per_subject"], true);
    assert_eq!(
        server_stream(&url, "MIRROR").await.unwrap()["config"]["mirror"]["name"],
        "ORIGIN"
    );
    let c = server_consumer(&url, "FULL", "every").await.unwrap();
    assert_eq!(c["config"]["backoff"].as_array().unwrap().len(), 2);
    assert_eq!(c["config"]["max_waiting"], 64);

    // Several resyncs: the normalized comparison finds nothing to change on any of them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = op.metrics.nats_write_count();
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(
        op.metrics.nats_write_count(),
        writes,
        "no perpetual updates"
    );
    op.stop().await;
}

#[tokio::test]
async fn replica_change_is_tracked_until_peers_are_current() {
    let e = Env::with_nats_nodes("op-replicas", 3).await;
    let url = e.nats.url();
    let op = e.start();
    e.apply(stream("r", "REPL").spec(json!({"replicas": 1})))
        .await;
    let o = e
        .wait_reason::<JetStreamStream>("r", &["Created", "InSync"])
        .await;
    assert_eq!(o.status.unwrap().current_replicas, Some(1));
    e.apply(stream("r", "REPL").spec(json!({"replicas": 3})))
        .await;
    wait_server(
        "3 replicas",
        |v| v.is_some_and(|v| v["config"]["num_replicas"] == 3),
        || server_stream(&url, "REPL"),
    )
    .await;
    wait_for(T, "currentReplicas 3 and Synced", || async {
        let o = e.get::<JetStreamStream>("r").await.unwrap();
        o.status.as_ref().and_then(|s| s.current_replicas) == Some(3)
            && condition(&o, "Synced").is_some_and(|(s, _, _)| s == "True")
    })
    .await
    .unwrap();
    op.stop().await;
}
