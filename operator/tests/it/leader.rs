//! Two operator instances with leader election on a Lease: only the leader acts; a standby takes
//! over when the leader stops (Lease released) or dies (Lease expires).

use std::time::Duration;

use nats_cdr_crds::JetStreamStream;
use nats_cdr_operator::{Kind as K, LeaseSettings, Settings};
use nats_cdr_testsupport::wait_for;

use crate::support::{Env, Running, T, server_stream, settings, start, stream};

fn lease(e: &Env, id: &str, lease_secs: u64) -> Settings {
    let mut s = settings(&e.ns);
    s.identity = id.to_owned();
    s.leader_election = Some(LeaseSettings {
        name: "op".into(),
        namespace: e.ns.clone(),
        identity: id.to_owned(),
        lease_duration: Duration::from_secs(lease_secs),
        renew_interval: Duration::from_millis(500),
    });
    s
}

async fn wait_leads(op: &Running, what: &str) {
    wait_for(T, what, || async { op.metrics.leader.get() == 1 })
        .await
        .unwrap();
}

#[tokio::test]
async fn two_instances_with_leader_election() {
    let e = Env::with_nats("op-leader").await;
    let url = e.nats.url();
    let a = start(e.client.clone(), lease(&e, "a", 4));
    wait_leads(&a, "a leads").await;
    let b = start(e.client.clone(), lease(&e, "b", 4));
    e.apply(stream("one", "ONE")).await;
    e.wait_reason::<JetStreamStream>("one", &["Created", "InSync"])
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.metrics.leader.get(), 0, "b waits");
    assert_eq!(
        b.metrics.reconcile_count(K::JetStreamStream),
        0,
        "only the leader acts"
    );
    assert!(a.metrics.reconcile_count(K::JetStreamStream) > 0);

    a.stop().await;
    wait_leads(&b, "b takes over").await;
    e.apply(stream("two", "TWO")).await;
    e.wait_reason::<JetStreamStream>("two", &["Created", "InSync"])
        .await;
    assert!(server_stream(&url, "TWO").await.is_some());
    assert!(b.metrics.reconcile_count(K::JetStreamStream) > 0);
    b.stop().await;
}

#[tokio::test]
async fn standby_takes_over_when_the_leader_dies_without_releasing() {
    let e = Env::with_nats("op-crash").await;
    let a = start(e.client.clone(), lease(&e, "a", 3));
    wait_leads(&a, "a leads").await;
    let b = start(e.client.clone(), lease(&e, "b", 3));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b.metrics.leader.get(), 0);
    // A crash: the task is dropped, the Lease is not released and must expire.
    a.task.abort();
    let crashed = std::time::Instant::now();
    wait_leads(&b, "b takes over after expiry").await;
    assert!(
        crashed.elapsed() >= Duration::from_secs(1),
        "took over only after the Lease expired"
    );
    e.apply(stream("after", "AFTER")).await;
    e.wait_reason::<JetStreamStream>("after", &["Created", "InSync"])
        .await;
    b.stop().await;
}
