//! The JetStreamStream controller: build -> observe -> plan -> execute -> report, and cleanup of
//! the stream on delete (`deletionPolicy: Delete`). Status carries `currentReplicas` (leader plus
//! current peers: `Synced=False ReplicasPending` while below `spec.replicas`) and the live
//! figures of the stream.

mod build;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::stream;
use kube::ResourceExt;
use nats_cdr_crds::common::DeletionPolicy;
use nats_cdr_crds::{JetStreamStream, JetStreamStreamStatus};

use self::build::{current_replicas, desired_config, diff, immutable_changes};
use super::diff::{FieldDiff, describe};
use super::plan::{self, History, Plan, Seen};
use super::{
    Done, Error, OWNER_KEY, Words, already_exists, conflict, history, immutable, owner_mark,
};
use crate::nats::{self, Connection, Lookup, cannot_change_in_place};
use crate::reconcile::{Context, Failure, Reason, Reconciler, Report, Requeue};
use crate::status::Cond;
use crate::telemetry::Kind;

pub(super) const WORDS: Words = Words {
    noun: "stream",
    lost: "its messages are gone",
    name_field: "spec.name",
    never_recreated: "",
    then: " and move consumers to it",
};

impl Reconciler for JetStreamStream {
    const KIND: Kind = Kind::JetStreamStream;
    const CONDITIONS: &'static [&'static str] = &["Ready", "Synced"];
    const NOUN: &'static str = "stream";
    const EXTERNAL_STATE: bool = true;
    type Observed = stream::Info;
    type Error = Error;

    fn reason(error: &Error) -> Reason {
        error.reason()
    }

    fn set_observed(status: &mut JetStreamStreamStatus, info: &stream::Info) {
        status.current_replicas = Some(current_replicas(info));
    }

    fn set_live(status: &mut JetStreamStreamStatus, info: &stream::Info) {
        status.messages = Some(info.state.messages);
        status.bytes = Some(info.state.bytes);
        status.first_sequence = Some(info.state.first_sequence);
        status.last_sequence = Some(info.state.last_sequence);
        status.consumer_count = Some(info.state.consumer_count as u64);
    }

    fn needs_cleanup(&self) -> bool {
        self.spec.deletion_policy == DeletionPolicy::Delete
    }

    async fn apply(obj: Arc<Self>, ctx: &Context) -> Result<Report<stream::Info>, Failure<Self>> {
        let owner = owner_mark(obj.as_ref());
        let desired = desired_config(&obj.spec, &owner)?;
        claim(&obj, ctx)?;
        let name = obj.spec.name.as_str();
        let (conn, found) = ctx
            .first_read(&obj.spec.cluster_ref, obj.namespace(), |c| async move {
                c.stream_info(name).await
            })
            .await?;
        let history = history(obj.as_ref());
        let seen = observe(&obj, &desired, found);
        let plan = plan::decide(seen, &owner, obj.spec.adopt_existing, history);
        let Some((done, info)) = execute(&conn, &obj, &desired, plan).await? else {
            // Refused for this generation already: wait for an edit.
            return Ok(Report::new(Requeue::Resync));
        };
        Ok(report(&obj, ctx, &done, history, info))
    }

    async fn cleanup(obj: Arc<Self>, ctx: &Context) -> Result<Option<String>, Error> {
        let name = &obj.spec.name;
        let conn = ctx.connect(&obj.spec.cluster_ref, obj.namespace()).await?;
        let Lookup::Found(info) = conn.stream_info(name).await? else {
            return Ok(None);
        };
        // Not ours (never adopted, or a conflict loser): leave it alone.
        if info.config.metadata.get(OWNER_KEY) != Some(&owner_mark(obj.as_ref())) {
            return Ok(None);
        }
        conn.delete_stream(name).await?;
        Ok(Some(format!(
            "stream {name} deleted on the server (deletionPolicy: Delete)"
        )))
    }
}

/// Another object naming the same stream on the same cluster: the oldest owns it.
fn claim(obj: &JetStreamStream, ctx: &Context) -> Result<(), Error> {
    let cluster = obj.spec.cluster_ref.key_for(obj.namespace());
    let rivals = ctx.index.streams_named(&cluster, &obj.spec.name);
    match plan::rival_owner(obj, rivals) {
        Some(owner) => Err(conflict(&what(obj), &cluster, owner.as_ref(), "spec.name")),
        None => Ok(()),
    }
}

fn what(obj: &JetStreamStream) -> String {
    format!("stream {}", obj.spec.name)
}

/// What the server holds, compared with the spec.
fn observe(
    obj: &JetStreamStream,
    desired: &stream::Config,
    found: Lookup<stream::Info>,
) -> Seen<stream::Info> {
    let Lookup::Found(info) = found else {
        return Seen::Missing;
    };
    let diffs = diff(&obj.spec, desired, &info.config);
    Seen::Present {
        owner: info.config.metadata.get(OWNER_KEY).cloned(),
        immutable: immutable_changes(&diffs),
        diffs,
        info,
    }
}

/// Carries out `plan` (at most one write); `None` when the plan is to wait for an edit.
async fn execute(
    conn: &Connection,
    obj: &JetStreamStream,
    desired: &stream::Config,
    plan: Plan<stream::Info>,
) -> Result<Option<(Done, stream::Info)>, Failure<JetStreamStream>> {
    let apply_update = |diffs: Vec<FieldDiff>, info: stream::Info| async move {
        match update(conn, desired, &diffs).await {
            Ok(updated) => Ok((diffs, updated)),
            Err(e) => Err(Failure::seen(e, info)),
        }
    };
    Ok(Some(match plan {
        Plan::WaitForEdit => return Ok(None),
        Plan::InSync(info) => (Done::InSync, info),
        Plan::Create => (Done::Created, create(conn, desired).await?),
        Plan::Recreate => (Done::Recreated, create(conn, desired).await?),
        Plan::Update(diffs, info) => apply_update(diffs, info)
            .await
            .map(|(d, i)| (Done::Updated(d), i))?,
        Plan::RepairDrift(diffs, info) => apply_update(diffs, info)
            .await
            .map(|(d, i)| (Done::DriftRepaired(d), i))?,
        Plan::Adopt(diffs, info) => apply_update(diffs, info)
            .await
            .map(|(_, i)| (Done::Adopted, i))?,
        Plan::RefuseImmutable(blocked, info) => {
            return Err(Failure::seen(immutable(&WORDS, &blocked), info));
        }
        // No live figures of a stream this object does not own.
        Plan::AlreadyExists(owner) => return Err(already_exists(&what(obj), owner).into()),
        Plan::WaitForStream => return Err(Error::StreamNotFound(what(obj)).into()),
    }))
}

async fn create(conn: &Connection, desired: &stream::Config) -> Result<stream::Info, Error> {
    conn.create_stream(desired).await.map_err(|e| match e {
        nats::Error::Api { description, .. } => Error::InvalidSpec {
            field: "spec".into(),
            message: format!(
                "NATS refused to create the stream: \"{description}\"; fix the spec (e.g. replicas above the cluster size, overlapping subjects with another stream)"
            ),
        },
        other => other.into(),
    })
}

async fn update(
    conn: &Connection,
    desired: &stream::Config,
    diffs: &[FieldDiff],
) -> Result<stream::Info, Error> {
    conn.update_stream(desired).await.map_err(|e| match e {
        nats::Error::Api { description, .. } if cannot_change_in_place(&description) => {
            super::refused_in_place(&WORDS, diffs, &description)
        }
        nats::Error::Api { description, .. } => Error::InvalidSpec {
            field: diffs
                .iter()
                .map(|d| format!("spec.{}", d.field))
                .collect::<Vec<_>>()
                .join(", "),
            message: format!(
                "NATS refused the update of {}: \"{description}\"; fix these fields",
                describe(diffs)
            ),
        },
        other => other.into(),
    })
}

/// The report, with `Synced=False ReplicasPending` (and a prompt re-check) while fewer replicas
/// than the spec asks for are current.
fn report(
    obj: &JetStreamStream,
    ctx: &Context,
    done: &Done,
    history: History,
    info: stream::Info,
) -> Report<stream::Info> {
    let (current, wanted) = (current_replicas(&info), obj.spec.replicas.max(1));
    let mut report = super::report(
        done,
        &WORDS,
        history,
        info,
        &ctx.metrics,
        Kind::JetStreamStream,
    );
    if current >= wanted {
        return report;
    }
    if let Some(synced) = report.conditions.iter_mut().find(|c| c.type_ == "Synced") {
        *synced = Cond::new(
            "Synced",
            Some(false),
            Reason::ReplicasPending.as_str(),
            format!(
                "{current} of {wanted} replicas current on the server; waiting for the new peers to catch up"
            ),
        );
    }
    report.requeue = Requeue::After(ctx.settings.dependency_poll.min(Duration::from_secs(5)));
    report
}
