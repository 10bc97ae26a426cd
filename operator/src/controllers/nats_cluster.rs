//! The NatsCluster controller, `external` mode: connect (re-reading the credentials Secrets, so a
//! rotation is picked up), report `Ready`, `serverVersion` and `jetstreamEnabled`. `managed`
//! mode reports `Ready=False`, reason `NotImplemented`. A deleted NatsCluster's connection is
//! closed.

use std::sync::Arc;

use kube::ResourceExt;
use nats_cdr_crds::{NatsCluster, NatsClusterStatus};

use crate::nats::{self, Freshness};
use crate::reconcile::{Context, Failure, Reason, Reconciler, Report, Requeue};
use crate::status::{self, Cond, ObjectStatus};
use crate::telemetry::Kind;

/// Failure of a NatsCluster reconcile.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error(transparent)]
    Nats(#[from] nats::Error),
    #[error(
        "managed NatsClusters are not implemented yet: the operator does not run NATS servers; use spec.external with the URL of a NATS you run"
    )]
    NotImplemented,
    #[error(
        "the server answers but JetStream is not enabled: enable jetstream in its configuration"
    )]
    JetStreamDisabled,
    #[error("cannot connect to NATS of {0}: disconnected; the client reconnects with backoff")]
    Disconnected(String),
}

/// What the server said about itself.
pub(crate) struct ServerFacts {
    version: String,
    jetstream: bool,
}

impl From<Error> for Failure<NatsCluster> {
    fn from(error: Error) -> Self {
        Self {
            error,
            observed: None,
        }
    }
}

impl Reconciler for NatsCluster {
    const KIND: Kind = Kind::NatsCluster;
    const CONDITIONS: &'static [&'static str] = &["Ready"];
    const NOUN: &'static str = "NATS cluster";
    type Observed = ServerFacts;
    type Error = Error;

    fn reason(error: &Error) -> Reason {
        match error {
            Error::Nats(e) => Reason::from(e),
            Error::NotImplemented => Reason::NotImplemented,
            Error::JetStreamDisabled => Reason::JetStreamDisabled,
            Error::Disconnected(_) => Reason::NatsUnavailable,
        }
    }

    fn set_observed(status: &mut NatsClusterStatus, observed: &ServerFacts) {
        status.server_version = Some(observed.version.clone());
        status.jetstream_enabled = Some(observed.jetstream);
    }

    async fn apply(obj: Arc<Self>, ctx: &Context) -> Result<Report<ServerFacts>, Failure<Self>> {
        if obj.spec.managed.is_some() {
            return Err(Error::NotImplemented.into());
        }
        let conn = ctx.pool.connect(&obj, Freshness::Recheck).await?;
        if !conn.is_connected() {
            return Err(Error::Disconnected(conn.cluster().to_owned()).into());
        }
        let info = conn.server_info();
        let facts = ServerFacts {
            version: info.version.clone(),
            jetstream: info.jetstream,
        };
        if !info.jetstream {
            return Err(Failure::seen(Error::JetStreamDisabled, facts));
        }
        let message = format!("connected to NATS {}", info.version);
        let ready = Cond::new(
            "Ready",
            Some(true),
            Reason::Connected.as_str(),
            message.clone(),
        );
        // Looking costs nothing (connection state, no request): look often.
        let report = Report::new(Requeue::Watch)
            .conditions(vec![ready])
            .observed(facts);
        let before = obj
            .status()
            .and_then(|s| status::reason_of(&Self::common(s).conditions, "Ready"));
        Ok(match before {
            Some(r) if r == Reason::Connected.as_str() => report,
            _ => report.event(Reason::Connected, message),
        })
    }

    async fn forget(obj: Arc<Self>, ctx: &Context) {
        let key = format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any());
        ctx.pool.close(&key).await;
    }
}
