//! Typed JetStream API calls on one connection: each with a timeout, counted per [`Op`], failing
//! fast while the client is disconnected. "Not found" answers are values ([`Lookup`]), not
//! errors.

use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, response::Response, stream};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Error;
use super::codes::{CONSUMER_NOT_FOUND, STREAM_NOT_FOUND};
use crate::telemetry::{Metrics, Op};

/// What a read found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Lookup<T> {
    Found(T),
    /// The stream does not exist.
    NoStream,
    /// The stream exists, the consumer does not.
    NoConsumer,
}

/// A consumer as the server reports it: its configuration as wire JSON (compared field by field)
/// and the live figures.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub(crate) struct ConsumerInfo {
    #[serde(default)]
    pub(crate) config: Value,
    #[serde(default)]
    pub(crate) num_pending: Option<u64>,
    #[serde(default)]
    pub(crate) num_ack_pending: Option<u64>,
    #[serde(default)]
    pub(crate) num_redelivered: Option<u64>,
    #[serde(default)]
    pub(crate) num_waiting: Option<u64>,
}

/// `action` of a `CONSUMER.CREATE` request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConsumerAction {
    Create,
    Update,
}

/// A connection to one cluster, cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Connection(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// `<namespace>/<name>` of the NatsCluster.
    cluster: String,
    client: async_nats::Client,
    js: jetstream::Context,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Connection {
    pub(super) fn new(
        cluster: String,
        client: async_nats::Client,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let js = jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client.clone());
        Self(Arc::new(Inner {
            cluster,
            client,
            js,
            timeout,
            metrics,
        }))
    }

    /// `<namespace>/<name>` of the NatsCluster.
    pub(crate) fn cluster(&self) -> &str {
        &self.0.cluster
    }

    /// Whether the client is connected right now.
    pub(crate) fn is_connected(&self) -> bool {
        matches!(self.0.client.connection_state(), State::Connected)
    }

    /// What the server said about itself on connect.
    pub(crate) fn server_info(&self) -> async_nats::ServerInfo {
        self.0.client.server_info()
    }

    /// Closes the connection (in the background: a dead server must not hold anyone up).
    pub(super) fn close(self) {
        let (client, timeout) = (self.0.client.clone(), self.0.timeout);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(timeout, client.drain()).await;
        });
    }

    /// One JetStream API request (`subject` below `$JS.API.`), with a timeout.
    async fn request<T: Serialize, V: DeserializeOwned>(
        &self,
        op: Op,
        subject: String,
        payload: &T,
    ) -> Result<V, Error> {
        self.0.metrics.nats_request(op);
        let cluster = || self.0.cluster.clone();
        // While the client is disconnected a request would only wait for the timeout: fail fast
        // (the client keeps reconnecting in the background).
        if matches!(self.0.client.connection_state(), State::Disconnected) {
            return Err(Error::Disconnected {
                cluster: cluster(),
                op,
            });
        }
        let answer: Response<V> =
            tokio::time::timeout(self.0.timeout, self.0.js.request(subject, payload))
                .await
                .map_err(|_| Error::TimedOut {
                    cluster: cluster(),
                    op,
                    after: self.0.timeout,
                })?
                .map_err(|source| Error::Request {
                    cluster: cluster(),
                    op,
                    source,
                })?;
        match answer {
            Response::Ok(value) => Ok(value),
            Response::Err { error } => Err(Error::Api {
                op,
                code: error.error_code().0,
                description: error.to_string(),
            }),
        }
    }

    /// A request whose "not found" answers become [`Lookup`] values.
    async fn lookup<T: Serialize, V: DeserializeOwned>(
        &self,
        op: Op,
        subject: String,
        payload: &T,
    ) -> Result<Lookup<V>, Error> {
        match self.request(op, subject, payload).await {
            Ok(v) => Ok(Lookup::Found(v)),
            Err(Error::Api { code, .. }) if code == STREAM_NOT_FOUND => Ok(Lookup::NoStream),
            Err(Error::Api { code, .. }) if code == CONSUMER_NOT_FOUND => Ok(Lookup::NoConsumer),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn stream_info(&self, name: &str) -> Result<Lookup<stream::Info>, Error> {
        let subject = format!("STREAM.INFO.{name}");
        self.lookup(Op::StreamInfo, subject, &json!({})).await
    }

    pub(crate) async fn create_stream(
        &self,
        config: &stream::Config,
    ) -> Result<stream::Info, Error> {
        let subject = format!("STREAM.CREATE.{}", config.name);
        self.request(Op::StreamCreate, subject, config).await
    }

    pub(crate) async fn update_stream(
        &self,
        config: &stream::Config,
    ) -> Result<stream::Info, Error> {
        let subject = format!("STREAM.UPDATE.{}", config.name);
        self.request(Op::StreamUpdate, subject, config).await
    }

    /// Deletes a stream; one that is already gone is fine.
    pub(crate) async fn delete_stream(&self, name: &str) -> Result<(), Error> {
        let subject = format!("STREAM.DELETE.{name}");
        self.lookup::<_, Value>(Op::StreamDelete, subject, &json!({}))
            .await
            .map(drop)
    }

    pub(crate) async fn consumer_info(
        &self,
        stream: &str,
        durable: &str,
    ) -> Result<Lookup<ConsumerInfo>, Error> {
        let subject = format!("CONSUMER.INFO.{stream}.{durable}");
        self.lookup(Op::ConsumerInfo, subject, &json!({})).await
    }

    /// Creates or updates durable consumer `durable` with `config` (wire JSON).
    pub(crate) async fn write_consumer(
        &self,
        stream: &str,
        durable: &str,
        config: &Value,
        action: ConsumerAction,
    ) -> Result<ConsumerInfo, Error> {
        let (op, action) = match action {
            ConsumerAction::Create => (Op::ConsumerCreate, "create"),
            ConsumerAction::Update => (Op::ConsumerUpdate, "update"),
        };
        let payload = json!({ "stream_name": stream, "config": config, "action": action });
        let subject = format!("CONSUMER.CREATE.{stream}.{durable}");
        self.request(op, subject, &payload).await
    }

    /// Deletes a consumer; one that is already gone (or whose stream is) is fine.
    pub(crate) async fn delete_consumer(&self, stream: &str, durable: &str) -> Result<(), Error> {
        let subject = format!("CONSUMER.DELETE.{stream}.{durable}");
        self.lookup::<_, Value>(Op::ConsumerDelete, subject, &json!({}))
            .await
            .map(drop)
    }
}
