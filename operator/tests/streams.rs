//! The operator in-process against a real kube-apiserver and a real nats-server. The server side
//! is checked with the `nats` CLI, never through the operator's own code.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use nats_cdr_crds::{JetStreamConsumer, JetStreamStream, NatsCluster};
use nats_cdr_operator::{Metrics, Operator, Settings};
use nats_cdr_testsupport::{
    NatsOptions, NatsServer, binaries, install_crds, shared_api_cluster, wait_for,
};
use serde_json::{Value, json};
use tokio::sync::watch;

const T: Duration = Duration::from_secs(30);

struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

fn settings(ns: &str) -> Settings {
    Settings {
        namespaces: vec![ns.to_owned()],
        resync_period: Duration::from_secs(2),
        status_refresh: Duration::from_secs(1),
        nats_timeout: Duration::from_secs(2),
        min_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(2),
        dependency_poll: Duration::from_secs(1),
        ..Settings::default()
    }
}

fn start(client: Client, settings: Settings) -> Running {
    let operator = Operator::new(client, settings);
    let metrics = operator.metrics();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut rx = rx;
        operator
            .run(async move {
                let _ = rx.wait_for(|v| *v).await;
            })
            .await
            .expect("operator run");
    });
    Running {
        stop,
        task,
        metrics,
    }
}

struct Env {
    client: Client,
    ns: String,
    nats: NatsServer,
}

async fn env(prefix: &str) -> Env {
    env_with(prefix, 1).await
}

async fn env_with(prefix: &str, nodes: usize) -> Env {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .with_test_writer()
        .try_init();
    let cluster = shared_api_cluster().await.expect("test cluster");
    let client = cluster.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    let ns = cluster.new_namespace(prefix).await.expect("namespace");
    let nats = NatsServer::start_with(NatsOptions {
        nodes,
        ..NatsOptions::default()
    })
    .expect("nats-server");
    apply(
        &client,
        &ns,
        json!({
            "apiVersion": "nats-cdr.dev/v1alpha1", "kind": "NatsCluster",
            "metadata": {"name": "nats"},
            "spec": {"external": {"url": nats.urls()}}
        }),
    )
    .await;
    Env { client, ns, nats }
}

async fn apply(client: &Client, ns: &str, obj: Value) {
    let kind = obj["kind"].as_str().unwrap().to_owned();
    let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
    let pp = PatchParams::apply("test").force();
    match kind.as_str() {
        "NatsCluster" => {
            Api::<NatsCluster>::namespaced(client.clone(), ns)
                .patch(&name, &pp, &Patch::Apply(&obj))
                .await
                .unwrap();
        }
        "JetStreamStream" => {
            Api::<JetStreamStream>::namespaced(client.clone(), ns)
                .patch(&name, &pp, &Patch::Apply(&obj))
                .await
                .unwrap();
        }
        _ => {
            Api::<JetStreamConsumer>::namespaced(client.clone(), ns)
                .patch(&name, &pp, &Patch::Apply(&obj))
                .await
                .unwrap();
        }
    }
}

fn stream(name: &str, stream: &str, extra: Value) -> Value {
    let mut spec = json!({"clusterRef": {"name": "nats"}, "name": stream, "subjects": [format!("{}.>", stream.to_lowercase())]});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "nats-cdr.dev/v1alpha1", "kind": "JetStreamStream", "metadata": {"name": name}, "spec": spec})
}

fn consumer(name: &str, stream: &str, durable: &str, extra: Value) -> Value {
    let mut spec =
        json!({"clusterRef": {"name": "nats"}, "streamName": stream, "durableName": durable});
    for (k, v) in extra.as_object().unwrap() {
        spec[k] = v.clone();
    }
    json!({"apiVersion": "nats-cdr.dev/v1alpha1", "kind": "JetStreamConsumer", "metadata": {"name": name}, "spec": spec})
}

/// (status, reason, message) of condition `type_`.
fn condition<K>(obj: &K, type_: &str) -> Option<(String, String, String)>
where
    K: kube::Resource + serde::Serialize,
{
    let v = serde_json::to_value(obj).unwrap();
    v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_owned(),
                c["reason"].as_str().unwrap_or_default().to_owned(),
                c["message"].as_str().unwrap_or_default().to_owned(),
            )
        })
}

async fn get_stream(client: &Client, ns: &str, name: &str) -> Option<JetStreamStream> {
    Api::<JetStreamStream>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()
}

async fn wait_stream_reason(
    client: &Client,
    ns: &str,
    name: &str,
    reasons: &[&str],
) -> JetStreamStream {
    let what = format!("JetStreamStream {name} Ready reason in {reasons:?}");
    let api = Api::<JetStreamStream>::namespaced(client.clone(), ns);
    let result = wait_for(T, &what, || {
        let api = api.clone();
        async move {
            let o = api.get_opt(name).await.ok().flatten();
            o.and_then(|o| condition(&o, "Ready"))
                .is_some_and(|(_, r, _)| reasons.contains(&r.as_str()))
        }
    })
    .await;
    let last = api.get_opt(name).await.unwrap();
    if result.is_err() {
        panic!(
            "{what}: last seen generation {:?}, spec {:?}, status {:?}",
            last.as_ref().and_then(|o| o.metadata.generation),
            last.as_ref().map(|o| &o.spec),
            last.as_ref().and_then(|o| o.status.clone())
        );
    }
    last.unwrap()
}

async fn wait_consumer_reason(
    client: &Client,
    ns: &str,
    name: &str,
    reasons: &[&str],
) -> JetStreamConsumer {
    let what = format!("JetStreamConsumer {name} Ready reason in {reasons:?}");
    let api = Api::<JetStreamConsumer>::namespaced(client.clone(), ns);
    let result = wait_for(T, &what, || {
        let api = api.clone();
        async move {
            let o = api.get_opt(name).await.ok().flatten();
            o.and_then(|o| condition(&o, "Ready"))
                .is_some_and(|(_, r, _)| reasons.contains(&r.as_str()))
        }
    })
    .await;
    let last = api.get_opt(name).await.unwrap();
    if result.is_err() {
        panic!(
            "{what}: last seen {:?}",
            last.as_ref().and_then(|o| o.status.clone())
        );
    }
    last.unwrap()
}

fn nats(url: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(binaries::find("nats").expect("nats CLI"))
        .arg("--server")
        .arg(url)
        .args(args)
        .env("NATS_CONTEXT", "")
        .output()
        .expect("run nats");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `nats stream info NAME -j` as JSON, or None when the stream does not exist.
fn server_stream(url: &str, name: &str) -> Option<Value> {
    let (ok, out) = nats(url, &["stream", "info", name, "-j"]);
    ok.then(|| serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")))
}

fn server_consumer(url: &str, stream: &str, durable: &str) -> Option<Value> {
    let (ok, out) = nats(url, &["consumer", "info", stream, durable, "-j"]);
    ok.then(|| serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")))
}

async fn wait_server<F: Fn(Option<Value>) -> bool>(
    what: &str,
    check: F,
    probe: impl Fn() -> Option<Value>,
) {
    let start = std::time::Instant::now();
    loop {
        let v = probe();
        if check(v.clone()) {
            return;
        }
        if start.elapsed() > T {
            panic!("{what}: server shows {v:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

const HOUR: u64 = 3_600_000_000_000;

#[tokio::test]
async fn cluster_status_reports_version_and_jetstream() {
    let e = env("op-cluster").await;
    let op = start(e.client.clone(), settings(&e.ns));
    let api = Api::<NatsCluster>::namespaced(e.client.clone(), &e.ns);
    wait_for(T, "NatsCluster Ready", || {
        let api = api.clone();
        async move {
            let c = api.get("nats").await.unwrap();
            condition(&c, "Ready").is_some_and(|(s, _, _)| s == "True")
        }
    })
    .await
    .unwrap();
    let c = api.get("nats").await.unwrap();
    let status = c.status.unwrap();
    assert!(status.server_version.unwrap().starts_with("2."));
    assert_eq!(status.jetstream_enabled, Some(true));
    op.stop().await;
}

#[tokio::test]
async fn create_update_steady_state_and_delete() {
    let e = env("op-crud").await;
    let url = e.nats.url();
    let op = start(e.client.clone(), settings(&e.ns));
    apply(&e.client, &e.ns, stream("cdr", "AKIRA_CDR", json!({"maxAge": "1h", "duplicateWindow": "2m", "maxBytes": "10MiB", "deletionPolicy": "Delete"}))).await;
    wait_stream_reason(&e.client, &e.ns, "cdr", &["Created", "InSync"]).await;
    let info = server_stream(&url, "AKIRA_CDR").expect("stream on the server");
    assert_eq!(info["config"]["max_age"].as_u64(), Some(HOUR));
    assert_eq!(info["config"]["max_bytes"].as_u64(), Some(10 * 1024 * 1024));
    assert_eq!(
        info["config"]["duplicate_window"].as_u64(),
        Some(120_000_000_000)
    );
    assert_eq!(info["config"]["storage"], "file");

    // Steady state: several resyncs (2 s each) write nothing to NATS nor to the apiserver.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = get_stream(&e.client, &e.ns, "cdr").await.unwrap();
    let writes = op.metrics.nats_write_count();
    let api_writes = op.metrics.apiserver_write_count();
    let reconciles = op.metrics.reconcile_count("JetStreamStream");
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = get_stream(&e.client, &e.ns, "cdr").await.unwrap();
    assert!(
        op.metrics.reconcile_count("JetStreamStream") >= reconciles + 2,
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
    let info2 = server_stream(&url, "AKIRA_CDR").unwrap();
    assert_eq!(info["created"], info2["created"]);
    assert_eq!(info["config"], info2["config"]);

    // Update: maxAge 1h -> 2h is applied in place.
    apply(&e.client, &e.ns, stream("cdr", "AKIRA_CDR", json!({"maxAge": "2h", "duplicateWindow": "2m", "maxBytes": "10MiB", "deletionPolicy": "Delete"}))).await;
    wait_server(
        "maxAge 2h",
        |v| v.is_some_and(|v| v["config"]["max_age"].as_u64() == Some(2 * HOUR)),
        || server_stream(&url, "AKIRA_CDR"),
    )
    .await;
    let o = wait_stream_reason(&e.client, &e.ns, "cdr", &["Updated"]).await;
    assert_eq!(
        o.status.unwrap().common.observed_generation,
        o.metadata.generation
    );
    assert_eq!(
        server_stream(&url, "AKIRA_CDR").unwrap()["created"],
        info["created"],
        "updated in place, not recreated"
    );

    // Delete with deletionPolicy Delete removes the stream.
    Api::<JetStreamStream>::namespaced(e.client.clone(), &e.ns)
        .delete("cdr", &DeleteParams::default())
        .await
        .unwrap();
    wait_server(
        "stream deleted",
        |v| v.is_none(),
        || server_stream(&url, "AKIRA_CDR"),
    )
    .await;
    wait_for(T, "object gone", || async {
        get_stream(&e.client, &e.ns, "cdr").await.is_none()
    })
    .await
    .unwrap();
    op.stop().await;
}

#[tokio::test]
async fn drift_is_reverted_and_counted() {
    let e = env("op-drift").await;
    let url = e.nats.url();
    let op = start(e.client.clone(), settings(&e.ns));
    apply(
        &e.client,
        &e.ns,
        stream("d", "DRIFT", json!({"maxAge": "1h"})),
    )
    .await;
    wait_stream_reason(&e.client, &e.ns, "d", &["Created", "InSync"]).await;

    let (ok, out) = nats(&url, &["stream", "edit", "DRIFT", "--max-age=5h", "-f"]);
    assert!(ok, "{out}");
    wait_server(
        "edit reverted",
        |v| v.is_some_and(|v| v["config"]["max_age"].as_u64() == Some(HOUR)),
        || server_stream(&url, "DRIFT"),
    )
    .await;
    wait_stream_reason(&e.client, &e.ns, "d", &["DriftRepaired"]).await;
    assert!(op.metrics.drift_repair_count("JetStreamStream") >= 1);

    let (ok, out) = nats(&url, &["stream", "rm", "DRIFT", "-f"]);
    assert!(ok, "{out}");
    let repairs = op.metrics.drift_repair_count("JetStreamStream");
    wait_server(
        "stream recreated",
        |v| v.is_some_and(|v| v["config"]["max_age"].as_u64() == Some(HOUR)),
        || server_stream(&url, "DRIFT"),
    )
    .await;
    wait_for(T, "second repair counted", || {
        let m = op.metrics.clone();
        async move { m.drift_repair_count("JetStreamStream") > repairs }
    })
    .await
    .unwrap();
    op.stop().await;
}

#[tokio::test]
async fn immutable_change_is_refused_not_recreated() {
    let e = env("op-immutable").await;
    let url = e.nats.url();
    let op = start(e.client.clone(), settings(&e.ns));
    apply(&e.client, &e.ns, stream("w", "IMMUT", json!({}))).await;
    wait_stream_reason(&e.client, &e.ns, "w", &["Created", "InSync"]).await;
    let created = server_stream(&url, "IMMUT").unwrap()["created"].clone();

    apply(
        &e.client,
        &e.ns,
        stream("w", "IMMUT", json!({"retention": "WorkQueue"})),
    )
    .await;
    let o = wait_stream_reason(&e.client, &e.ns, "w", &["ImmutableField"]).await;
    let (status, _, message) = condition(&o, "Ready").unwrap();
    assert_eq!(status, "False");
    assert!(message.contains("spec.retention"), "{message}");
    let info = server_stream(&url, "IMMUT").unwrap();
    assert_eq!(info["config"]["retention"], "limits");
    assert_eq!(info["created"], created, "never deleted and recreated");

    // A refusal only the server knows about (CEL cannot): deny deletes cannot be cancelled.
    apply(
        &e.client,
        &e.ns,
        stream("w", "IMMUT", json!({"denyDelete": true})),
    )
    .await;
    wait_server(
        "denyDelete on",
        |v| v.is_some_and(|v| v["config"]["deny_delete"] == true),
        || server_stream(&url, "IMMUT"),
    )
    .await;
    apply(
        &e.client,
        &e.ns,
        stream("w", "IMMUT", json!({"denyDelete": false})),
    )
    .await;
    let o = wait_stream_reason(&e.client, &e.ns, "w", &["ImmutableField"]).await;
    let message = condition(&o, "Ready").unwrap().2;
    assert!(
        message.contains("spec.denyDelete") && message.contains("can not cancel"),
        "{message}"
    );
    assert_eq!(
        server_stream(&url, "IMMUT").unwrap()["config"]["deny_delete"],
        true
    );
    assert_eq!(
        server_stream(&url, "IMMUT").unwrap()["created"],
        created,
        "never deleted and recreated"
    );

    // Reverting the field makes it Ready again.
    apply(
        &e.client,
        &e.ns,
        stream("w", "IMMUT", json!({"denyDelete": true})),
    )
    .await;
    wait_stream_reason(&e.client, &e.ns, "w", &["InSync", "Updated"]).await;
    op.stop().await;
}

#[tokio::test]
async fn retain_policy_keeps_the_stream() {
    let e = env("op-retain").await;
    let url = e.nats.url();
    let op = start(e.client.clone(), settings(&e.ns));
    apply(
        &e.client,
        &e.ns,
        stream("r", "KEEP", json!({"deletionPolicy": "Retain"})),
    )
    .await;
    wait_stream_reason(&e.client, &e.ns, "r", &["Created", "InSync"]).await;
    Api::<JetStreamStream>::namespaced(e.client.clone(), &e.ns)
        .delete("r", &DeleteParams::default())
        .await
        .unwrap();
    wait_for(T, "object gone", || async {
        get_stream(&e.client, &e.ns, "r").await.is_none()
    })
    .await
    .unwrap();
    assert!(
        server_stream(&url, "KEEP").is_some(),
        "Retain leaves the stream"
    );
    op.stop().await;
}

#[tokio::test]
async fn existing_stream_is_adopted_only_when_asked() {
    let e = env("op-adopt").await;
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
    );
    assert!(ok, "{out}");
    let op = start(e.client.clone(), settings(&e.ns));
    apply(
        &e.client,
        &e.ns,
        stream("l", "LEGACY", json!({"maxAge": "3h"})),
    )
    .await;
    let o = wait_stream_reason(&e.client, &e.ns, "l", &["AlreadyExists"]).await;
    assert!(condition(&o, "Ready").unwrap().2.contains("adoptExisting"));
    assert_eq!(
        server_stream(&url, "LEGACY").unwrap()["config"]["max_age"].as_u64(),
        Some(0),
        "untouched"
    );

    apply(
        &e.client,
        &e.ns,
        stream(
            "l",
            "LEGACY",
            json!({"maxAge": "3h", "adoptExisting": true}),
        ),
    )
    .await;
    wait_stream_reason(&e.client, &e.ns, "l", &["Adopted", "InSync"]).await;
    let info = server_stream(&url, "LEGACY").unwrap();
    assert_eq!(info["config"]["max_age"].as_u64(), Some(3 * HOUR));
    let owner = info["config"]["metadata"]["nats-cdr.dev/owner"]
        .as_str()
        .unwrap();
    assert!(owner.starts_with(&format!("{}/l/", e.ns)), "{owner}");
    op.stop().await;
}

#[tokio::test]
async fn second_object_for_the_same_stream_is_a_conflict() {
    let e = env("op-conflict").await;
    let op = start(e.client.clone(), settings(&e.ns));
    apply(&e.client, &e.ns, stream("first", "SHARED", json!({}))).await;
    wait_stream_reason(&e.client, &e.ns, "first", &["Created", "InSync"]).await;
    tokio::time::sleep(Duration::from_millis(1100)).await; // creationTimestamp has 1 s resolution
    apply(
        &e.client,
        &e.ns,
        stream("second", "SHARED", json!({"maxAge": "1h"})),
    )
    .await;
    let o = wait_stream_reason(&e.client, &e.ns, "second", &["Conflict"]).await;
    assert!(
        condition(&o, "Ready")
            .unwrap()
            .2
            .contains(&format!("{}/first", e.ns))
    );
    // No flip-flopping: the owner stays in sync, the server keeps the owner's config.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let first = get_stream(&e.client, &e.ns, "first").await.unwrap();
    assert_eq!(condition(&first, "Ready").unwrap().0, "True");
    assert_eq!(
        server_stream(&e.nats.url(), "SHARED").unwrap()["config"]["max_age"].as_u64(),
        Some(0)
    );
    op.stop().await;
}

#[tokio::test]
async fn nats_outage_is_reported_and_recovered() {
    let mut e = env("op-outage").await;
    let url = e.nats.url();
    let op = start(e.client.clone(), settings(&e.ns));
    apply(
        &e.client,
        &e.ns,
        stream("o", "OUTAGE", json!({"maxAge": "1h"})),
    )
    .await;
    wait_stream_reason(&e.client, &e.ns, "o", &["Created", "InSync"]).await;

    e.nats.stop_node(0).unwrap();
    apply(
        &e.client,
        &e.ns,
        stream("o", "OUTAGE", json!({"maxAge": "4h"})),
    )
    .await;
    let o = wait_stream_reason(&e.client, &e.ns, "o", &["NatsUnavailable"]).await;
    assert_eq!(condition(&o, "Ready").unwrap().0, "False");
    let clusters = Api::<NatsCluster>::namespaced(e.client.clone(), &e.ns);
    let cluster_ready = |want: &'static str| {
        let clusters = clusters.clone();
        move || {
            let clusters = clusters.clone();
            async move {
                let c = clusters.get("nats").await.unwrap();
                condition(&c, "Ready").is_some_and(|(s, _, _)| s == want)
            }
        }
    };
    wait_for(T, "NatsCluster not Ready", cluster_ready("False"))
        .await
        .unwrap();

    e.nats.restart_node(0).unwrap();
    wait_server(
        "update applied after recovery",
        |v| v.is_some_and(|v| v["config"]["max_age"].as_u64() == Some(4 * HOUR)),
        || server_stream(&url, "OUTAGE"),
    )
    .await;
    wait_stream_reason(&e.client, &e.ns, "o", &["Updated", "InSync"]).await;
    wait_for(T, "NatsCluster Ready again", cluster_ready("True"))
        .await
        .unwrap();
    op.stop().await;
}

#[tokio::test]
async fn delete_while_nats_is_down_waits_then_force_delete() {
    let mut e = env("op-deldown").await;
    let op = start(e.client.clone(), settings(&e.ns));
    apply(
        &e.client,
        &e.ns,
        stream("del", "DEL", json!({"deletionPolicy": "Delete"})),
    )
    .await;
    apply(
        &e.client,
        &e.ns,
        stream("ret", "RET", json!({"deletionPolicy": "Retain"})),
    )
    .await;
    wait_stream_reason(&e.client, &e.ns, "del", &["Created", "InSync"]).await;
    wait_stream_reason(&e.client, &e.ns, "ret", &["Created", "InSync"]).await;
    e.nats.stop_node(0).unwrap();
    let api = Api::<JetStreamStream>::namespaced(e.client.clone(), &e.ns);
    api.delete("ret", &DeleteParams::default()).await.unwrap();
    api.delete("del", &DeleteParams::default()).await.unwrap();
    // Retain: the finalizer goes at once, without NATS.
    wait_for(T, "Retain object gone", || async {
        get_stream(&e.client, &e.ns, "ret").await.is_none()
    })
    .await
    .unwrap();
    // Delete: it waits, saying why and what to do.
    let o = wait_stream_reason(&e.client, &e.ns, "del", &["NatsUnavailable"]).await;
    assert!(condition(&o, "Ready").unwrap().2.contains("force-delete"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        get_stream(&e.client, &e.ns, "del").await.is_some(),
        "kept while NATS is down"
    );
    api.patch(
        "del",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"nats-cdr.dev/force-delete": "true"}}})),
    )
    .await
    .unwrap();
    wait_for(T, "forced object gone", || async {
        get_stream(&e.client, &e.ns, "del").await.is_none()
    })
    .await
    .unwrap();
    op.stop().await;
}

#[tokio::test]
async fn paused_object_is_left_alone() {
    let e = env("op-pause").await;
    let url = e.nats.url();
    let op = start(e.client.clone(), settings(&e.ns));
    apply(
        &e.client,
        &e.ns,
        stream(
            "p",
            "PAUSE",
            json!({"maxAge": "1h", "deletionPolicy": "Delete"}),
        ),
    )
    .await;
    wait_stream_reason(&e.client, &e.ns, "p", &["Created", "InSync"]).await;
    let api = Api::<JetStreamStream>::namespaced(e.client.clone(), &e.ns);
    api.patch(
        "p",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"nats-cdr.dev/reconcile": "paused"}}})),
    )
    .await
    .unwrap();
    wait_stream_reason(&e.client, &e.ns, "p", &["Paused"]).await;
    let (ok, out) = nats(&url, &["stream", "edit", "PAUSE", "--max-age=5h", "-f"]);
    assert!(ok, "{out}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        server_stream(&url, "PAUSE").unwrap()["config"]["max_age"].as_u64(),
        Some(5 * HOUR),
        "no write while paused"
    );
    api.delete("p", &DeleteParams::default()).await.unwrap();
    wait_for(T, "object gone", || async {
        get_stream(&e.client, &e.ns, "p").await.is_none()
    })
    .await
    .unwrap();
    assert!(
        server_stream(&url, "PAUSE").is_some(),
        "paused: no deletion on the server"
    );
    op.stop().await;
}

#[tokio::test]
async fn consumer_waits_for_its_stream_then_syncs_and_deletes() {
    let e = env("op-consumer").await;
    let url = e.nats.url();
    let op = start(e.client.clone(), settings(&e.ns));
    apply(&e.client, &e.ns, consumer("worker", "LATE", "cdr-worker", json!({"ackWait": "30s", "maxDeliver": 5, "maxAckPending": 100, "filterSubject": "late.raw"}))).await;
    let o = wait_consumer_reason(&e.client, &e.ns, "worker", &["StreamNotFound"]).await;
    assert!(condition(&o, "Ready").unwrap().2.contains("LATE"));

    apply(&e.client, &e.ns, stream("late", "LATE", json!({}))).await;
    wait_consumer_reason(&e.client, &e.ns, "worker", &["Created", "InSync"]).await;
    let info = server_consumer(&url, "LATE", "cdr-worker").expect("consumer on the server");
    assert_eq!(info["config"]["max_deliver"], 5);
    assert_eq!(info["config"]["ack_wait"].as_u64(), Some(30_000_000_000));
    assert_eq!(info["config"]["max_ack_pending"], 100);
    assert_eq!(info["config"]["ack_policy"], "explicit");

    // Steady state: no writes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rv = Api::<JetStreamConsumer>::namespaced(e.client.clone(), &e.ns)
        .get("worker")
        .await
        .unwrap()
        .resource_version();
    let writes = op.metrics.nats_write_count();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(op.metrics.nats_write_count(), writes);
    assert_eq!(
        Api::<JetStreamConsumer>::namespaced(e.client.clone(), &e.ns)
            .get("worker")
            .await
            .unwrap()
            .resource_version(),
        rv
    );

    // A mutable field is updated in place.
    apply(&e.client, &e.ns, consumer("worker", "LATE", "cdr-worker", json!({"ackWait": "30s", "maxDeliver": 7, "maxAckPending": 100, "filterSubject": "late.raw"}))).await;
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
    );
    assert!(ok, "{out}");
    wait_server(
        "consumer drift reverted",
        |v| v.is_some_and(|v| v["config"]["max_deliver"] == 7),
        || server_consumer(&url, "LATE", "cdr-worker"),
    )
    .await;
    wait_for(T, "consumer drift counted", || {
        let m = op.metrics.clone();
        async move { m.drift_repair_count("JetStreamConsumer") >= 1 }
    })
    .await
    .unwrap();
    // maxWaiting cannot change on the server (CEL does not know): ImmutableField.
    apply(&e.client, &e.ns, consumer("worker", "LATE", "cdr-worker", json!({"ackWait": "30s", "maxDeliver": 7, "maxAckPending": 100, "filterSubject": "late.raw", "maxWaiting": 10}))).await;
    let o = wait_consumer_reason(&e.client, &e.ns, "worker", &["ImmutableField"]).await;
    assert!(
        condition(&o, "Ready")
            .unwrap()
            .2
            .contains("spec.maxWaiting")
    );

    // Default deletion policy of consumers: Delete.
    Api::<JetStreamConsumer>::namespaced(e.client.clone(), &e.ns)
        .delete("worker", &DeleteParams::default())
        .await
        .unwrap();
    wait_server(
        "consumer deleted",
        |v| v.is_none(),
        || server_consumer(&url, "LATE", "cdr-worker"),
    )
    .await;
    op.stop().await;
}

#[tokio::test]
async fn two_instances_with_leader_election() {
    let e = env("op-leader").await;
    let url = e.nats.url();
    let lease = |id: &str| {
        let mut s = settings(&e.ns);
        s.identity = id.to_owned();
        s.leader_election = Some(nats_cdr_operator::leader::LeaseSettings {
            name: "op".into(),
            namespace: e.ns.clone(),
            identity: id.to_owned(),
            lease_duration: Duration::from_secs(4),
            renew_interval: Duration::from_millis(500),
        });
        s
    };
    let a = start(e.client.clone(), lease("a"));
    wait_for(T, "a leads", || {
        let m = a.metrics.clone();
        async move { m.leader.get() == 1 }
    })
    .await
    .unwrap();
    let b = start(e.client.clone(), lease("b"));
    apply(&e.client, &e.ns, stream("one", "ONE", json!({}))).await;
    wait_stream_reason(&e.client, &e.ns, "one", &["Created", "InSync"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.metrics.leader.get(), 0, "b waits");
    assert_eq!(
        b.metrics.reconcile_count("JetStreamStream"),
        0,
        "only the leader acts"
    );
    assert!(a.metrics.reconcile_count("JetStreamStream") > 0);

    a.stop().await;
    wait_for(T, "b takes over", || {
        let m = b.metrics.clone();
        async move { m.leader.get() == 1 }
    })
    .await
    .unwrap();
    apply(&e.client, &e.ns, stream("two", "TWO", json!({}))).await;
    wait_stream_reason(&e.client, &e.ns, "two", &["Created", "InSync"]).await;
    assert!(server_stream(&url, "TWO").is_some());
    assert!(b.metrics.reconcile_count("JetStreamStream") > 0);
    b.stop().await;
}

#[tokio::test]
async fn replica_change_is_tracked_until_peers_are_current() {
    let e = env_with("op-replicas", 3).await;
    let url = e.nats.url();
    let op = start(e.client.clone(), settings(&e.ns));
    apply(
        &e.client,
        &e.ns,
        stream("r", "REPL", json!({"replicas": 1})),
    )
    .await;
    let o = wait_stream_reason(&e.client, &e.ns, "r", &["Created", "InSync"]).await;
    assert_eq!(o.status.unwrap().current_replicas, Some(1));
    apply(
        &e.client,
        &e.ns,
        stream("r", "REPL", json!({"replicas": 3})),
    )
    .await;
    wait_server(
        "3 replicas",
        |v| v.is_some_and(|v| v["config"]["num_replicas"] == 3),
        || server_stream(&url, "REPL"),
    )
    .await;
    let api = Api::<JetStreamStream>::namespaced(e.client.clone(), &e.ns);
    wait_for(T, "currentReplicas 3 and Synced", || {
        let api = api.clone();
        async move {
            let o = api.get("r").await.unwrap();
            o.status.as_ref().and_then(|s| s.current_replicas) == Some(3)
                && condition(&o, "Synced").is_some_and(|(s, _, _)| s == "True")
        }
    })
    .await
    .unwrap();
    op.stop().await;
}

#[tokio::test]
async fn credentials_from_secret_are_used() {
    let cluster = shared_api_cluster().await.expect("test cluster");
    let client = cluster.client().await.expect("client");
    install_crds(&client).await.expect("CRDs");
    let ns = cluster.new_namespace("op-creds").await.expect("namespace");
    let server = NatsServer::start_with(NatsOptions {
        extra_config: "authorization { user: cdr, password: s3cret-pw }\n".into(),
        ..NatsOptions::default()
    })
    .expect("nats-server");
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "nats-creds"}, "stringData": {"username": "cdr", "password": "s3cret-pw"}})).unwrap(),
        )
        .await
        .unwrap();
    secrets
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": "wrong"}, "stringData": {"username": "cdr", "password": "nope"}})).unwrap(),
        )
        .await
        .unwrap();
    for (name, secret) in [("nats", "nats-creds"), ("bad", "wrong")] {
        apply(&client, &ns, json!({
            "apiVersion": "nats-cdr.dev/v1alpha1", "kind": "NatsCluster", "metadata": {"name": name},
            "spec": {"external": {"url": server.url(), "credentials": {"secretName": secret, "type": "UserPassword"}}}
        }))
        .await;
    }
    let op = start(client.clone(), settings(&ns));
    apply(&client, &ns, stream("auth", "AUTH", json!({}))).await;
    wait_stream_reason(&client, &ns, "auth", &["Created", "InSync"]).await;
    let (ok, out) = nats(
        &server.url(),
        &[
            "--user=cdr",
            "--password=s3cret-pw",
            "stream",
            "info",
            "AUTH",
            "-j",
        ],
    );
    assert!(ok, "{out}");

    let api = Api::<NatsCluster>::namespaced(client.clone(), &ns);
    wait_for(T, "bad credentials reported", || {
        let api = api.clone();
        async move {
            let c = api.get("bad").await.unwrap();
            condition(&c, "Ready").is_some_and(|(s, r, _)| s == "False" && r == "NatsUnavailable")
        }
    })
    .await
    .unwrap();
    let c = api.get("bad").await.unwrap();
    assert!(
        !condition(&c, "Ready").unwrap().2.contains("nope"),
        "no password in status"
    );
    op.stop().await;
}

#[tokio::test]
async fn binary_serves_health_and_metrics_and_stops_on_sigterm() {
    let e = env("op-binary").await;
    let cluster = shared_api_cluster().await.unwrap();
    let port = nats_cdr_testsupport::ports::free_port().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_nats-cdr-operator"))
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .args([
            "--namespaces",
            &e.ns,
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
            "--log-format",
            "text",
            "--resync-period",
            "2s",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the operator binary");
    wait_for(T, "/readyz 200", || async move {
        nats_cdr_testsupport::nats::http_status(port, "/readyz") == Some(200)
    })
    .await
    .unwrap();
    assert_eq!(
        nats_cdr_testsupport::nats::http_status(port, "/healthz"),
        Some(200)
    );
    apply(&e.client, &e.ns, stream("bin", "BIN", json!({}))).await;
    wait_stream_reason(&e.client, &e.ns, "bin", &["Created", "InSync"]).await;
    let metrics = nats_cdr_testsupport::nats::http_get(port, "/metrics").unwrap();
    assert!(
        metrics.contains("nats_cdr_operator_reconciles_total{kind=\"JetStreamStream\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nats_cdr_operator_nats_connected{cluster="),
        "{metrics}"
    );

    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("the operator did not stop within 20 s of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn existing_consumer_is_adopted_only_when_asked() {
    let e = env("op-cadopt").await;
    let url = e.nats.url();
    let op = start(e.client.clone(), settings(&e.ns));
    apply(&e.client, &e.ns, stream("s", "CSTREAM", json!({}))).await;
    wait_stream_reason(&e.client, &e.ns, "s", &["Created", "InSync"]).await;
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
    );
    assert!(ok, "{out}");
    apply(
        &e.client,
        &e.ns,
        consumer("c", "CSTREAM", "legacy", json!({"maxDeliver": 9})),
    )
    .await;
    wait_consumer_reason(&e.client, &e.ns, "c", &["AlreadyExists"]).await;
    assert_ne!(
        server_consumer(&url, "CSTREAM", "legacy").unwrap()["config"]["max_deliver"],
        9,
        "untouched"
    );
    apply(
        &e.client,
        &e.ns,
        consumer(
            "c",
            "CSTREAM",
            "legacy",
            json!({"maxDeliver": 9, "adoptExisting": true}),
        ),
    )
    .await;
    wait_consumer_reason(&e.client, &e.ns, "c", &["Adopted", "InSync"]).await;
    let info = server_consumer(&url, "CSTREAM", "legacy").unwrap();
    assert_eq!(info["config"]["max_deliver"], 9);
    assert!(
        info["config"]["metadata"]["nats-cdr.dev/owner"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{}/c/", e.ns))
    );
    op.stop().await;
}

#[tokio::test]
async fn every_field_round_trips_without_perpetual_updates() {
    let e = env("op-fields").await;
    let url = e.nats.url();
    let op = start(e.client.clone(), settings(&e.ns));
    apply(&e.client, &e.ns, stream("origin", "ORIGIN", json!({}))).await;
    apply(&e.client, &e.ns, stream("full", "FULL", json!({
        "description": "every field", "retention": "Limits", "storage": "File", "replicas": 1,
        "maxAge": "7d", "maxBytes": "1GiB", "maxMsgs": 1000000, "maxMsgSize": "1MiB",
        "maxMsgsPerSubject": 100, "maxConsumers": 10, "discard": "New",
        "discardNewPerSubject": true, "duplicateWindow": "2m", "denyDelete": true,
        "denyPurge": false, "allowRollup": true, "allowDirect": true, "compression": "S2",
        "metadata": {"team": "voice"},
        "sources": [{"name": "ORIGIN", "filterSubject": "origin.a"}]
    }))).await;
    let mut mirror = stream(
        "mirror",
        "MIRROR",
        json!({"mirror": {"name": "ORIGIN", "optStartSeq": 1}}),
    );
    mirror["spec"].as_object_mut().unwrap().remove("subjects");
    apply(&e.client, &e.ns, mirror).await;
    apply(&e.client, &e.ns, consumer("full-c", "FULL", "every", json!({
        "description": "every field", "deliverPolicy": "ByStartSequence", "optStartSeq": 1,
        "ackPolicy": "Explicit", "ackWait": "45s", "maxDeliver": 5, "backoff": ["1s", "10s"],
        "filterSubjects": ["full.a", "full.b"], "replayPolicy": "Instant", "maxAckPending": 50,
        "maxWaiting": 64, "maxBatch": 100, "maxExpires": "30s", "inactiveThreshold": "24h",
        "headersOnly": false, "replicas": 1, "sampleFrequency": "50%",
        "metadata": {"team": "voice"}
    }))).await;
    for name in ["origin", "full", "mirror"] {
        wait_stream_reason(&e.client, &e.ns, name, &["Created", "InSync"]).await;
    }
    wait_consumer_reason(&e.client, &e.ns, "full-c", &["Created", "InSync"]).await;
    let full = server_stream(&url, "FULL").unwrap();
    assert_eq!(full["config"]["compression"], "s2");
    assert_eq!(full["config"]["sources"][0]["name"], "ORIGIN");
    assert_eq!(full["config"]["discard_new_per_subject"], true);
    assert_eq!(
        server_stream(&url, "MIRROR").unwrap()["config"]["mirror"]["name"],
        "ORIGIN"
    );
    let c = server_consumer(&url, "FULL", "every").unwrap();
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
async fn standby_takes_over_when_the_leader_dies_without_releasing() {
    let e = env("op-crash").await;
    let lease = |id: &str| {
        let mut s = settings(&e.ns);
        s.identity = id.to_owned();
        s.leader_election = Some(nats_cdr_operator::leader::LeaseSettings {
            name: "op".into(),
            namespace: e.ns.clone(),
            identity: id.to_owned(),
            lease_duration: Duration::from_secs(3),
            renew_interval: Duration::from_millis(500),
        });
        s
    };
    let a = start(e.client.clone(), lease("a"));
    wait_for(T, "a leads", || {
        let m = a.metrics.clone();
        async move { m.leader.get() == 1 }
    })
    .await
    .unwrap();
    let b = start(e.client.clone(), lease("b"));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(b.metrics.leader.get(), 0);
    // A crash: the task is dropped, the Lease is not released and must expire.
    a.task.abort();
    let crashed = std::time::Instant::now();
    wait_for(T, "b takes over after expiry", || {
        let m = b.metrics.clone();
        async move { m.leader.get() == 1 }
    })
    .await
    .unwrap();
    assert!(
        crashed.elapsed() >= Duration::from_secs(1),
        "took over only after the Lease expired"
    );
    apply(&e.client, &e.ns, stream("after", "AFTER", json!({}))).await;
    wait_stream_reason(&e.client, &e.ns, "after", &["Created", "InSync"]).await;
    b.stop().await;
}

#[tokio::test]
async fn missing_and_managed_clusters_are_reported() {
    let e = env("op-noclust").await;
    let op = start(e.client.clone(), settings(&e.ns));
    apply(
        &e.client,
        &e.ns,
        json!({
            "apiVersion": "nats-cdr.dev/v1alpha1", "kind": "NatsCluster",
            "metadata": {"name": "managed"}, "spec": {"managed": {"replicas": 1}}
        }),
    )
    .await;
    let mut orphan = stream("orphan", "ORPHAN", json!({}));
    orphan["spec"]["clusterRef"]["name"] = json!("nope");
    apply(&e.client, &e.ns, orphan).await;
    let mut on_managed = stream("onmanaged", "ONMANAGED", json!({}));
    on_managed["spec"]["clusterRef"]["name"] = json!("managed");
    apply(&e.client, &e.ns, on_managed).await;

    let o = wait_stream_reason(&e.client, &e.ns, "orphan", &["ClusterNotFound"]).await;
    assert!(condition(&o, "Ready").unwrap().2.contains("nope"));
    let o = wait_stream_reason(&e.client, &e.ns, "onmanaged", &["ClusterNotReady"]).await;
    assert!(
        condition(&o, "Ready")
            .unwrap()
            .2
            .contains("not implemented")
    );
    let api = Api::<NatsCluster>::namespaced(e.client.clone(), &e.ns);
    wait_for(T, "managed cluster NotImplemented", || {
        let api = api.clone();
        async move {
            let c = api.get("managed").await.unwrap();
            condition(&c, "Ready").is_some_and(|(s, r, _)| s == "False" && r == "NotImplemented")
        }
    })
    .await
    .unwrap();
    // Creating the missing cluster lets the waiting object proceed by itself.
    apply(
        &e.client,
        &e.ns,
        json!({
            "apiVersion": "nats-cdr.dev/v1alpha1", "kind": "NatsCluster",
            "metadata": {"name": "nope"}, "spec": {"external": {"url": e.nats.url()}}
        }),
    )
    .await;
    wait_stream_reason(&e.client, &e.ns, "orphan", &["Created", "InSync"]).await;
    op.stop().await;
}
