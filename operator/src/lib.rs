//! The nats-cdr operator: controllers for `NatsCluster` (external mode), `JetStreamStream` and
//! `JetStreamConsumer`, a shared NATS connection pool, metrics, Events, and Lease-based leader
//! election. `main.rs` is a thin shell over [`Operator`].

pub mod cluster;
pub mod consumer;
pub mod leader;
pub mod metrics;
pub mod nats;
pub mod settings;
pub mod status;
pub mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use kube::api::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use nats_cdr_crds::{JetStreamConsumer, JetStreamStream, NatsCluster};
use nats_cdr_observability::Readiness;
use tokio::sync::watch;

pub use metrics::Metrics;
pub use settings::{Args, Settings};

/// Failure of the operator as a whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election failed")]
    Leader(#[source] kube::Error),
}

impl Error {
    /// Short category for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Leader(_) => "LeaderElection",
        }
    }
}

/// What every reconcile shares: the kube client, the NATS pool, metrics, the Event recorder,
/// the caches of the watched objects, and per-object backoff.
pub struct Context {
    pub client: Client,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    pub pool: Arc<nats::Pool>,
    pub recorder: Recorder,
    clusters: Vec<Store<NatsCluster>>,
    streams: Vec<Store<JetStreamStream>>,
    consumers: Vec<Store<JetStreamConsumer>>,
    backoff: Mutex<HashMap<String, u32>>,
    live: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Context {
    /// A NatsCluster from the cache, or the apiserver when it is not watched.
    pub async fn cluster(&self, ns: &str, name: &str) -> Result<Arc<NatsCluster>, nats::Error> {
        let store = self.clusters.iter().find(|s| {
            s.get(&kube::runtime::reflector::ObjectRef::new(name).within(ns))
                .is_some()
        });
        self.pool.cluster(store, ns, name).await
    }

    /// Every watched JetStreamStream naming stream `name` on cluster `cluster_key`.
    pub fn streams_named(&self, cluster_key: &str, name: &str) -> Vec<Arc<JetStreamStream>> {
        self.streams
            .iter()
            .flat_map(|s| s.state())
            .filter(|o| {
                o.spec.name == name && o.spec.cluster_ref.key_for(o.namespace()) == cluster_key
            })
            .collect()
    }

    /// Every watched JetStreamConsumer naming `stream`/`durable` on cluster `cluster_key`.
    pub fn consumers_named(
        &self,
        cluster_key: &str,
        stream: &str,
        durable: &str,
    ) -> Vec<Arc<JetStreamConsumer>> {
        self.consumers
            .iter()
            .flat_map(|s| s.state())
            .filter(|o| {
                o.spec.stream_name == stream
                    && o.spec.durable_name == durable
                    && o.spec.cluster_ref.key_for(o.namespace()) == cluster_key
            })
            .collect()
    }

    fn key<K: Resource>(obj: &K) -> String {
        obj.meta().uid.clone().unwrap_or_else(|| obj.name_any())
    }

    /// The next retry delay of a failing object: 1 s, 2 s, 4 s, ... up to `max_backoff`.
    pub fn next_backoff<K: Resource>(&self, obj: &K) -> Duration {
        let mut map = lock(&self.backoff);
        let attempts = map.entry(Self::key(obj)).or_insert(0);
        let exp = (*attempts).min(20);
        *attempts = attempts.saturating_add(1);
        let delay = self.settings.min_backoff.saturating_mul(1u32 << exp);
        settings::jittered(delay.min(self.settings.max_backoff), &Self::key(obj))
            .min(self.settings.max_backoff + self.settings.max_backoff / 10)
    }

    /// Forgets the failures of an object that reconciled.
    pub fn reset_backoff<K: Resource>(&self, obj: &K) {
        lock(&self.backoff).remove(&Self::key(obj));
    }

    /// The jittered resync delay of an object in sync.
    pub fn resync<K: Resource>(&self, obj: &K) -> Duration {
        settings::jittered(self.settings.resync_period, &Self::key(obj))
    }

    /// Whether live figures of `uid` are due for a status write.
    pub fn live_due(&self, uid: &str) -> bool {
        lock(&self.live)
            .get(uid)
            .is_none_or(|at| at.elapsed() >= self.settings.status_refresh)
    }

    /// Notes that live figures of `uid` were just written.
    pub fn live_written(&self, uid: &str) {
        lock(&self.live).insert(uid.to_owned(), Instant::now());
    }
}

struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// Completes when leadership is lost (never, when the elector is gone).
async fn lost(leading: &mut watch::Receiver<bool>) {
    while leading.changed().await.is_ok() {
        if !*leading.borrow() {
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// The operator: build it, then [`Operator::run`] until shutdown.
pub struct Operator {
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    pool: Arc<nats::Pool>,
    readiness: Arc<Readiness>,
}

impl Operator {
    pub fn new(client: Client, settings: Settings) -> Self {
        let metrics = Arc::new(Metrics::default());
        let pool = Arc::new(nats::Pool::new(
            client.clone(),
            settings.nats_timeout,
            metrics.clone(),
        ));
        Self {
            client,
            settings,
            metrics,
            pool,
            readiness: Arc::new(Readiness::new("starting")),
        }
    }

    /// The metrics (register them with [`Metrics::register`] to serve them).
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Readiness for `/readyz`: ready once running, as leader or as standby (a standby that
    /// reported not-ready would stall a rolling update of a two-replica Deployment). The
    /// `nats_cdr_operator_leader` gauge says which instance leads.
    pub fn readiness(&self) -> Arc<Readiness> {
        self.readiness.clone()
    }

    /// Runs until `shutdown` completes. With leader election the controllers run only while
    /// this instance holds the Lease; on losing it they stop and wait to lead again.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let (lead_tx, mut lead_rx) = watch::channel(self.settings.leader_election.is_none());
        // Without election the sender stays here, so that leadership never "changes".
        let mut _always_leading = None;
        let elector = match self.settings.leader_election.clone() {
            Some(lease) => Some(tokio::spawn(leader::run(
                self.client.clone(),
                lease,
                lead_tx,
                stop_rx.clone(),
            ))),
            None => {
                _always_leading = Some(lead_tx);
                None
            }
        };
        // If this future is dropped (the process is going down hard), the elector goes with it
        // instead of renewing a Lease nobody acts on.
        let _elector_guard = AbortOnDrop(elector.as_ref().map(|h| h.abort_handle()));
        let mut stop = stop_rx.clone();
        loop {
            if *stop.borrow() {
                self.readiness.set_not_ready("shutting down");
            }
            if *stop.borrow() {
                break;
            }
            if !*lead_rx.borrow_and_update() {
                self.readiness.set_ready();
                self.metrics.leader.set(0);
                tokio::select! {
                    _ = lead_rx.changed() => continue,
                    _ = stop.changed() => continue,
                }
            }
            self.metrics.leader.set(1);
            self.readiness.set_ready();
            tracing::info!(identity = %self.settings.identity, "starting controllers");
            let controllers = self.controllers(stop_rx.clone());
            tokio::pin!(controllers);
            tokio::select! {
                () = &mut controllers => {}
                () = lost(&mut lead_rx) => {
                    tracing::warn!("lost the leader Lease: stopping controllers");
                }
                _ = stop.changed() => {
                    // Let the controllers finish their in-flight reconciles.
                    let _ = tokio::time::timeout(Duration::from_secs(10), controllers).await;
                }
            }
            self.metrics.leader.set(0);
        }
        if let Some(elector) = elector {
            match elector.await {
                Ok(result) => result.map_err(Error::Leader)?,
                Err(error) => tracing::error!(%error, "leader election task failed"),
            }
        }
        Ok(())
    }

    /// All controllers of every watched namespace, until `stop` turns true.
    fn controllers(&self, stop: watch::Receiver<bool>) -> BoxFuture<'static, ()> {
        let namespaces: Vec<Option<String>> = if self.settings.namespaces.is_empty() {
            vec![None]
        } else {
            self.settings.namespaces.iter().cloned().map(Some).collect()
        };
        fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
        where
            K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
        {
            match ns {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            }
        }
        let stopped = move || {
            let mut stop = stop.clone();
            async move {
                let _ = stop.wait_for(|s| *s).await;
            }
        };
        let cfg = controller::Config::default().concurrency(self.settings.concurrency);
        let wc = watcher::Config::default();
        let mut clusters = Vec::new();
        let mut streams = Vec::new();
        let mut consumers = Vec::new();
        for ns in &namespaces {
            let c = Controller::new(api::<NatsCluster>(&self.client, ns), wc.clone())
                .with_config(cfg.clone())
                .graceful_shutdown_on(stopped());
            let s = Controller::new(api::<JetStreamStream>(&self.client, ns), wc.clone())
                .with_config(cfg.clone())
                .graceful_shutdown_on(stopped());
            let k = Controller::new(api::<JetStreamConsumer>(&self.client, ns), wc.clone())
                .with_config(cfg.clone())
                .graceful_shutdown_on(stopped());
            clusters.push(c);
            streams.push(s);
            consumers.push(k);
        }
        let ctx = Arc::new(Context {
            client: self.client.clone(),
            settings: self.settings.clone(),
            metrics: self.metrics.clone(),
            pool: self.pool.clone(),
            recorder: Recorder::new(
                self.client.clone(),
                Reporter {
                    controller: "nats-cdr-operator".into(),
                    instance: Some(self.settings.identity.clone()),
                },
            ),
            clusters: clusters.iter().map(Controller::store).collect(),
            streams: streams.iter().map(Controller::store).collect(),
            consumers: consumers.iter().map(Controller::store).collect(),
            backoff: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
        });
        let mut all: Vec<BoxFuture<'static, ()>> = Vec::new();
        for c in clusters {
            all.push(Box::pin(
                c.run(cluster::reconcile, cluster::error_policy, ctx.clone())
                    .for_each(|_| async {}),
            ));
        }
        for s in streams {
            all.push(Box::pin(
                s.run(stream::reconcile, stream::error_policy, ctx.clone())
                    .for_each(|_| async {}),
            ));
        }
        for k in consumers {
            all.push(Box::pin(
                k.run(consumer::reconcile, consumer::error_policy, ctx.clone())
                    .for_each(|_| async {}),
            ));
        }
        Box::pin(async move {
            futures::future::join_all(all).await;
        })
    }
}
