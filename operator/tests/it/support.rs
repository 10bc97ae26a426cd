//! The harness: the operator in-process, a namespace and a nats-server per test, typed generic
//! helpers over the three kinds (`apply`, `get`, `wait_reason::<K>`), builders for test objects,
//! and the `nats` CLI, run as a child process without blocking the runtime the operator runs on.

use std::fmt::Debug;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::core::NamespaceResourceScope;
use kube::{Client, Resource};
use nats_cdr_crds::{JetStreamConsumer, JetStreamStream, NatsCluster};
use nats_cdr_operator::{Metrics, Operator, Settings};
use nats_cdr_testsupport::{
    NatsOptions, NatsServer, binaries, install_crds, shared_api_cluster, wait_for,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;

/// How long a test waits for something that should happen.
pub const T: Duration = Duration::from_secs(30);
/// One hour in nanoseconds (NATS durations on the wire).
pub const HOUR: u64 = 3_600_000_000_000;

/// Short periods so that resyncs, backoff and polls happen within a test.
pub fn settings(ns: &str) -> Settings {
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

/// The operator running in this process.
pub struct Running {
    stop: watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<()>,
    pub metrics: Arc<Metrics>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(20), self.task).await;
    }
}

pub fn start(client: Client, settings: Settings) -> Running {
    let operator = Operator::new(client, settings);
    let metrics = operator.metrics();
    let (stop, mut rx) = watch::channel(false);
    let task = tokio::spawn(async move {
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

/// A namespace of the shared control plane.
pub struct Env {
    pub client: Client,
    pub ns: String,
}

/// A namespace with a nats-server and a NatsCluster `nats` pointing at it.
pub struct NatsEnv {
    pub env: Env,
    pub nats: NatsServer,
}

impl std::ops::Deref for NatsEnv {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

impl Env {
    /// A new namespace (`<prefix>-...`) in the control plane shared by this test binary.
    pub async fn new(prefix: &str) -> Env {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .with_test_writer()
            .try_init();
        let cluster = shared_api_cluster().await.expect("test cluster");
        let client = cluster.client().await.expect("client");
        install_crds(&client).await.expect("CRDs");
        let ns = cluster.new_namespace(prefix).await.expect("namespace");
        Env { client, ns }
    }

    /// With a one-node nats-server.
    pub async fn with_nats(prefix: &str) -> NatsEnv {
        Self::with_nats_nodes(prefix, 1).await
    }

    /// With a nats-server of `nodes` nodes.
    pub async fn with_nats_nodes(prefix: &str, nodes: usize) -> NatsEnv {
        let env = Self::new(prefix).await;
        let nats = NatsServer::start_with(NatsOptions {
            nodes,
            ..NatsOptions::default()
        })
        .expect("nats-server");
        env.apply(nats_cluster("nats", &nats.urls())).await;
        NatsEnv { env, nats }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn start(&self) -> Running {
        start(self.client.clone(), settings(&self.ns))
    }

    /// Server-side applies `obj` (checked against its type first) as field manager `test`.
    pub async fn apply<K: Kind>(&self, obj: Obj<K>) -> K {
        let typed = obj.build();
        let name = typed.meta().name.clone().expect("name");
        self.api::<K>()
            .patch(
                &name,
                &PatchParams::apply("test").force(),
                &Patch::Apply(&obj.value),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {} {name}: {e}", K::kind(&())))
    }

    /// Merge-patches `metadata.annotations`.
    pub async fn annotate<K: Kind>(&self, name: &str, key: &str, value: &str) {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.api::<K>()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .unwrap();
    }

    pub async fn get<K: Kind>(&self, name: &str) -> Option<K> {
        self.api::<K>().get_opt(name).await.unwrap()
    }

    pub async fn delete<K: Kind>(&self, name: &str) {
        let _ = self
            .api::<K>()
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    pub async fn wait_gone<K: Kind>(&self, name: &str) {
        wait_for(T, &format!("{} {name} gone", K::kind(&())), || async {
            self.get::<K>(name).await.is_none()
        })
        .await
        .unwrap();
    }

    /// Waits until the `Ready` condition of `name` has one of `reasons`; returns the object.
    pub async fn wait_reason<K: Kind>(&self, name: &str, reasons: &[&str]) -> K {
        self.wait_condition::<K>(name, &format!("Ready reason in {reasons:?}"), |c| {
            c.type_ == "Ready" && reasons.contains(&c.reason.as_str())
        })
        .await
    }

    /// Waits until some condition of `name` matches `check`; returns the object.
    pub async fn wait_condition<K: Kind>(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Condition) -> bool,
    ) -> K {
        let what = format!("{} {name}: {what}", K::kind(&()));
        let result = wait_for(T, &what, || async {
            let o = self.get::<K>(name).await;
            o.is_some_and(|o| o.conditions().iter().any(&check))
        })
        .await;
        let last = self.get::<K>(name).await;
        if result.is_err() {
            panic!("{what}: last seen {last:#?}");
        }
        last.unwrap()
    }
}

/// The kinds the helpers work with.
pub trait Kind:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
    fn conditions(&self) -> &[Condition];
}

macro_rules! kind {
    ($kind:ty) => {
        impl Kind for $kind {
            fn conditions(&self) -> &[Condition] {
                self.status
                    .as_ref()
                    .map_or(&[], |s| s.common.conditions.as_slice())
            }
        }
    };
}

kind!(NatsCluster);
kind!(JetStreamStream);
kind!(JetStreamConsumer);

/// (status, reason, message) of condition `type_`.
pub fn condition<K: Kind>(obj: &K, type_: &str) -> Option<(String, String, String)> {
    obj.conditions()
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// A test object of kind `K`, as the JSON a person would apply.
pub struct Obj<K> {
    value: Value,
    kind: PhantomData<K>,
}

impl<K: Kind> Obj<K> {
    fn new(name: &str, spec: Value) -> Self {
        let value = json!({
            "apiVersion": K::api_version(&()), "kind": K::kind(&()),
            "metadata": {"name": name}, "spec": spec,
        });
        Self {
            value,
            kind: PhantomData,
        }
    }

    /// Sets `fields` in the spec.
    pub fn spec(mut self, fields: Value) -> Self {
        for (k, v) in fields.as_object().expect("an object") {
            self.value["spec"][k] = v.clone();
        }
        self
    }

    /// Removes a field of the spec.
    pub fn without(mut self, field: &str) -> Self {
        if let Some(spec) = self.value["spec"].as_object_mut() {
            spec.remove(field);
        }
        self
    }

    /// Points `spec.clusterRef` at NatsCluster `name`.
    pub fn cluster(mut self, name: &str) -> Self {
        self.value["spec"]["clusterRef"] = json!({"name": name});
        self
    }

    /// The typed object (fails the test when the JSON does not fit the type).
    pub fn build(&self) -> K {
        serde_json::from_value(self.value.clone()).expect("object fits its type")
    }
}

/// JetStreamStream `name` for stream `stream` on NatsCluster `nats`, subjects `<stream>.>`.
pub fn stream(name: &str, stream: &str) -> Obj<JetStreamStream> {
    Obj::new(
        name,
        json!({"clusterRef": {"name": "nats"}, "name": stream,
               "subjects": [format!("{}.>", stream.to_lowercase())]}),
    )
}

/// JetStreamConsumer `name` for `stream`/`durable` on NatsCluster `nats`.
pub fn consumer(name: &str, stream: &str, durable: &str) -> Obj<JetStreamConsumer> {
    Obj::new(
        name,
        json!({"clusterRef": {"name": "nats"}, "streamName": stream, "durableName": durable}),
    )
}

/// NatsCluster `name`, external, at `url`.
pub fn nats_cluster(name: &str, url: &str) -> Obj<NatsCluster> {
    Obj::new(name, json!({"external": {"url": url}}))
}

/// Runs the `nats` CLI against `url`: (success, stdout + stderr).
pub async fn nats(url: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(binaries::find("nats").expect("nats CLI"))
        .arg("--server")
        .arg(url)
        .args(args)
        .env("NATS_CONTEXT", "")
        .output()
        .await
        .expect("run nats");
    outcome(&out)
}

/// (success, stdout + stderr) of a finished command.
pub fn outcome(out: &std::process::Output) -> (bool, String) {
    let text = [&out.stdout, &out.stderr].map(|b| String::from_utf8_lossy(b).into_owned());
    (out.status.success(), text.concat())
}

/// `nats stream info NAME -j` as JSON, or None when the stream does not exist.
pub async fn server_stream(url: &str, name: &str) -> Option<Value> {
    let (ok, out) = nats(url, &["stream", "info", name, "-j"]).await;
    ok.then(|| serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")))
}

/// `nats consumer info STREAM DURABLE -j` as JSON, or None when it does not exist.
pub async fn server_consumer(url: &str, stream: &str, durable: &str) -> Option<Value> {
    let (ok, out) = nats(url, &["consumer", "info", stream, durable, "-j"]).await;
    ok.then(|| serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")))
}

/// Polls `probe` (what the server shows) until `check` holds.
pub async fn wait_server<F, Fut>(what: &str, check: impl Fn(Option<&Value>) -> bool, probe: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<Value>>,
{
    let start = std::time::Instant::now();
    loop {
        let v = probe().await;
        if check(v.as_ref()) {
            return;
        }
        if start.elapsed() > T {
            panic!("{what}: server shows {v:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
