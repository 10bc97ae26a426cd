//! The NATS layer: one connection per `NatsCluster` (`pool`), credentials from its Secrets
//! (`credentials`), and the typed JetStream API calls the controllers make (`jetstream`), each
//! with a timeout and counted in the metrics. JetStream error codes live in `codes`.
//!
//! Below the frame and the controllers: of this crate it imports only `telemetry`.

mod codes;
mod credentials;
mod jetstream;
mod pool;

use std::sync::Arc;
use std::time::Duration;

pub(crate) use codes::cannot_change_in_place;
pub(crate) use jetstream::{Connection, ConsumerAction, ConsumerInfo, Lookup};
pub(crate) use pool::{Freshness, Pool};

use crate::telemetry::Op;

/// Failure to reach a NATS cluster or to get an answer from it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("NatsCluster {0} not found: create it, or fix spec.clusterRef")]
    ClusterNotFound(String),
    #[error("reading NatsCluster {cluster} failed")]
    Kube {
        cluster: String,
        #[source]
        source: kube::Error,
    },
    #[error("NatsCluster {cluster} is not usable yet: {message}")]
    ClusterNotReady { cluster: String, message: String },
    #[error("cannot read Secret {secret} for NatsCluster {cluster}")]
    SecretRead {
        cluster: String,
        secret: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot use Secret {secret} for NatsCluster {cluster}: {message}")]
    Credentials {
        cluster: String,
        secret: String,
        message: String,
    },
    #[error("cannot write the CA of NatsCluster {cluster} to {path}")]
    CaFile {
        cluster: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to NATS of {cluster}")]
    Connect {
        cluster: String,
        #[source]
        source: Arc<async_nats::ConnectError>,
    },
    #[error("cannot connect to NATS of {cluster}: no answer within {after:?}")]
    ConnectTimeout { cluster: String, after: Duration },
    #[error("NATS of {cluster} did not answer {} in time (disconnected; reconnecting with backoff)", op.as_str())]
    Disconnected { cluster: String, op: Op },
    #[error("NATS of {cluster} did not answer {} in time (timed out after {after:?})", op.as_str())]
    TimedOut {
        cluster: String,
        op: Op,
        after: Duration,
    },
    #[error("NATS of {cluster} did not answer {} in time", op.as_str())]
    Request {
        cluster: String,
        op: Op,
        #[source]
        source: async_nats::jetstream::context::RequestError,
    },
    #[error("NATS refused {}: {description} (error code {code})", op.as_str())]
    Api {
        op: Op,
        code: u64,
        description: String,
    },
}

/// The URL(s) without any `user:password@` part, for logs.
pub(crate) fn redact(urls: &str) -> String {
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
