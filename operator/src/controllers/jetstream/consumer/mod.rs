//! The JetStreamConsumer controller: durable pull consumers, with the same five steps and the
//! same semantics as streams. A consumer whose stream does not exist yet waits with
//! `Ready=False StreamNotFound` and is created once the stream is there.

mod build;

use std::sync::Arc;

use kube::ResourceExt;
use nats_cdr_crds::common::DeletionPolicy;
use nats_cdr_crds::{JetStreamConsumer, JetStreamConsumerStatus};
use serde_json::Value;

use self::build::{desired_config, diff, immutable_changes};
use super::diff::FieldDiff;
use super::plan::{self, Plan, Seen};
use super::{
    Done, Error, OWNER_KEY, Words, already_exists, conflict, history, immutable, owner_mark,
};
use crate::nats::{self, Connection, ConsumerAction, ConsumerInfo, Lookup};
use crate::reconcile::{Context, Failure, Reason, Reconciler, Report, Requeue};
use crate::telemetry::Kind;

const WORDS: Words = Words {
    noun: "consumer",
    lost: "its ack state starts over",
    name_field: "spec.durableName",
    never_recreated: " (its ack state would be lost)",
    then: "",
};

impl Reconciler for JetStreamConsumer {
    const KIND: Kind = Kind::JetStreamConsumer;
    const CONDITIONS: &'static [&'static str] = &["Ready", "Synced"];
    const NOUN: &'static str = "consumer";
    const EXTERNAL_STATE: bool = true;
    type Observed = ConsumerInfo;
    type Error = Error;

    fn reason(error: &Error) -> Reason {
        error.reason()
    }

    fn set_live(status: &mut JetStreamConsumerStatus, info: &ConsumerInfo) {
        status.pending = info.num_pending;
        status.ack_pending = info.num_ack_pending;
        status.redelivered = info.num_redelivered;
        status.waiting = info.num_waiting;
    }

    fn needs_cleanup(&self) -> bool {
        self.spec.deletion_policy == DeletionPolicy::Delete
    }

    async fn apply(obj: Arc<Self>, ctx: &Context) -> Result<Report<ConsumerInfo>, Failure<Self>> {
        let owner = owner_mark(obj.as_ref());
        let (_, desired) = desired_config(&obj.spec, &owner)?;
        claim(&obj, ctx)?;
        let (stream, durable) = (&obj.spec.stream_name, &obj.spec.durable_name);
        let (conn, found) = ctx
            .first_read(&obj.spec.cluster_ref, obj.namespace(), |c| async move {
                c.consumer_info(stream, durable).await
            })
            .await?;
        let history = history(obj.as_ref());
        let seen = observe(&obj, &desired, found);
        let plan = plan::decide(seen, &owner, obj.spec.adopt_existing, history);
        let Some((done, info)) = execute(&conn, &obj, &desired, plan).await? else {
            // Refused for this generation already: wait for an edit.
            return Ok(Report::new(Requeue::Resync));
        };
        let kind = Kind::JetStreamConsumer;
        Ok(super::report(
            &done,
            &WORDS,
            history,
            info,
            &ctx.metrics,
            kind,
        ))
    }

    async fn cleanup(obj: Arc<Self>, ctx: &Context) -> Result<Option<String>, Error> {
        let (stream, durable) = (&obj.spec.stream_name, &obj.spec.durable_name);
        let conn = ctx.connect(&obj.spec.cluster_ref, obj.namespace()).await?;
        let Lookup::Found(info) = conn.consumer_info(stream, durable).await? else {
            return Ok(None);
        };
        if owner_of(&info).as_deref() != Some(owner_mark(obj.as_ref()).as_str()) {
            return Ok(None);
        }
        conn.delete_consumer(stream, durable).await?;
        Ok(Some(format!(
            "consumer {durable} of stream {stream} deleted on the server (deletionPolicy: Delete)"
        )))
    }
}

/// Another object naming the same consumer on the same cluster: the oldest owns it.
fn claim(obj: &JetStreamConsumer, ctx: &Context) -> Result<(), Error> {
    let cluster = obj.spec.cluster_ref.key_for(obj.namespace());
    let (stream, durable) = (&obj.spec.stream_name, &obj.spec.durable_name);
    let rivals = ctx.index.consumers_named(&cluster, stream, durable);
    match plan::rival_owner(obj, rivals) {
        Some(owner) => Err(conflict(
            &what(obj),
            &cluster,
            owner.as_ref(),
            "spec.durableName",
        )),
        None => Ok(()),
    }
}

fn what(obj: &JetStreamConsumer) -> String {
    format!(
        "consumer {} of stream {}",
        obj.spec.durable_name, obj.spec.stream_name
    )
}

fn owner_of(info: &ConsumerInfo) -> Option<String> {
    info.config
        .get("metadata")
        .and_then(|m| m.get(OWNER_KEY))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// What the server holds, compared with the spec.
fn observe(
    obj: &JetStreamConsumer,
    desired: &Value,
    found: Lookup<ConsumerInfo>,
) -> Seen<ConsumerInfo> {
    match found {
        Lookup::NoStream => Seen::NoStream,
        Lookup::NoConsumer => Seen::Missing,
        Lookup::Found(info) => {
            let diffs = diff(&obj.spec, desired, &info.config);
            Seen::Present {
                owner: owner_of(&info),
                immutable: immutable_changes(&diffs),
                diffs,
                info,
            }
        }
    }
}

/// Carries out `plan` (at most one write); `None` when the plan is to wait for an edit.
async fn execute(
    conn: &Connection,
    obj: &JetStreamConsumer,
    desired: &Value,
    plan: Plan<ConsumerInfo>,
) -> Result<Option<(Done, ConsumerInfo)>, Failure<JetStreamConsumer>> {
    let update = |diffs: Vec<FieldDiff>, info: ConsumerInfo| async move {
        match write(conn, obj, desired, ConsumerAction::Update, &diffs).await {
            Ok(updated) => Ok((diffs, updated)),
            Err(e) => Err(Failure::seen(e, info)),
        }
    };
    let create = || write(conn, obj, desired, ConsumerAction::Create, &[]);
    Ok(Some(match plan {
        Plan::WaitForEdit => return Ok(None),
        Plan::InSync(info) => (Done::InSync, info),
        Plan::Create => (Done::Created, create().await?),
        Plan::Recreate => (Done::Recreated, create().await?),
        Plan::Update(diffs, info) => update(diffs, info)
            .await
            .map(|(d, i)| (Done::Updated(d), i))?,
        Plan::RepairDrift(diffs, info) => update(diffs, info)
            .await
            .map(|(d, i)| (Done::DriftRepaired(d), i))?,
        Plan::Adopt(diffs, info) => update(diffs, info).await.map(|(_, i)| (Done::Adopted, i))?,
        Plan::RefuseImmutable(blocked, info) => {
            return Err(Failure::seen(immutable(&WORDS, &blocked), info));
        }
        Plan::AlreadyExists(owner) => return Err(already_exists(&what(obj), owner).into()),
        Plan::WaitForStream => return Err(stream_not_found(obj).into()),
    }))
}

fn stream_not_found(obj: &JetStreamConsumer) -> Error {
    let cluster = obj.spec.cluster_ref.key_for(obj.namespace());
    Error::StreamNotFound(format!(
        "stream {} does not exist on NatsCluster {cluster} yet; the consumer is created once it does (create its JetStreamStream, or fix spec.streamName)",
        obj.spec.stream_name
    ))
}

/// Creates or updates the consumer. An update NATS refuses is reported as immutable: the
/// operator never deletes a consumer to recreate it.
async fn write(
    conn: &Connection,
    obj: &JetStreamConsumer,
    desired: &Value,
    action: ConsumerAction,
    diffs: &[FieldDiff],
) -> Result<ConsumerInfo, Error> {
    let (stream, durable) = (&obj.spec.stream_name, &obj.spec.durable_name);
    match conn.write_consumer(stream, durable, desired, action).await {
        Ok(info) => Ok(info),
        Err(e) if e.is_stream_not_found() => Err(stream_not_found(obj)),
        Err(nats::Error::Api { description, .. }) if action == ConsumerAction::Update => {
            Err(super::refused_in_place(&WORDS, diffs, &description))
        }
        Err(nats::Error::Api { description, .. }) => Err(Error::InvalidSpec {
            field: "spec".into(),
            message: format!(
                "NATS refused to create the consumer: \"{description}\"; fix the spec (e.g. a filter subject outside the stream's subjects)"
            ),
        }),
        Err(other) => Err(other.into()),
    }
}
