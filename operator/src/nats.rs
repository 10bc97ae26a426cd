//! One NATS connection per `NatsCluster`, shared by every reconcile, and the JetStream API calls
//! the controllers make, each with a timeout and counted in the metrics.
//!
//! Credentials come from the Secret the NatsCluster names and are never logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::response::Response;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use nats_cdr_crds::nats_cluster::{CredentialType, NatsCluster};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use crate::metrics::{ClusterLabel, Metrics};

/// Every JetStream API operation the operator makes (metric label `op`).
pub const OPS: &[&str] = &[
    "stream.info",
    "stream.create",
    "stream.update",
    "stream.delete",
    "consumer.info",
    "consumer.create",
    "consumer.update",
    "consumer.delete",
];

/// JetStream API error code: stream not found.
pub const STREAM_NOT_FOUND: u64 = 10059;
/// JetStream API error code: consumer not found.
pub const CONSUMER_NOT_FOUND: u64 = 10014;

/// Failure to reach a NATS cluster or to get an answer from it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("NatsCluster {0} not found: create it, or fix spec.clusterRef")]
    ClusterNotFound(String),
    #[error("NatsCluster {cluster} is not usable yet: {message}")]
    ClusterNotReady { cluster: String, message: String },
    #[error("cannot read Secret {secret} for NatsCluster {cluster}: {message}")]
    Credentials {
        cluster: String,
        secret: String,
        message: String,
    },
    #[error("cannot connect to NATS of {cluster}: {message}")]
    Connect { cluster: String, message: String },
    #[error("NATS of {cluster} did not answer {op} in time ({message})")]
    Unavailable {
        cluster: String,
        op: String,
        message: String,
    },
    #[error("NATS refused {op}: {description} (error code {code})")]
    Api {
        op: String,
        code: u64,
        description: String,
    },
    #[error("reading NatsCluster {cluster} failed")]
    Kube {
        cluster: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// Short category for Events, conditions and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::ClusterNotFound(_) => "ClusterNotFound",
            Self::ClusterNotReady { .. } | Self::Credentials { .. } => "ClusterNotReady",
            Self::Connect { .. } | Self::Unavailable { .. } => "NatsUnavailable",
            Self::Api { .. } => "NatsError",
            Self::Kube { .. } => "KubeError",
        }
    }

    /// The JetStream API error code, when the server answered with an error.
    pub fn api_code(&self) -> Option<u64> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A connection to one cluster, cheap to clone.
#[derive(Clone, Debug)]
pub struct Connection {
    /// `<namespace>/<name>` of the NatsCluster.
    pub cluster: String,
    pub client: async_nats::Client,
    js: jetstream::Context,
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Connection {
    /// One JetStream API request (`subject` below `$JS.API.`), with a timeout.
    pub async fn request<T: Serialize, V: DeserializeOwned>(
        &self,
        op: &str,
        subject: String,
        payload: &T,
    ) -> Result<V, Error> {
        let write = !op.ends_with(".info");
        self.metrics.nats_request(op, write);
        let unavailable = |message: String| Error::Unavailable {
            cluster: self.cluster.clone(),
            op: op.to_owned(),
            message,
        };
        // While the client is disconnected a request would only wait for the timeout: fail fast
        // (the client keeps reconnecting in the background).
        if matches!(
            self.client.connection_state(),
            async_nats::connection::State::Disconnected
        ) {
            return Err(unavailable(
                "disconnected; reconnecting with backoff".into(),
            ));
        }
        let answer: Response<V> =
            tokio::time::timeout(self.timeout, self.js.request(subject, payload))
                .await
                .map_err(|_| unavailable(format!("timed out after {:?}", self.timeout)))?
                .map_err(|e| unavailable(e.to_string()))?;
        match answer {
            Response::Ok(value) => Ok(value),
            Response::Err { error } => Err(Error::Api {
                op: op.to_owned(),
                code: error.error_code().0,
                description: error.to_string(),
            }),
        }
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }
}

#[derive(Debug)]
struct Entry {
    fingerprint: String,
    connection: Connection,
}

/// The connections, keyed by `<namespace>/<name>` of the NatsCluster.
pub struct Pool {
    client: kube::Client,
    timeout: Duration,
    metrics: Arc<Metrics>,
    entries: Mutex<HashMap<String, Entry>>,
}

impl Pool {
    pub fn new(client: kube::Client, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            client,
            timeout,
            metrics,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Reads a NatsCluster from the cache when it is there, else from the apiserver.
    pub async fn cluster(
        &self,
        store: Option<&Store<NatsCluster>>,
        namespace: &str,
        name: &str,
    ) -> Result<Arc<NatsCluster>, Error> {
        let key = format!("{namespace}/{name}");
        if let Some(found) = store.and_then(|s| s.get(&ObjectRef::new(name).within(namespace))) {
            return Ok(found);
        }
        let api: Api<NatsCluster> = Api::namespaced(self.client.clone(), namespace);
        match api.get_opt(name).await {
            Ok(Some(cluster)) => Ok(Arc::new(cluster)),
            Ok(None) => Err(Error::ClusterNotFound(key)),
            Err(source) => Err(Error::Kube {
                cluster: key,
                source,
            }),
        }
    }

    /// The shared connection of `cluster`, connecting first when there is none or the cluster's
    /// spec changed since.
    pub async fn connect(&self, cluster: &NatsCluster) -> Result<Connection, Error> {
        let namespace = cluster.metadata.namespace.clone().unwrap_or_default();
        let name = cluster.metadata.name.clone().unwrap_or_default();
        let key = format!("{namespace}/{name}");
        let Some(external) = cluster.spec.external.as_ref() else {
            return Err(Error::ClusterNotReady {
                cluster: key,
                message: "managed NatsClusters are not implemented yet; use spec.external".into(),
            });
        };
        let fingerprint = format!(
            "{}/{}",
            cluster.metadata.uid.as_deref().unwrap_or_default(),
            cluster.metadata.generation.unwrap_or_default()
        );
        let mut entries = self.entries.lock().await;
        if let Some(entry) = entries.get(&key)
            && entry.fingerprint == fingerprint
        {
            return Ok(entry.connection.clone());
        }
        if let Some(old) = entries.remove(&key) {
            // The spec changed: close the old connection in the background.
            tokio::spawn(async move {
                let _ = old.connection.client.drain().await;
            });
        }

        let mut options = async_nats::ConnectOptions::new()
            .name("nats-cdr-operator")
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout))
            .reconnect_delay_callback(|attempts| {
                // Capped exponential backoff: 100 ms, 200 ms, ... up to 5 s.
                let exp = u32::try_from(attempts.min(6)).unwrap_or(6);
                Duration::from_millis(100 * 2u64.pow(exp)).min(Duration::from_secs(5))
            });
        {
            let metrics = self.metrics.clone();
            let label = ClusterLabel {
                cluster: key.clone(),
            };
            options = options.event_callback(move |event| {
                let metrics = metrics.clone();
                let label = label.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            metrics.nats_connected.get_or_create(&label).set(1);
                        }
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            metrics.nats_connected.get_or_create(&label).set(0);
                        }
                        _ => {}
                    }
                }
            });
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        if let Some(credentials) = &external.credentials {
            let secret = &credentials.secret_name;
            let data = read_secret(&secrets, &key, secret).await?;
            let get = |k: &str| {
                data.get(k).cloned().ok_or_else(|| Error::Credentials {
                    cluster: key.clone(),
                    secret: secret.clone(),
                    message: format!("key {k:?} missing"),
                })
            };
            options = match credentials.credential_type {
                CredentialType::UserPassword => {
                    options.user_and_password(get("username")?, get("password")?)
                }
                CredentialType::Token => options.token(get("token")?),
                CredentialType::CredsFile => {
                    options
                        .credentials(&get("creds")?)
                        .map_err(|e| Error::Credentials {
                            cluster: key.clone(),
                            secret: secret.clone(),
                            message: format!("key \"creds\" is not a valid .creds file: {e}"),
                        })?
                }
            };
        }
        if let Some(ca_secret) = &external.tls_ca_secret_name {
            let data = read_secret(&secrets, &key, ca_secret).await?;
            let ca = data.get("ca.crt").ok_or_else(|| Error::Credentials {
                cluster: key.clone(),
                secret: ca_secret.clone(),
                message: "key \"ca.crt\" missing".into(),
            })?;
            let path = std::env::temp_dir().join(format!(
                "nats-cdr-operator-ca-{}.crt",
                cluster.metadata.uid.as_deref().unwrap_or(&name)
            ));
            std::fs::write(&path, ca).map_err(|e| Error::Credentials {
                cluster: key.clone(),
                secret: ca_secret.clone(),
                message: format!("cannot write the CA to {}: {e}", path.display()),
            })?;
            options = options.add_root_certificates(path).require_tls(true);
        }

        let urls: Vec<&str> = external.url.split(',').map(str::trim).collect();
        let client = tokio::time::timeout(self.timeout * 2, options.connect(urls))
            .await
            .map_err(|_| Error::Connect {
                cluster: key.clone(),
                message: format!("timed out after {:?}", self.timeout * 2),
            })?
            .map_err(|e| Error::Connect {
                cluster: key.clone(),
                message: e.to_string(),
            })?;
        self.metrics
            .nats_connected
            .get_or_create(&ClusterLabel {
                cluster: key.clone(),
            })
            .set(1);
        tracing::info!(cluster = %key, url = %redact(&external.url), "connected to NATS");
        let js = jetstream::ContextBuilder::new()
            .timeout(self.timeout)
            .build(client.clone());
        let connection = Connection {
            cluster: key.clone(),
            client,
            js,
            timeout: self.timeout,
            metrics: self.metrics.clone(),
        };
        entries.insert(
            key,
            Entry {
                fingerprint,
                connection: connection.clone(),
            },
        );
        Ok(connection)
    }

    /// Closes the connection of a NatsCluster that was deleted.
    pub async fn forget(&self, key: &str) {
        if let Some(old) = self.entries.lock().await.remove(key) {
            let _ = old.connection.client.drain().await;
        }
    }
}

/// The URL(s) without any `user:password@` part, for logs.
pub fn redact(urls: &str) -> String {
    urls.split(',')
        .map(|url| match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &url[..scheme], &url[at + 1..])
            }
            _ => url.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

async fn read_secret(
    secrets: &Api<Secret>,
    cluster: &str,
    name: &str,
) -> Result<HashMap<String, String>, Error> {
    let err = |message: String| Error::Credentials {
        cluster: cluster.to_owned(),
        secret: name.to_owned(),
        message,
    };
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| err(e.to_string()))?
        .ok_or_else(|| err("not found".into()))?;
    let mut out = HashMap::new();
    for (k, v) in secret.data.unwrap_or_default() {
        let text = String::from_utf8(v.0).map_err(|_| err(format!("key {k:?} is not UTF-8")))?;
        out.insert(k, text);
    }
    for (k, v) in secret.string_data.unwrap_or_default() {
        out.insert(k, v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(
            redact("nats://u:p@a:4222,tls://b:4222"),
            "nats://***@a:4222,tls://b:4222"
        );
        assert_eq!(redact("nats://a:4222"), "nats://a:4222");
    }
}
