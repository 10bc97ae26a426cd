//! What every reconcile shares: the kube client, the settings, metrics, the NATS pool, the one
//! Event recorder, the watch caches, and the per-object state of the frame.

use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, Resource};
use nats_cdr_crds::{ClusterRef, NatsCluster};

use super::backoff::{Backoff, LiveFigures, jittered};
use super::{Reason, Requeue};
use crate::k8s::index::Index;
use crate::k8s::{FIELD_MANAGER, object_key};
use crate::nats::{self, Connection, Freshness, Pool};
use crate::settings::Settings;
use crate::status;
use crate::telemetry::Metrics;

pub(crate) struct Context {
    pub(crate) client: Client,
    pub(crate) settings: Settings,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) recorder: Recorder,
    pub(crate) index: Index,
    pub(crate) backoff: Backoff,
    pub(crate) live: LiveFigures,
}

impl Context {
    pub(crate) fn new(
        client: Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        pool: Arc<Pool>,
        index: Index,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(settings.identity.clone()),
            },
        );
        Self {
            backoff: Backoff::new(settings.min_backoff, settings.max_backoff),
            live: LiveFigures::new(settings.status_refresh),
            client,
            settings,
            metrics,
            pool,
            recorder,
            index,
        }
    }

    /// A NatsCluster from the cache, or from the apiserver when its namespace is not watched.
    pub(crate) async fn cluster(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<NatsCluster>, nats::Error> {
        if let Some(found) = self.index.cluster(namespace, name) {
            return Ok(found);
        }
        let key = format!("{namespace}/{name}");
        let api: Api<NatsCluster> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(cluster)) => Ok(Arc::new(cluster)),
            Ok(None) => Err(nats::Error::ClusterNotFound(key)),
            Err(source) => Err(nats::Error::Kube {
                cluster: key,
                source,
            }),
        }
    }

    /// The shared connection to the NatsCluster `cluster_ref` names, seen from an object in
    /// `namespace`.
    pub(crate) async fn connect(
        &self,
        cluster_ref: &ClusterRef,
        namespace: Option<String>,
    ) -> Result<Connection, nats::Error> {
        let cluster = self
            .cluster(&cluster_ref.namespace_for(namespace), &cluster_ref.name)
            .await?;
        self.pool.connect(&cluster, Freshness::Cached).await
    }

    /// The first read of a reconcile on the NatsCluster `cluster_ref` names, retried once on a
    /// re-checked connection when the shared one was dropped under it (a server restart, or a
    /// credential rotation whose server side just kicked the old login): the object does not
    /// flip to NatsUnavailable for what a reconnect repairs at once. Returns the connection the
    /// read succeeded on, for the writes that follow.
    pub(crate) async fn first_read<T, F, Fut>(
        &self,
        cluster_ref: &ClusterRef,
        namespace: Option<String>,
        read: F,
    ) -> Result<(Connection, T), nats::Error>
    where
        F: Fn(Connection) -> Fut,
        Fut: std::future::Future<Output = Result<T, nats::Error>>,
    {
        let conn = self.connect(cluster_ref, namespace.clone()).await?;
        match read(conn.clone()).await {
            Err(nats::Error::Disconnected { .. }) => {
                let cluster = self
                    .cluster(&cluster_ref.namespace_for(namespace), &cluster_ref.name)
                    .await?;
                let conn = self.pool.connect(&cluster, Freshness::Recheck).await?;
                let value = read(conn.clone()).await?;
                Ok((conn, value))
            }
            other => other.map(|value| (conn, value)),
        }
    }

    /// The jittered resync delay of an object in sync.
    pub(crate) fn resync<K: Resource>(&self, obj: &K) -> Duration {
        jittered(self.settings.resync_period, &object_key(obj))
    }

    /// The Action for `requeue`.
    pub(crate) fn action<K: Resource>(&self, requeue: Requeue, obj: &K) -> Action {
        let s = &self.settings;
        match requeue {
            Requeue::Backoff => Action::requeue(self.backoff.next(&object_key(obj))),
            Requeue::Resync => Action::requeue(self.resync(obj)),
            Requeue::Poll => Action::requeue(s.dependency_poll.max(s.min_backoff)),
            Requeue::Watch => Action::requeue(self.resync(obj).min(Duration::from_secs(30))),
            Requeue::After(delay) => Action::requeue(delay),
            Requeue::AwaitChange => Action::await_change(),
        }
    }

    /// Publishes an Event about `obj` with the one recorder.
    pub(crate) async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        warning: bool,
        reason: Reason,
        action: &str,
        note: String,
    ) {
        status::publish(&self.recorder, obj, warning, reason.as_str(), action, note).await;
    }

    /// Drops the per-object state of an object that is gone.
    pub(crate) fn forget(&self, key: &str) {
        self.backoff.reset(key);
        self.live.forget(key);
    }
}
