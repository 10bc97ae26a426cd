//! The frame every controller runs in. A kind implements [`Reconciler`]: its `apply` returns a
//! [`Report`] (conditions, what it observed, an Event, when to look again) or a [`Failure`];
//! kinds with state outside Kubernetes also implement `cleanup`. The frame does the rest, the
//! same way for every kind:
//!
//! - a tracing span with kind, namespace and name, a timer counting the reconcile, and a time
//!   limit (`--reconcile-timeout`): a call that hangs never holds a concurrency slot for good;
//! - the pause annotation (conditions `Paused`, nothing else; on delete only the finalizer goes);
//! - the finalizer, for kinds with external state, and `nats-cdr.dev/force-delete`;
//! - the one place where a failure becomes conditions, a Warning Event on a transition, and a
//!   requeue chosen by its [`Reason`] (transient: backoff; refused spec: wait for an edit;
//!   waiting for another object: poll);
//! - status written by server-side apply only when it changed (`write`);
//! - per-object backoff and bookkeeping, dropped when the object goes away.

mod backoff;
mod context;
mod reason;
mod write;

use std::fmt::Debug;
use std::sync::Arc;

use kube::core::NamespaceResourceScope;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

pub(crate) use context::Context;
pub(crate) use reason::{Reason, Requeue};

use crate::k8s::{self, FINALIZER, FORCE_DELETE_ANNOTATION, PAUSE_ANNOTATION, object_key};
use crate::status::{Cond, ObjectStatus};
use crate::telemetry::{Kind, describe};

/// A kind the frame can reconcile.
pub(crate) trait Reconciler:
    ObjectStatus
    + Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
    const KIND: Kind;
    /// The condition types this kind reports; a failure or a pause sets all of them.
    const CONDITIONS: &'static [&'static str];
    /// What the object stands for on the server, in messages (`stream`).
    const NOUN: &'static str;
    /// Whether the object has state outside Kubernetes: a finalizer then runs `cleanup`.
    const EXTERNAL_STATE: bool = false;
    /// What `apply` observed that status shows.
    type Observed: Send + Sync;
    type Error: std::error::Error + Send + Sync + 'static;

    fn reason(error: &Self::Error) -> Reason;

    /// Copies figures that describe the object's state (replicas, server version) into status.
    fn set_observed(_status: &mut Self::Status, _observed: &Self::Observed) {}

    /// Copies live figures (messages, pending) into status: done at most every
    /// `status_refresh` unless something else in status changes.
    fn set_live(_status: &mut Self::Status, _observed: &Self::Observed) {}

    /// Brings the world in line with the spec.
    fn apply(
        obj: Arc<Self>,
        ctx: &Context,
    ) -> impl Future<Output = Result<Report<Self::Observed>, Failure<Self>>> + Send;

    /// Whether deleting the object must clean up outside Kubernetes (`deletionPolicy: Delete`).
    fn needs_cleanup(&self) -> bool {
        false
    }

    /// Cleans up outside Kubernetes; `Some(note)` is announced in a `Deleted` Event.
    fn cleanup(
        _obj: Arc<Self>,
        _ctx: &Context,
    ) -> impl Future<Output = Result<Option<String>, Self::Error>> + Send {
        async { Ok(None) }
    }

    /// Lets go of what the operator holds for an object that is gone (kinds without a
    /// finalizer hear of the deletion from a watch).
    fn forget(_obj: Arc<Self>, _ctx: &Context) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What a successful `apply` reports.
#[derive(Debug)]
pub(crate) struct Report<O> {
    /// Conditions to set; none keeps the conditions as they are.
    pub(crate) conditions: Vec<Cond>,
    pub(crate) observed: Option<O>,
    /// A Normal Event, published after the status write.
    pub(crate) event: Option<(Reason, String)>,
    pub(crate) requeue: Requeue,
}

impl<O> Report<O> {
    pub(crate) fn new(requeue: Requeue) -> Self {
        Self {
            conditions: Vec::new(),
            observed: None,
            event: None,
            requeue,
        }
    }

    pub(crate) fn conditions(mut self, conditions: Vec<Cond>) -> Self {
        self.conditions = conditions;
        self
    }

    pub(crate) fn observed(mut self, observed: O) -> Self {
        self.observed = Some(observed);
        self
    }

    pub(crate) fn event(mut self, reason: Reason, note: String) -> Self {
        self.event = Some((reason, note));
        self
    }
}

/// A failed `apply`: the error, and what was observed before it (shown in status all the same).
pub(crate) struct Failure<R: Reconciler> {
    pub(crate) error: R::Error,
    pub(crate) observed: Option<R::Observed>,
}

impl<R: Reconciler> Failure<R> {
    pub(crate) fn seen(error: R::Error, observed: R::Observed) -> Self {
        Self {
            error,
            observed: Some(observed),
        }
    }
}

impl<R: Reconciler> From<crate::nats::Error> for Failure<R>
where
    R::Error: From<crate::nats::Error>,
{
    fn from(error: crate::nats::Error) -> Self {
        Self {
            error: error.into(),
            observed: None,
        }
    }
}

/// Failure of a reconcile, as the controller runtime sees it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{}", .reason.as_str())]
    Failed {
        reason: Reason,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("writing the status failed")]
    Status(#[source] kube::Error),
    #[error("finalizer {FINALIZER}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    #[error(
        "the reconcile did not finish within {0:?} (a call to the apiserver or to NATS hangs); abandoned, retried with backoff"
    )]
    TimedOut(std::time::Duration),
}

impl Error {
    fn failed(reason: Reason, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Failed {
            reason,
            source: Box::new(source),
        }
    }

    pub(crate) fn reason(&self) -> Reason {
        match self {
            Self::Failed { reason, .. } => *reason,
            Self::Status(_) => Reason::KubeError,
            Self::TimedOut(_) => Reason::ReconcileTimeout,
            Self::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => Reason::FinalizerError,
            },
        }
    }
}

/// The reconcile function of every controller.
pub(crate) async fn reconcile<R: Reconciler>(
    obj: Arc<R>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let span = tracing::info_span!(
        "reconcile",
        kind = R::KIND.as_str(),
        namespace = %obj.namespace().unwrap_or_default(),
        name = %obj.name_any(),
    );
    let limit = ctx.settings.reconcile_timeout;
    let result = tokio::time::timeout(limit, run(obj.clone(), &ctx))
        .instrument(span.clone())
        .await
        .unwrap_or(Err(Error::TimedOut(limit)));
    match &result {
        Ok(_) => ctx.backoff.reset(&object_key(obj.as_ref())),
        Err(e) => {
            ctx.metrics.failed(R::KIND, e.reason().as_str());
            span.in_scope(|| {
                tracing::warn!(reason = e.reason().as_str(), error = %describe(e), "reconcile failed");
            });
        }
    }
    result
}

/// The error policy of every controller: capped exponential backoff per object.
pub(crate) fn error_policy<R: Reconciler>(
    obj: Arc<R>,
    _error: &Error,
    ctx: Arc<Context>,
) -> Action {
    ctx.action(Requeue::Backoff, obj.as_ref())
}

/// Called when an object is gone: drops the frame's state of it, then the kind's.
pub(crate) async fn forget<R: Reconciler>(obj: Arc<R>, ctx: &Context) {
    ctx.forget(&object_key(obj.as_ref()));
    R::forget(obj, ctx).await;
}

async fn run<R: Reconciler>(obj: Arc<R>, ctx: &Context) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer(R::KIND);
    if !R::EXTERNAL_STATE {
        return apply(obj, ctx).await;
    }
    let api = k8s::api_for(&ctx.client, obj.as_ref());
    finalizer::finalizer(&api, FINALIZER, obj, |event| async move {
        match event {
            Finalizer::Apply(obj) => apply(obj, ctx).await,
            Finalizer::Cleanup(obj) => cleanup(obj, ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply<R: Reconciler>(obj: Arc<R>, ctx: &Context) -> Result<Action, Error> {
    if k8s::is_paused(obj.as_ref()) {
        let message = format!(
            "reconciliation paused by annotation {PAUSE_ANNOTATION}: paused; remove it to resume"
        );
        let conds = all_conditions::<R>(None, Reason::Paused, &message);
        write::status(obj.as_ref(), ctx, &conds, None, false).await?;
        return Ok(Action::await_change());
    }
    match R::apply(obj.clone(), ctx).await {
        Ok(report) => succeeded(obj.as_ref(), ctx, report).await,
        Err(failure) => failed(obj.as_ref(), ctx, Step::Apply, failure).await,
    }
}

fn all_conditions<R: Reconciler>(ok: Option<bool>, reason: Reason, message: &str) -> Vec<Cond> {
    R::CONDITIONS
        .iter()
        .map(|t| Cond::new(t, ok, reason.as_str(), message.to_owned()))
        .collect()
}

async fn succeeded<R: Reconciler>(
    obj: &R,
    ctx: &Context,
    report: Report<R::Observed>,
) -> Result<Action, Error> {
    let announce = report.event.is_some();
    write::status(
        obj,
        ctx,
        &report.conditions,
        report.observed.as_ref(),
        announce,
    )
    .await?;
    if let Some((reason, note)) = report.event {
        ctx.publish(obj, false, reason, "Reconcile", note).await;
    }
    Ok(ctx.action(report.requeue, obj))
}

/// Which step failed.
#[derive(Clone, Copy)]
enum Step {
    Apply,
    Cleanup,
}

/// The one place a failure becomes conditions, an Event and a requeue. A failed apply sets every
/// condition of the kind and is retried as its reason says; a failed cleanup keeps the finalizer,
/// says in `Ready` why and what to do, and is retried with backoff.
async fn failed<R: Reconciler>(
    obj: &R,
    ctx: &Context,
    step: Step,
    failure: Failure<R>,
) -> Result<Action, Error> {
    let reason = R::reason(&failure.error);
    let (conds, action) = match step {
        Step::Apply => {
            let message = describe(&failure.error);
            (
                all_conditions::<R>(Some(false), reason, &message),
                "Reconcile",
            )
        }
        Step::Cleanup => {
            let noun = R::NOUN;
            let message = format!(
                "{}; the {noun} is deleted once the server answers (deletionPolicy: Delete); to remove the object without deleting the {noun}, annotate it {FORCE_DELETE_ANNOTATION}: \"true\"",
                describe(&failure.error)
            );
            let ready = Cond::new(R::CONDITIONS[0], Some(false), reason.as_str(), message);
            (vec![ready], "Delete")
        }
    };
    let transition = write::status(obj, ctx, &conds, failure.observed.as_ref(), false).await?;
    if transition {
        ctx.publish(obj, true, reason, action, conds[0].message.clone())
            .await;
    }
    let requeue = match step {
        Step::Apply => reason.requeue(),
        // The finalizer stays until the cleanup succeeds.
        Step::Cleanup => Requeue::Backoff,
    };
    match requeue {
        Requeue::Backoff => Err(Error::failed(reason, failure.error)),
        requeue => Ok(ctx.action(requeue, obj)),
    }
}

/// Cleanup on delete. Paused, or nothing to clean up: the finalizer goes at once. Force-delete:
/// it goes without cleanup (a Warning Event says so). A failed cleanup is reported by `failed`.
async fn cleanup<R: Reconciler>(obj: Arc<R>, ctx: &Context) -> Result<Action, Error> {
    let result = if k8s::is_paused(obj.as_ref()) || !obj.needs_cleanup() {
        Ok(None)
    } else if k8s::is_force_delete(obj.as_ref()) {
        let note = format!(
            "finalizer removed by {FORCE_DELETE_ANNOTATION}: the {} was not deleted on the server",
            R::NOUN
        );
        ctx.publish(obj.as_ref(), true, Reason::ForceDeleted, "Delete", note)
            .await;
        Ok(None)
    } else {
        R::cleanup(obj.clone(), ctx).await
    };
    match result {
        Ok(note) => {
            if let Some(note) = note {
                ctx.publish(obj.as_ref(), false, Reason::Deleted, "Delete", note)
                    .await;
            }
            ctx.forget(&object_key(obj.as_ref()));
            Ok(Action::await_change())
        }
        Err(error) => {
            let failure = Failure {
                error,
                observed: None,
            };
            failed(obj.as_ref(), ctx, Step::Cleanup, failure).await
        }
    }
}
