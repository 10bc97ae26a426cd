//! Operator benchmark (not run by `cargo test`):
//!
//! ```sh
//! cargo bench -p nats-cdr-operator --bench operator -- 1000
//! ```
//!
//! Starts a local control plane (etcd + kube-apiserver) and one nats-server, runs the operator
//! in-process, creates N `JetStreamStream` objects and reports: seconds until all are Ready,
//! reconciles and JetStream API calls per object, the process's peak RSS (VmHWM: operator plus
//! this harness; etcd, the apiserver and nats-server are other processes), and writes to NATS and
//! to the apiserver during 60 s of steady state (target: zero).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use nats_cdr_crds::{JetStreamStream, NatsCluster};
use nats_cdr_operator::{Kind, Operator, Settings};
use nats_cdr_testsupport::{LocalCluster, NatsServer, install_crds};
use serde_json::json;

fn proc_status(key: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .map(|l| l[key.len()..].trim().to_owned())
        .unwrap_or_default()
}

fn ready(o: &JetStreamStream) -> bool {
    o.status.as_ref().is_some_and(|s| {
        s.common
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// name -> resourceVersion of every stream object.
async fn versions(streams: &Api<JetStreamStream>) -> HashMap<String, String> {
    streams
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .iter()
        .map(|o| (o.name_any(), o.resource_version().unwrap_or_default()))
        .collect()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .or_else(|| std::env::var("BENCH_N").ok()?.parse().ok())
        .unwrap_or(1000);
    let steady = Duration::from_secs(
        std::env::var("BENCH_STEADY_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    if let Ok(filter) = std::env::var("RUST_LOG") {
        // Logs of the operator under load, when asked for (stderr).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .try_init();
    }
    let resync = Duration::from_secs(20);
    println!(
        "operator bench: N = {n} JetStreamStream objects, steady state {steady:?}, resync {resync:?}"
    );

    let cluster = LocalCluster::start(Default::default())
        .await
        .expect("control plane");
    let client = cluster.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    let ns = "bench";
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .expect("namespace");
    let nats = NatsServer::start().expect("nats-server");
    let pp = PatchParams::apply("bench").force();
    Api::<NatsCluster>::namespaced(client.clone(), ns)
        .patch(
            "nats",
            &pp,
            &Patch::Apply(json!({
                "apiVersion": "nats-cdr.dev/v1alpha1", "kind": "NatsCluster",
                "metadata": {"name": "nats"}, "spec": {"external": {"url": nats.url()}}
            })),
        )
        .await
        .expect("NatsCluster");

    let operator = Operator::new(
        client.clone(),
        Settings {
            namespaces: vec![ns.into()],
            resync_period: resync,
            status_refresh: Duration::from_secs(300),
            concurrency: 16,
            ..Settings::default()
        },
    );
    let metrics = operator.metrics();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(operator.run(async move {
        let _ = stop_rx.wait_for(|v| *v).await;
    }));

    let streams: Api<JetStreamStream> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let streams = streams.clone();
            let pp = pp.clone();
            async move {
                let name = format!("s{i:05}");
                let body = json!({
                    "apiVersion": "nats-cdr.dev/v1alpha1", "kind": "JetStreamStream",
                    "metadata": {"name": name},
                    "spec": {"clusterRef": {"name": "nats"}, "name": format!("S{i:05}"),
                             "subjects": [format!("bench.{i}.>")], "maxAge": "24h",
                             "duplicateWindow": "2m", "deletionPolicy": "Delete"}
                });
                streams
                    .patch(&name, &pp, &Patch::Apply(&body))
                    .await
                    .expect("create");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let created = started.elapsed();
    println!("created {n} objects in {:.1} s", created.as_secs_f64());
    loop {
        let list = streams.list(&ListParams::default()).await.expect("list");
        let done = list.items.iter().filter(|o| ready(o)).count();
        if done == n {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            panic!("only {done} of {n} Ready after 30 min");
        }
        if started.elapsed().as_secs() % 30 == 29 {
            eprintln!(
                "waiting: {done} of {n} Ready after {:.0} s, {} reconciles, {} JetStream calls",
                started.elapsed().as_secs_f64(),
                metrics.reconcile_count(Kind::JetStreamStream),
                metrics.nats_request_count()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let all_ready = started.elapsed();
    let reconciles = metrics.reconcile_count(Kind::JetStreamStream);
    let requests = metrics.nats_request_count();
    let nats_writes = metrics.nats_write_count();
    let api_writes = metrics.apiserver_write_count();
    println!(
        "all Ready after {:.1} s (from the first create)",
        all_ready.as_secs_f64()
    );
    println!(
        "to Ready: {:.2} reconciles/object, {:.2} JetStream API calls/object ({:.2} writes/object), {:.2} status writes/object",
        reconciles as f64 / n as f64,
        requests as f64 / n as f64,
        nats_writes as f64 / n as f64,
        api_writes as f64 / n as f64
    );

    // Steady state: let the first wave of follow-up reconciles settle, then measure.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = versions(&streams).await;
    let (r0, q0, w0, a0) = (
        metrics.reconcile_count(Kind::JetStreamStream),
        metrics.nats_request_count(),
        metrics.nats_write_count(),
        metrics.apiserver_write_count(),
    );
    tokio::time::sleep(steady).await;
    let after = versions(&streams).await;
    let changed = before
        .iter()
        .filter(|&(name, rv)| after.get(name) != Some(rv))
        .count();
    println!(
        "steady state {:?}: {} reconciles, {} JetStream reads, {} JetStream writes, {} apiserver writes by the operator, {} objects with a new resourceVersion",
        steady,
        metrics.reconcile_count(Kind::JetStreamStream) - r0,
        (metrics.nats_request_count() - q0) - (metrics.nats_write_count() - w0),
        metrics.nats_write_count() - w0,
        metrics.apiserver_write_count() - a0,
        changed
    );
    println!(
        "RSS: VmHWM {} (peak), VmRSS {} (now) of this process (operator + harness)",
        proc_status("VmHWM:"),
        proc_status("VmRSS:")
    );

    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(20), task).await;
    drop(nats);
    drop(cluster);
}
