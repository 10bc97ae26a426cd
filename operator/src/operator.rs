//! The operator as a whole: leader election, and while leading, one controller per kind and
//! watched namespace, all wired the same way (`spawn::<R>`), sharing one [`Context`].

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use kube::api::Api;
use kube::runtime::controller::{self, Controller};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use nats_cdr_crds::{JetStreamConsumer, JetStreamStream, NatsCluster};
use nats_cdr_observability::Readiness;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::k8s::index::Index;
use crate::k8s::lease;
use crate::nats::Pool;
use crate::reconcile::{self, Context, Reconciler};
use crate::settings::Settings;
use crate::telemetry::Metrics;

/// Failure of the operator as a whole.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("leader election failed")]
    Leader(#[source] kube::Error),
}

/// The operator: build it, then [`Operator::run`] until shutdown.
pub struct Operator {
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
}

struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

type Elector = JoinHandle<Result<(), kube::Error>>;

/// Completes when leadership is lost (never, when the elector is gone).
async fn lost(leading: &mut watch::Receiver<bool>) {
    while leading.changed().await.is_ok() {
        if !*leading.borrow() {
            return;
        }
    }
    std::future::pending::<()>().await;
}

/// Completes when `stop` turns true.
fn stopped(stop: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut stop = stop.clone();
    async move {
        let _ = stop.wait_for(|s| *s).await;
    }
}

impl Operator {
    pub fn new(client: Client, settings: Settings) -> Self {
        Self {
            client,
            settings,
            metrics: Arc::new(Metrics::default()),
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
        let (stop_tx, stop) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let (lead_tx, leading) = watch::channel(self.settings.leader_election.is_none());
        let elector: Option<Elector> = self.settings.leader_election.clone().map(|lease| {
            tokio::spawn(lease::run(
                self.client.clone(),
                lease,
                lead_tx.clone(),
                stop.clone(),
            ))
        });
        // Without election the sender stays here, so that leadership never "changes". If this
        // future is dropped (the process is going down hard), the elector goes with it instead
        // of renewing a Lease nobody acts on.
        let _always_leading = lead_tx;
        let _elector_guard = AbortOnDrop(elector.as_ref().map(JoinHandle::abort_handle));
        self.lead(leading, stop).await;
        if let Some(elector) = elector {
            match elector.await {
                Ok(result) => result.map_err(Error::Leader)?,
                Err(error) => tracing::error!(%error, "leader election task failed"),
            }
        }
        Ok(())
    }

    /// Runs the controllers whenever this instance leads, until `stop`.
    async fn lead(&self, mut leading: watch::Receiver<bool>, stop_rx: watch::Receiver<bool>) {
        let mut stop = stop_rx.clone();
        loop {
            if *stop.borrow() {
                self.readiness.set_not_ready("shutting down");
                break;
            }
            self.readiness.set_ready();
            if !*leading.borrow_and_update() {
                self.metrics.leader.set(0);
                tokio::select! {
                    _ = leading.changed() => continue,
                    _ = stop.changed() => continue,
                }
            }
            self.metrics.leader.set(1);
            tracing::info!(identity = %self.settings.identity, "starting controllers");
            let (controllers, pool) = self.controllers(&stop_rx);
            tokio::pin!(controllers);
            tokio::select! {
                () = &mut controllers => {}
                () = lost(&mut leading) => {
                    tracing::warn!("lost the leader Lease: stopping controllers");
                }
                _ = stop.changed() => {
                    // Let the controllers finish their in-flight reconciles.
                    let _ = tokio::time::timeout(Duration::from_secs(10), controllers).await;
                }
            }
            // A standby needs no NATS connections; the next term starts afresh.
            pool.close_all().await;
            self.metrics.leader.set(0);
        }
    }

    /// Every controller of every watched namespace, until `stop` turns true, and the NATS pool
    /// they share.
    fn controllers(&self, stop: &watch::Receiver<bool>) -> (BoxFuture<'static, ()>, Arc<Pool>) {
        let clusters = self.build::<NatsCluster>(stop);
        let streams = self.build::<JetStreamStream>(stop);
        let consumers = self.build::<JetStreamConsumer>(stop);
        let index = Index {
            clusters: clusters.iter().map(Controller::store).collect(),
            streams: streams.iter().map(Controller::store).collect(),
            consumers: consumers.iter().map(Controller::store).collect(),
        };
        let pool = Arc::new(Pool::new(
            self.client.clone(),
            self.settings.nats_timeout,
            self.metrics.clone(),
        ));
        let ctx = Arc::new(Context::new(
            self.client.clone(),
            self.settings.clone(),
            self.metrics.clone(),
            pool.clone(),
            index,
        ));
        let mut all = spawn(clusters, &ctx);
        all.extend(spawn(streams, &ctx));
        all.extend(spawn(consumers, &ctx));
        all.extend(self.deletions::<NatsCluster>(&ctx, stop));
        let run = Box::pin(async move {
            futures::future::join_all(all).await;
        });
        (run, pool)
    }

    fn namespaces(&self) -> Vec<Option<String>> {
        if self.settings.namespaces.is_empty() {
            vec![None]
        } else {
            self.settings.namespaces.iter().cloned().map(Some).collect()
        }
    }

    fn api<R: Reconciler>(&self, namespace: &Option<String>) -> Api<R> {
        match namespace {
            Some(ns) => Api::namespaced(self.client.clone(), ns),
            None => Api::all(self.client.clone()),
        }
    }

    /// One controller of kind `R` per watched namespace.
    fn build<R: Reconciler>(&self, stop: &watch::Receiver<bool>) -> Vec<Controller<R>> {
        let config = controller::Config::default().concurrency(self.settings.concurrency);
        self.namespaces()
            .iter()
            .map(|ns| {
                Controller::new(self.api::<R>(ns), watcher::Config::default())
                    .with_config(config.clone())
                    .graceful_shutdown_on(stopped(stop))
            })
            .collect()
    }

    /// For a kind without a finalizer, a watch that tells the frame (and the kind) when an
    /// object is deleted, so that what is held for it is let go.
    fn deletions<R: Reconciler>(
        &self,
        ctx: &Arc<Context>,
        stop: &watch::Receiver<bool>,
    ) -> Vec<BoxFuture<'static, ()>> {
        if R::EXTERNAL_STATE {
            return Vec::new();
        }
        let namespaces = self.namespaces();
        namespaces
            .iter()
            .map(|ns| {
                let events = watcher(self.api::<R>(ns), watcher::Config::default()).default_backoff();
                let (ctx, stopped) = (ctx.clone(), stopped(stop));
                let deleted = events.for_each(move |event| {
                    let ctx = ctx.clone();
                    async move {
                        if let Ok(watcher::Event::Delete(obj)) = event {
                            tracing::debug!(kind = R::KIND.as_str(), name = %obj.name_any(), "deleted");
                            reconcile::forget(Arc::new(obj), &ctx).await;
                        }
                    }
                });
                Box::pin(async move {
                    tokio::select! {
                        () = deleted => {}
                        () = stopped => {}
                    }
                }) as BoxFuture<'static, ()>
            })
            .collect()
    }
}

/// Runs `controllers` of kind `R` in the frame.
fn spawn<R: Reconciler>(
    controllers: Vec<Controller<R>>,
    ctx: &Arc<Context>,
) -> Vec<BoxFuture<'static, ()>> {
    controllers
        .into_iter()
        .map(|c| {
            let run = c.run(
                reconcile::reconcile::<R>,
                reconcile::error_policy::<R>,
                ctx.clone(),
            );
            Box::pin(run.for_each(|_| async {})) as BoxFuture<'static, ()>
        })
        .collect()
}
