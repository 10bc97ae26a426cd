//! The NatsCluster controller, `external` mode: connect, report `Ready`, `serverVersion` and
//! `jetstreamEnabled`. `managed` mode reports `Ready=False`, reason `NotImplemented`.

use std::sync::Arc;
use std::time::Instant;

use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use nats_cdr_crds::{CommonStatus, NatsCluster, NatsClusterStatus};

use crate::Context;
use crate::status::{self, Cond};

/// Kind name (metric label).
pub const KIND: &str = "NatsCluster";

/// Failure of a NatsCluster reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Nats(#[from] crate::nats::Error),
    #[error("writing status failed")]
    Kube(#[source] kube::Error),
}

impl Error {
    /// Short category for Events, conditions and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Nats(e) => e.reason(),
            Self::Kube(_) => "KubeError",
        }
    }
}

pub async fn reconcile(obj: Arc<NatsCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = apply(&obj, &ctx).await;
    ctx.metrics
        .reconciled(KIND, started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => ctx.reset_backoff(obj.as_ref()),
        Err(e) => ctx.metrics.failed(KIND, e.reason()),
    }
    result
}

pub fn error_policy(obj: Arc<NatsCluster>, _error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.next_backoff(obj.as_ref()))
}

async fn apply(obj: &Arc<NatsCluster>, ctx: &Context) -> Result<Action, Error> {
    let old = obj.status.clone().unwrap_or_default();
    let mut new = NatsClusterStatus {
        common: CommonStatus {
            observed_generation: obj.metadata.generation,
            conditions: old.common.conditions.clone(),
        },
        ..old.clone()
    };
    let (cond, outcome) = if obj.spec.managed.is_some() {
        (
            Cond::new(
                "Ready",
                Some(false),
                "NotImplemented",
                "managed NatsClusters are not implemented yet: the operator does not run NATS servers; use spec.external with the URL of a NATS you run".into(),
            ),
            Ok(Action::await_change()),
        )
    } else {
        match ctx.pool.connect(obj).await {
            Ok(conn) if conn.is_connected() => {
                let info = conn.client.server_info();
                new.server_version = Some(info.version.clone());
                new.jetstream_enabled = Some(info.jetstream);
                let cond = if info.jetstream {
                    Cond::new(
                        "Ready",
                        Some(true),
                        "Connected",
                        format!("connected to NATS {}", info.version),
                    )
                } else {
                    Cond::new("Ready", Some(false), "JetStreamDisabled", "the server answers but JetStream is not enabled: enable jetstream in its configuration".into())
                };
                // Looking costs nothing (connection state, no request): look often.
                let every = ctx
                    .resync(obj.as_ref())
                    .min(std::time::Duration::from_secs(30));
                (cond, Ok(Action::requeue(every)))
            }
            Ok(_) => {
                let e = crate::nats::Error::Connect {
                    cluster: format!("{}/{}", obj.namespace().unwrap_or_default(), obj.name_any()),
                    message: "disconnected; the client reconnects with backoff".into(),
                };
                (
                    Cond::new("Ready", Some(false), e.reason(), e.to_string()),
                    Err(Error::Nats(e)),
                )
            }
            Err(e) => (
                Cond::new("Ready", Some(false), e.reason(), e.to_string()),
                Err(Error::Nats(e)),
            ),
        }
    };
    let before = status::reason_of(&old.common.conditions, "Ready").map(str::to_owned);
    new.common.conditions = status::merge_conditions(
        &old.common.conditions,
        std::slice::from_ref(&cond),
        obj.metadata.generation,
    );
    if new != old {
        let api: Api<NatsCluster> =
            Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
        status::apply_status(&api, &obj.name_any(), &new)
            .await
            .map_err(Error::Kube)?;
        ctx.metrics.apiserver_write(KIND);
        if before.as_deref() != Some(cond.reason.as_str()) {
            status::publish(
                &ctx.recorder,
                obj.as_ref(),
                cond.status != "True",
                &cond.reason,
                "Connect",
                cond.message.clone(),
            )
            .await;
        }
    }
    outcome
}
