//! One connection per `NatsCluster`, shared by every reconcile.
//!
//! Each cluster has a slot of its own with its own lock, held only to read or change the slot
//! (never across a network call), so one unreachable cluster never holds up reconciles of the
//! others. Connecting runs in a task of its own: the reconciles of a cluster's first connection
//! wait for it; once a cluster has failed, its reconciles get the last failure at once while a
//! retry runs in the background at most every `timeout`.
//!
//! A connection is rebuilt when its NatsCluster changes (uid, generation) or when a credentials
//! Secret changes (resourceVersion): the Secrets are re-read by the NatsCluster controller on
//! every resync ([`Freshness::Recheck`]) and by any reconcile that finds the connection down.
//! When only the Secrets changed, the old connection keeps serving until the new one is up (make
//! before break): a Secret updated before the server, or new credentials the server refuses, do
//! not interrupt the reconciles. [`Pool::close`] closes the connection of a deleted NatsCluster.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nats_cdr_crds::nats_cluster::{ExternalCluster, NatsCluster};
use tokio::sync::watch;

use super::credentials::Credentials;
use super::{Connection, Error, redact};
use crate::telemetry::{Metrics, describe};

/// Whether the credentials Secrets are read again before a cached connection is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Use the connection while the NatsCluster is unchanged (re-read the Secrets only while it
    /// is down).
    Cached,
    /// Re-read the Secrets first, and reconnect when they changed.
    Recheck,
}

/// The connections, keyed by `<namespace>/<name>` of the NatsCluster.
pub(crate) struct Pool {
    client: kube::Client,
    timeout: Duration,
    metrics: Arc<Metrics>,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

/// What identifies the configuration a connection was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    /// `<uid>/<generation>` of the NatsCluster.
    object: String,
    /// `<secret>@<resourceVersion>` of each Secret it names.
    secrets: Vec<String>,
}

/// Why the last attempt failed (cheap to clone: every waiting reconcile gets it).
#[derive(Debug, Clone)]
enum Failure {
    Connect(Arc<async_nats::ConnectError>),
    Timeout(Duration),
    Setup(String),
}

impl Failure {
    fn into_error(self, cluster: &str) -> Error {
        let cluster = cluster.to_owned();
        match self {
            Self::Connect(source) => Error::Connect { cluster, source },
            Self::Timeout(after) => Error::ConnectTimeout { cluster, after },
            Self::Setup(message) => Error::ClusterNotReady { cluster, message },
        }
    }
}

type Outcome = Result<Connection, Failure>;

#[derive(Default)]
struct Slot(tokio::sync::Mutex<State>);

/// A connection in use, and what it was made with.
struct Live {
    fingerprint: Fingerprint,
    connection: Connection,
    /// Set when the connection is replaced or closed: its events no longer set the gauge.
    retired: Arc<AtomicBool>,
    /// When its Secrets were last found unchanged.
    checked: Instant,
}

impl Live {
    fn retire(self) {
        self.retired.store(true, Ordering::SeqCst);
        self.connection.close();
    }
}

#[derive(Default)]
enum State {
    #[default]
    Empty,
    Connecting {
        fingerprint: Fingerprint,
        done: watch::Receiver<Option<Outcome>>,
        /// The failure of the attempt before this one: callers get it instead of waiting.
        previous: Option<Failure>,
        /// The connection made with the previous Secrets, serving until this one is up.
        fallback: Option<Live>,
    },
    Ready(Live),
    Failed {
        fingerprint: Fingerprint,
        failure: Failure,
        at: Instant,
    },
}

impl State {
    fn fingerprint(&self) -> Option<&Fingerprint> {
        match self {
            Self::Empty => None,
            Self::Ready(live) => Some(&live.fingerprint),
            Self::Connecting { fingerprint, .. } | Self::Failed { fingerprint, .. } => {
                Some(fingerprint)
            }
        }
    }

    /// Empties the slot, handing back a connected connection to the same NatsCluster object
    /// (`object`) and closing any other.
    fn take_fallback(&mut self, object: &str) -> Option<Live> {
        let live = match std::mem::take(self) {
            Self::Ready(live) => live,
            Self::Connecting {
                fallback: Some(live),
                ..
            } => live,
            _ => return None,
        };
        if live.fingerprint.object == object && live.connection.is_connected() {
            Some(live)
        } else {
            live.retire();
            None
        }
    }

    /// Empties the slot, closing what it held.
    fn retire(&mut self) {
        match std::mem::take(self) {
            Self::Ready(live)
            | Self::Connecting {
                fallback: Some(live),
                ..
            } => live.retire(),
            _ => {}
        }
    }
}

/// Whether an attempt can still report (its task did not end without a word).
fn under_way(done: &watch::Receiver<Option<Outcome>>) -> bool {
    done.has_changed().is_ok()
}

/// What a caller does after looking at a slot.
enum Step {
    Done(Result<Connection, Error>),
    Wait(watch::Receiver<Option<Outcome>>),
}

/// The cluster a connection is for.
struct Target<'a> {
    key: String,
    namespace: String,
    uid: String,
    object: String,
    external: &'a ExternalCluster,
}

impl<'a> Target<'a> {
    fn of(cluster: &'a NatsCluster) -> Result<Self, Error> {
        let namespace = cluster.metadata.namespace.clone().unwrap_or_default();
        let name = cluster.metadata.name.clone().unwrap_or_default();
        let key = format!("{namespace}/{name}");
        let Some(external) = cluster.spec.external.as_ref() else {
            return Err(Error::ClusterNotReady {
                cluster: key,
                message: "managed NatsClusters are not implemented yet; use spec.external".into(),
            });
        };
        let uid = cluster.metadata.uid.clone().unwrap_or(name);
        let object = format!("{uid}/{}", cluster.metadata.generation.unwrap_or_default());
        Ok(Self {
            key,
            namespace,
            uid,
            object,
            external,
        })
    }
}

impl Pool {
    pub(crate) fn new(client: kube::Client, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            timeout,
            metrics,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, key: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(key.to_owned()).or_default().clone()
    }

    /// The shared connection of `cluster`, connecting first when there is none or the cluster
    /// or its Secrets changed since.
    pub(crate) async fn connect(
        &self,
        cluster: &NatsCluster,
        freshness: Freshness,
    ) -> Result<Connection, Error> {
        let target = Target::of(cluster)?;
        let slot = self.slot(&target.key);
        let needs_secrets = Credentials::needed(target.external);
        if freshness == Freshness::Cached || !needs_secrets {
            let step = self.cached(&slot, &target, needs_secrets).await;
            if let Some(step) = step {
                return self.finish(step, &target.key).await;
            }
        }
        let credentials = if needs_secrets {
            let c = Credentials::read(
                &self.client,
                &target.namespace,
                &target.key,
                target.external,
            );
            Some(c.await?)
        } else {
            None
        };
        let fingerprint = Fingerprint {
            object: target.object.clone(),
            secrets: credentials
                .as_ref()
                .map(|c| c.versions.clone())
                .unwrap_or_default(),
        };
        let step = self.settle(&slot, &target, fingerprint, credentials).await;
        self.finish(step, &target.key).await
    }

    /// The answer without reading any Secret, when the slot has one for this NatsCluster.
    async fn cached(&self, slot: &Slot, target: &Target<'_>, needs_secrets: bool) -> Option<Step> {
        let state = slot.0.lock().await;
        if state
            .fingerprint()
            .is_none_or(|f| f.object != target.object)
        {
            return None;
        }
        let failed = |failure: &Failure| Step::Done(Err(failure.clone().into_error(&target.key)));
        match &*state {
            State::Ready(live)
                if live.connection.is_connected()
                    || !needs_secrets
                    || live.checked.elapsed() < self.timeout =>
            {
                Some(Step::Done(Ok(live.connection.clone())))
            }
            State::Connecting {
                fallback: Some(live),
                ..
            } if live.connection.is_connected() => Some(Step::Done(Ok(live.connection.clone()))),
            State::Connecting {
                previous: Some(failure),
                ..
            } => Some(failed(failure)),
            State::Connecting { done, .. } if under_way(done) => Some(Step::Wait(done.clone())),
            State::Failed { failure, at, .. } if at.elapsed() < self.timeout => {
                Some(failed(failure))
            }
            _ => None,
        }
    }

    /// Uses, waits for, or starts the connection with `fingerprint`.
    async fn settle(
        &self,
        slot: &Arc<Slot>,
        target: &Target<'_>,
        fingerprint: Fingerprint,
        credentials: Option<Credentials>,
    ) -> Step {
        let mut state = slot.0.lock().await;
        let failed = |failure: Failure| Step::Done(Err(failure.into_error(&target.key)));
        let previous = match &mut *state {
            State::Ready(live) if live.fingerprint == fingerprint => {
                live.checked = Instant::now();
                return Step::Done(Ok(live.connection.clone()));
            }
            State::Connecting {
                fingerprint: f,
                done,
                previous,
                ..
            } if *f == fingerprint && under_way(done) => {
                return match previous {
                    Some(failure) => failed(failure.clone()),
                    None => Step::Wait(done.clone()),
                };
            }
            State::Failed {
                fingerprint: f,
                failure,
                at,
            } if *f == fingerprint => {
                if at.elapsed() < self.timeout {
                    return failed(failure.clone());
                }
                Some(failure.clone())
            }
            _ => None,
        };
        let fallback = state.take_fallback(&fingerprint.object);
        let (tx, rx) = watch::channel(None);
        *state = State::Connecting {
            fingerprint: fingerprint.clone(),
            done: rx.clone(),
            previous: previous.clone(),
            fallback,
        };
        drop(state);
        tokio::spawn(self.attempt(slot.clone(), target, fingerprint, credentials, tx));
        match previous {
            // A retry after a failure: nobody waits for it.
            Some(failure) => failed(failure),
            None => Step::Wait(rx),
        }
    }

    async fn finish(&self, step: Step, cluster: &str) -> Result<Connection, Error> {
        match step {
            Step::Done(result) => result,
            Step::Wait(mut done) => {
                let outcome = done
                    .wait_for(Option::is_some)
                    .await
                    .ok()
                    .and_then(|v| v.clone());
                outcome
                    .unwrap_or(Err(Failure::Timeout(self.timeout * 2)))
                    .map_err(|f| f.into_error(cluster))
            }
        }
    }

    /// One connection attempt, run as a task of its own; its outcome goes into the slot (unless
    /// the slot moved on meanwhile) and to the waiting reconciles.
    fn attempt(
        &self,
        slot: Arc<Slot>,
        target: &Target<'_>,
        fingerprint: Fingerprint,
        credentials: Option<Credentials>,
        done: watch::Sender<Option<Outcome>>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let opener = Opener {
            key: target.key.clone(),
            uid: target.uid.clone(),
            urls: target.external.url.clone(),
            timeout: self.timeout,
            metrics: self.metrics.clone(),
            retired: Arc::new(AtomicBool::new(false)),
        };
        let timeout = self.timeout;
        async move {
            let mut outcome = opener.open(credentials).await;
            let object = fingerprint.object.clone();
            let mut state = slot.0.lock().await;
            *state = match std::mem::take(&mut *state) {
                State::Connecting {
                    fingerprint: f,
                    fallback,
                    ..
                } if f == fingerprint => settled(fingerprint, &outcome, fallback, &opener, timeout),
                // Superseded (the cluster changed or was deleted meanwhile).
                other => {
                    if let Ok(connection) = &outcome {
                        opener.retired.store(true, Ordering::SeqCst);
                        connection.clone().close();
                    }
                    other
                }
            };
            // New credentials refused while the previous connection still serves: whoever waited
            // for this attempt carries on with that one (the object stays Ready through a
            // rotation whose Secret changed before the server did).
            if outcome.is_err()
                && let State::Ready(live) = &*state
                && live.fingerprint.object == object
            {
                outcome = Ok(live.connection.clone());
            }
            drop(state);
            let _ = done.send(Some(outcome));
        }
    }

    /// Closes every connection (the end of a leadership term).
    pub(crate) async fn close_all(&self) {
        let keys: Vec<String> = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.keys().cloned().collect()
        };
        for key in keys {
            self.close(&key).await;
        }
    }

    /// Closes the connection of a NatsCluster that was deleted, and forgets its gauge.
    pub(crate) async fn close(&self, key: &str) {
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.remove(key)
        };
        if let Some(slot) = slot {
            slot.0.lock().await.retire();
            tracing::info!(cluster = %key, "connection closed");
        }
        self.metrics.nats_forgotten(key);
    }
}

/// The slot after an attempt: the new connection (the fallback closed), else the fallback
/// (re-checked at the next look, as if its Secrets had not been read), else the failure.
fn settled(
    fingerprint: Fingerprint,
    outcome: &Outcome,
    fallback: Option<Live>,
    opener: &Opener,
    timeout: Duration,
) -> State {
    match (outcome, fallback) {
        (Ok(connection), fallback) => {
            if let Some(old) = fallback {
                old.retire();
            }
            State::Ready(Live {
                fingerprint,
                connection: connection.clone(),
                retired: opener.retired.clone(),
                checked: Instant::now(),
            })
        }
        (Err(failure), Some(old)) => {
            tracing::warn!(cluster = %opener.key, error = %describe(&failure.clone().into_error(&opener.key)), "new credentials refused; the previous connection keeps serving");
            State::Ready(Live {
                checked: Instant::now()
                    .checked_sub(timeout)
                    .unwrap_or_else(Instant::now),
                ..old
            })
        }
        (Err(failure), None) => State::Failed {
            fingerprint,
            failure: failure.clone(),
            at: Instant::now(),
        },
    }
}

/// Everything one connection attempt needs, owned (the attempt outlives the reconcile).
struct Opener {
    key: String,
    uid: String,
    urls: String,
    timeout: Duration,
    metrics: Arc<Metrics>,
    retired: Arc<AtomicBool>,
}

impl Opener {
    async fn open(&self, credentials: Option<Credentials>) -> Outcome {
        let mut options = self.options();
        if let Some(credentials) = credentials {
            options = credentials
                .apply(options, &self.key, &self.uid)
                .await
                .map_err(|e| Failure::Setup(describe(&e)))?;
        }
        let urls: Vec<&str> = self.urls.split(',').map(str::trim).collect();
        let limit = self.timeout * 2;
        let client = tokio::time::timeout(limit, options.connect(urls))
            .await
            .map_err(|_| Failure::Timeout(limit))?
            .map_err(|e| Failure::Connect(Arc::new(e)))?;
        if !self.retired.load(Ordering::SeqCst) {
            self.metrics.nats_connected(&self.key, true);
        }
        tracing::info!(cluster = %self.key, url = %redact(&self.urls), "connected to NATS");
        Ok(Connection::new(
            self.key.clone(),
            client,
            self.timeout,
            self.metrics.clone(),
        ))
    }

    fn options(&self) -> async_nats::ConnectOptions {
        let metrics = self.metrics.clone();
        let retired = self.retired.clone();
        let key = self.key.clone();
        async_nats::ConnectOptions::new()
            .name("nats-cdr-operator")
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout))
            .reconnect_delay_callback(|attempts| {
                // Capped exponential backoff: 100 ms, 200 ms, ... up to 5 s.
                let exp = u32::try_from(attempts.min(6)).unwrap_or(6);
                Duration::from_millis(100 * 2u64.pow(exp)).min(Duration::from_secs(5))
            })
            .event_callback(move |event| {
                let (metrics, retired, key) = (metrics.clone(), retired.clone(), key.clone());
                async move {
                    // A replaced or closed connection no longer speaks for its cluster.
                    if retired.load(Ordering::SeqCst) {
                        return;
                    }
                    match event {
                        async_nats::Event::Connected => metrics.nats_connected(&key, true),
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            metrics.nats_connected(&key, false);
                        }
                        _ => {}
                    }
                }
            })
    }
}
