//! The JetStreamConsumer controller: durable pull consumers, with the same semantics as streams
//! (finalizer, create / update only when different, no writes in steady state, ImmutableField
//! instead of delete + recreate, pause, conflicts, adoption). A consumer whose stream does not
//! exist yet waits with `Ready=False`, reason `StreamNotFound`.

use std::sync::Arc;
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use async_nats::jetstream::consumer::pull;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::{Resource, ResourceExt};
use nats_cdr_crds::common::DeletionPolicy;
use nats_cdr_crds::consumer::{
    AckPolicy, DeliverPolicy, JetStreamConsumer, JetStreamConsumerSpec, JetStreamConsumerStatus,
    ReplayPolicy,
};
use nats_cdr_crds::units::parse_duration;
use serde_json::{Value, json};

use crate::Context;
use crate::nats::{self, CONSUMER_NOT_FOUND, Connection, STREAM_NOT_FOUND};
use crate::status::{
    self, Cond, FINALIZER, OWNER_KEY, SUCCESS_REASONS, is_force_delete, is_paused, owner_mark,
};
use crate::stream::{FieldDiff, diff_fields};

/// Kind name (metric label).
pub const KIND: &str = "JetStreamConsumer";

/// Failure of a JetStreamConsumer reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Nats(#[from] nats::Error),
    #[error("{field}: {message}")]
    InvalidSpec { field: String, message: String },
    #[error("{message}")]
    ImmutableField {
        fields: Vec<String>,
        message: String,
    },
    #[error("{message}")]
    AlreadyExists { message: String },
    #[error("{message}")]
    Conflict { owner: String, message: String },
    #[error("{message}")]
    StreamNotFound { message: String },
    #[error("writing to the Kubernetes API failed")]
    Kube(#[source] kube::Error),
    #[error("{0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
}

impl Error {
    /// Short category for Events, conditions and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Nats(e) => e.reason(),
            Self::InvalidSpec { .. } => "InvalidSpec",
            Self::ImmutableField { .. } => "ImmutableField",
            Self::AlreadyExists { .. } => "AlreadyExists",
            Self::Conflict { .. } => "Conflict",
            Self::StreamNotFound { .. } => "StreamNotFound",
            Self::Kube(_) => "KubeError",
            Self::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "FinalizerError",
            },
        }
    }

    /// Whether retrying without a change of the object can help.
    pub fn is_transient(&self) -> bool {
        crate::status::is_transient_reason(self.reason())
    }
}

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::InvalidSpec {
        field: format!("spec.{field}"),
        message: message.into(),
    }
}

fn nanos(field: &str, value: &str) -> Result<u64, Error> {
    let d = parse_duration(value).map_err(|e| invalid(field, e.to_string()))?;
    u64::try_from(d.as_nanos()).map_err(|_| invalid(field, format!("{value} is too long")))
}

/// The consumer configuration the spec asks for, as async-nats's `pull::Config` (validated),
/// and as the JSON NATS receives (`mem_storage` is the server's name of `memory_storage`).
pub fn desired_config(
    spec: &JetStreamConsumerSpec,
    owner: &str,
) -> Result<(pull::Config, Value), Error> {
    let mut v = json!({
        "durable_name": spec.durable_name,
        "name": spec.durable_name,
        "ack_policy": match spec.ack_policy {
            AckPolicy::Explicit => "explicit",
            AckPolicy::All => "all",
            AckPolicy::None => "none",
        },
        "replay_policy": match spec.replay_policy {
            ReplayPolicy::Instant => "instant",
            ReplayPolicy::Original => "original",
        },
        "max_deliver": spec.max_deliver,
    });
    let (policy, seq, time) =
        match spec.deliver_policy {
            DeliverPolicy::All => ("all", None, None),
            DeliverPolicy::Last => ("last", None, None),
            DeliverPolicy::New => ("new", None, None),
            DeliverPolicy::LastPerSubject => ("last_per_subject", None, None),
            DeliverPolicy::ByStartSequence => (
                "by_start_sequence",
                Some(spec.opt_start_seq.ok_or_else(|| {
                    invalid("optStartSeq", "required by deliverPolicy ByStartSequence")
                })?),
                None,
            ),
            DeliverPolicy::ByStartTime => (
                "by_start_time",
                None,
                Some(spec.opt_start_time.clone().ok_or_else(|| {
                    invalid("optStartTime", "required by deliverPolicy ByStartTime")
                })?),
            ),
        };
    v["deliver_policy"] = json!(policy);
    if let Some(seq) = seq {
        v["opt_start_seq"] = json!(seq);
    }
    if let Some(t) = time {
        v["opt_start_time"] = json!(t);
    }
    if let Some(d) = spec.description.as_ref().filter(|d| !d.is_empty()) {
        v["description"] = json!(d);
    }
    if let Some(w) = &spec.ack_wait {
        v["ack_wait"] = json!(nanos("ackWait", w)?);
    }
    if let Some(list) = &spec.backoff {
        let steps = list
            .iter()
            .enumerate()
            .map(|(i, b)| nanos(&format!("backoff[{i}]"), b))
            .collect::<Result<Vec<_>, _>>()?;
        v["backoff"] = json!(steps);
    }
    if let Some(f) = &spec.filter_subject {
        v["filter_subject"] = json!(f);
    }
    if let Some(f) = &spec.filter_subjects {
        v["filter_subjects"] = json!(f);
    }
    for (key, value) in [
        ("max_ack_pending", spec.max_ack_pending),
        ("max_waiting", spec.max_waiting),
        ("max_batch", spec.max_batch),
    ] {
        if let Some(n) = value {
            v[key] = json!(n);
        }
    }
    if let Some(e) = &spec.max_expires {
        v["max_expires"] = json!(nanos("maxExpires", e)?);
    }
    if let Some(t) = &spec.inactive_threshold {
        v["inactive_threshold"] = json!(nanos("inactiveThreshold", t)?);
    }
    if spec.headers_only {
        v["headers_only"] = json!(true);
    }
    v["num_replicas"] = json!(spec.replicas);
    if let Some(s) = &spec.sample_frequency {
        v["sample_freq"] = json!(s);
    }
    let mut metadata = spec.metadata.clone().unwrap_or_default();
    metadata.insert(OWNER_KEY.to_owned(), owner.to_owned());
    v["metadata"] = json!(metadata);
    let config: pull::Config =
        serde_json::from_value(v.clone()).map_err(|e| invalid("durableName", e.to_string()))?;
    let mut wire =
        serde_json::to_value(&config).map_err(|e| invalid("durableName", e.to_string()))?;
    if spec.memory_storage {
        wire["mem_storage"] = json!(true);
    }
    // Compare start times as written (the parsed form may print differently).
    if let Some(t) = v.get("opt_start_time") {
        wire["opt_start_time"] = t.clone();
    }
    Ok((config, wire))
}

const CONSUMER_FIELDS: &[(&str, &str)] = &[
    ("description", "description"),
    ("deliverPolicy", "deliver_policy"),
    ("optStartSeq", "opt_start_seq"),
    ("ackPolicy", "ack_policy"),
    ("ackWait", "ack_wait"),
    ("maxDeliver", "max_deliver"),
    ("backoff", "backoff"),
    ("filterSubject", "filter_subject"),
    ("filterSubjects", "filter_subjects"),
    ("replayPolicy", "replay_policy"),
    ("maxAckPending", "max_ack_pending"),
    ("maxWaiting", "max_waiting"),
    ("maxBatch", "max_batch"),
    ("maxExpires", "max_expires"),
    ("inactiveThreshold", "inactive_threshold"),
    ("headersOnly", "headers_only"),
    ("replicas", "num_replicas"),
    ("memoryStorage", "mem_storage"),
    ("sampleFrequency", "sample_freq"),
    ("metadata", "metadata"),
];

/// Differences between the desired and the server's consumer configuration (wire JSON). Fields
/// the spec leaves unset and the server defaults (ack wait, max ack pending, max waiting) are not
/// compared.
pub fn diff(spec: &JetStreamConsumerSpec, desired: &Value, actual: &Value) -> Vec<FieldDiff> {
    let mut skip = Vec::new();
    // With backoff set, the server stores backoff[0] as the ack wait.
    if spec.ack_wait.is_none() || spec.backoff.as_ref().is_some_and(|b| !b.is_empty()) {
        skip.push("ackWait");
    }
    if spec.max_ack_pending.is_none() {
        skip.push("maxAckPending");
    }
    if spec.max_waiting.is_none() {
        skip.push("maxWaiting");
    }
    let mut diffs = diff_fields(CONSUMER_FIELDS, desired, actual, &skip);
    // "100" and "100%" are the same sampling.
    diffs.retain(|d| {
        d.field != "sampleFrequency"
            || d.desired.as_str().map(|s| s.trim_end_matches('%'))
                != d.actual.as_str().map(|s| s.trim_end_matches('%'))
    });
    diffs
}

/// Changes NATS refuses on an existing consumer.
pub fn immutable_changes(diffs: &[FieldDiff]) -> Vec<&'static str> {
    diffs
        .iter()
        .map(|d| d.field)
        .filter(|f| {
            matches!(
                *f,
                "deliverPolicy"
                    | "optStartSeq"
                    | "ackPolicy"
                    | "replayPolicy"
                    | "maxWaiting"
                    | "memoryStorage"
            )
        })
        .collect()
}

fn describe(diffs: &[FieldDiff]) -> String {
    diffs
        .iter()
        .map(|d| format!("spec.{} (server {}, spec {})", d.field, d.actual, d.desired))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// Reconcile

pub async fn reconcile(obj: Arc<JetStreamConsumer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<JetStreamConsumer> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer::finalizer(&api, FINALIZER, obj.clone(), |event| async {
        match event {
            Finalizer::Apply(obj) => apply(obj, &ctx).await,
            Finalizer::Cleanup(obj) => cleanup(obj, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .reconciled(KIND, started.elapsed().as_secs_f64());
    match &result {
        Ok(_) => ctx.reset_backoff(obj.as_ref()),
        Err(e) => {
            ctx.metrics.failed(KIND, e.reason());
            tracing::warn!(consumer = %obj.spec.durable_name, stream = %obj.spec.stream_name, object = %obj.name_any(), namespace = %ns, reason = e.reason(), error = %e, "reconcile failed");
        }
    }
    result
}

pub fn error_policy(obj: Arc<JetStreamConsumer>, _error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.next_backoff(obj.as_ref()))
}

fn cluster_ns(obj: &JetStreamConsumer) -> String {
    obj.spec.cluster_ref.namespace_for(obj.namespace())
}

async fn connect(obj: &JetStreamConsumer, ctx: &Context) -> Result<Connection, nats::Error> {
    let cluster = ctx
        .cluster(&cluster_ns(obj), &obj.spec.cluster_ref.name)
        .await?;
    ctx.pool.connect(&cluster).await
}

/// `Ok(Err(stream_missing))` when the consumer does not exist.
async fn consumer_info(
    conn: &Connection,
    stream: &str,
    durable: &str,
) -> Result<Result<Value, bool>, nats::Error> {
    match conn
        .request::<_, Value>(
            "consumer.info",
            format!("CONSUMER.INFO.{stream}.{durable}"),
            &json!({}),
        )
        .await
    {
        Ok(info) => Ok(Ok(info)),
        Err(e) if e.api_code() == Some(STREAM_NOT_FOUND) => Ok(Err(true)),
        Err(e) if e.api_code() == Some(CONSUMER_NOT_FOUND) => Ok(Err(false)),
        Err(e) => Err(e),
    }
}

enum Done {
    InSync,
    Created { recreated: bool },
    Updated { diffs: Vec<FieldDiff>, drift: bool },
    Adopted,
}

async fn apply(obj: Arc<JetStreamConsumer>, ctx: &Context) -> Result<Action, Error> {
    if is_paused(obj.as_ref()) {
        let cond = |t| {
            Cond::new(
                t,
                None,
                "Paused",
                format!(
                    "reconciliation paused by annotation {}: paused; remove it to resume",
                    status::PAUSE_ANNOTATION
                ),
            )
        };
        write_status(&obj, ctx, &[cond("Ready"), cond("Synced")], None).await?;
        return Ok(Action::await_change());
    }
    let owner = owner_mark(obj.as_ref());
    let (_, desired) = match desired_config(&obj.spec, &owner) {
        Ok(d) => d,
        Err(e) => return fail(&obj, ctx, e, None).await,
    };
    let cluster_key = obj.spec.cluster_ref.key_for(obj.namespace());
    let rivals = ctx.consumers_named(&cluster_key, &obj.spec.stream_name, &obj.spec.durable_name);
    if let Some(first) = status::oldest(rivals)
        && first.meta().uid != obj.meta().uid
    {
        let owner = format!(
            "{}/{}",
            first.namespace().unwrap_or_default(),
            first.name_any()
        );
        let message = format!(
            "consumer {} of stream {} on NatsCluster {cluster_key} is already managed by JetStreamConsumer {owner} (the older object); delete one of the two or rename spec.durableName",
            obj.spec.durable_name, obj.spec.stream_name
        );
        return fail(&obj, ctx, Error::Conflict { owner, message }, None).await;
    }
    let conn = match connect(&obj, ctx).await {
        Ok(c) => c,
        Err(e) => return fail(&obj, ctx, e.into(), None).await,
    };
    let (stream, durable) = (&obj.spec.stream_name, &obj.spec.durable_name);
    let found = match consumer_info(&conn, stream, durable).await {
        Ok(f) => f,
        Err(e) => return fail(&obj, ctx, e.into(), None).await,
    };
    let previous_reason = obj
        .status
        .as_ref()
        .and_then(|s| status::reason_of(&s.common.conditions, "Synced"))
        .map(str::to_owned);
    let observed_current = obj
        .status
        .as_ref()
        .and_then(|s| s.common.observed_generation)
        == obj.meta().generation;
    let was_synced = previous_reason
        .as_deref()
        .is_some_and(|r| SUCCESS_REASONS.contains(&r));
    if observed_current
        && matches!(
            previous_reason.as_deref(),
            Some("InvalidSpec" | "ImmutableField")
        )
        && found.is_ok()
    {
        return Ok(Action::requeue(ctx.resync(obj.as_ref())));
    }
    let (done, info) = match found {
        Err(true) => {
            let message = format!(
                "stream {stream} does not exist on NatsCluster {cluster_key} yet; the consumer is created once it does (create its JetStreamStream, or fix spec.streamName)"
            );
            return fail(&obj, ctx, Error::StreamNotFound { message }, None).await;
        }
        Err(false) => match write(&conn, stream, durable, &desired, "create", &[]).await {
            Ok(info) => (
                Done::Created {
                    recreated: was_synced && observed_current,
                },
                info,
            ),
            Err(e) => return fail(&obj, ctx, e, None).await,
        },
        Ok(info) => {
            let actual = info.get("config").cloned().unwrap_or_default();
            let marked = actual
                .get("metadata")
                .and_then(|m| m.get(OWNER_KEY))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let ours = marked.as_deref() == Some(owner.as_str());
            if !ours && !obj.spec.adopt_existing {
                let message = match marked {
                    Some(m) => format!(
                        "consumer {durable} of stream {stream} already exists on the server, owned by {m}; set spec.adoptExisting: true to take it over"
                    ),
                    None => format!(
                        "consumer {durable} of stream {stream} already exists on the server and was not created by this object; set spec.adoptExisting: true to take it over (its configuration will be changed to match the spec)"
                    ),
                };
                return fail(&obj, ctx, Error::AlreadyExists { message }, None).await;
            }
            let diffs = diff(&obj.spec, &desired, &actual);
            if diffs.is_empty() {
                (Done::InSync, info)
            } else {
                let immutable = immutable_changes(&diffs);
                if !immutable.is_empty() {
                    let blocked: Vec<FieldDiff> = diffs
                        .iter()
                        .filter(|d| immutable.contains(&d.field))
                        .cloned()
                        .collect();
                    let message = format!(
                        "NATS cannot change {} of an existing consumer in place, and the operator never deletes a consumer to recreate it (its ack state would be lost); revert the field, or create a new consumer (new object, new spec.durableName)",
                        describe(&blocked)
                    );
                    let err = Error::ImmutableField {
                        fields: immutable.iter().map(|f| (*f).to_owned()).collect(),
                        message,
                    };
                    return fail(&obj, ctx, err, Some(&info)).await;
                }
                match write(&conn, stream, durable, &desired, "update", &diffs).await {
                    Ok(updated) => {
                        if ours {
                            (
                                Done::Updated {
                                    diffs,
                                    drift: observed_current && was_synced,
                                },
                                updated,
                            )
                        } else {
                            (Done::Adopted, updated)
                        }
                    }
                    Err(e) => return fail(&obj, ctx, e, Some(&info)).await,
                }
            }
        }
    };
    let (reason, message, event) = match &done {
        Done::InSync => (
            "InSync",
            "the consumer on the server matches the spec".to_owned(),
            None,
        ),
        Done::Created { recreated: false } => (
            "Created",
            "consumer created on the server".to_owned(),
            Some("Created"),
        ),
        Done::Created { recreated: true } => {
            ctx.metrics.drift_repaired(KIND);
            ("DriftRepaired", "the consumer had been deleted on the server behind the operator's back; recreated (its ack state starts over)".to_owned(), Some("DriftRepaired"))
        }
        Done::Updated { diffs, drift: true } => {
            ctx.metrics.drift_repaired(KIND);
            (
                "DriftRepaired",
                format!("reverted changes made on the server: {}", describe(diffs)),
                Some("DriftRepaired"),
            )
        }
        Done::Updated {
            diffs,
            drift: false,
        } => (
            "Updated",
            format!("updated on the server: {}", describe(diffs)),
            Some("Updated"),
        ),
        Done::Adopted => (
            "Adopted",
            "existing consumer adopted (spec.adoptExisting) and brought in line with the spec"
                .to_owned(),
            Some("Adopted"),
        ),
    };
    let keep_previous = matches!(done, Done::InSync) && was_synced && observed_current;
    let conds = if keep_previous {
        Vec::new()
    } else {
        vec![
            Cond::new("Ready", Some(true), reason, message.clone()),
            Cond::new("Synced", Some(true), reason, message.clone()),
        ]
    };
    write_status(&obj, ctx, &conds, Some(&info)).await?;
    if let Some(event) = event {
        status::publish(
            &ctx.recorder,
            obj.as_ref(),
            false,
            event,
            "Reconcile",
            message,
        )
        .await;
    }
    Ok(Action::requeue(ctx.resync(obj.as_ref())))
}

async fn write(
    conn: &Connection,
    stream: &str,
    durable: &str,
    desired: &Value,
    action: &str,
    diffs: &[FieldDiff],
) -> Result<Value, Error> {
    let payload = json!({ "stream_name": stream, "config": desired, "action": action });
    conn.request::<_, Value>(
        if action == "create" { "consumer.create" } else { "consumer.update" },
        format!("CONSUMER.CREATE.{stream}.{durable}"),
        &payload,
    )
    .await
    .map_err(|e| match e {
        nats::Error::Api { code, .. } if code == STREAM_NOT_FOUND => Error::StreamNotFound {
            message: format!("stream {stream} does not exist on the server yet; the consumer is created once it does"),
        },
        nats::Error::Api { description, .. } if action == "update" => {
            let fields: Vec<String> = diffs.iter().map(|d| d.field.to_owned()).collect();
            Error::ImmutableField {
                message: format!(
                    "NATS refused to change {} in place: \"{description}\"; the operator never deletes a consumer to recreate it: revert the change, or create a new consumer",
                    describe(diffs)
                ),
                fields,
            }
        }
        nats::Error::Api { description, .. } => Error::InvalidSpec {
            field: "spec".into(),
            message: format!("NATS refused to create the consumer: \"{description}\"; fix the spec (e.g. a filter subject outside the stream's subjects)"),
        },
        other => other.into(),
    })
}

async fn fail(
    obj: &Arc<JetStreamConsumer>,
    ctx: &Context,
    error: Error,
    info: Option<&Value>,
) -> Result<Action, Error> {
    let reason = error.reason();
    let message = error.to_string();
    let conds = [
        Cond::new("Ready", Some(false), reason, message.clone()),
        Cond::new("Synced", Some(false), reason, message.clone()),
    ];
    let changed = write_status(obj, ctx, &conds, info).await?;
    if changed {
        status::publish(
            &ctx.recorder,
            obj.as_ref(),
            true,
            reason,
            "Reconcile",
            message,
        )
        .await;
    }
    if error.is_transient() {
        return Err(error);
    }
    Ok(Action::requeue(match reason {
        "StreamNotFound" | "Conflict" | "AlreadyExists" => ctx.settings.dependency_poll,
        _ => ctx.resync(obj.as_ref()),
    }))
}

fn count(info: &Value, key: &str) -> Option<u64> {
    info.get(key).and_then(Value::as_u64)
}

async fn write_status(
    obj: &Arc<JetStreamConsumer>,
    ctx: &Context,
    conds: &[Cond],
    info: Option<&Value>,
) -> Result<bool, Error> {
    let old = obj.status.clone().unwrap_or_default();
    let generation = obj.meta().generation;
    let conditions = if conds.is_empty() {
        old.common.conditions.clone()
    } else {
        status::merge_conditions(&old.common.conditions, conds, generation)
    };
    let conditions_changed = !status::same_conditions(&old.common.conditions, &conditions);
    let mut new = JetStreamConsumerStatus {
        common: nats_cdr_crds::CommonStatus {
            observed_generation: generation,
            conditions,
        },
        ..old.clone()
    };
    let structural =
        conditions_changed || new.common.observed_generation != old.common.observed_generation;
    let uid = obj.meta().uid.clone().unwrap_or_default();
    if let Some(info) = info
        && (structural || ctx.live_due(&uid))
    {
        new.pending = count(info, "num_pending");
        new.ack_pending = count(info, "num_ack_pending");
        new.redelivered = count(info, "num_redelivered");
        new.waiting = count(info, "num_waiting");
    }
    if new == old {
        return Ok(false);
    }
    let api: Api<JetStreamConsumer> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    status::apply_status(&api, &obj.name_any(), &new)
        .await
        .map_err(Error::Kube)?;
    ctx.metrics.apiserver_write(KIND);
    ctx.live_written(&uid);
    Ok(conditions_changed)
}

/// Cleanup on delete: like streams (default policy for consumers is `Delete`).
async fn cleanup(obj: Arc<JetStreamConsumer>, ctx: &Context) -> Result<Action, Error> {
    if is_paused(obj.as_ref()) || obj.spec.deletion_policy == DeletionPolicy::Retain {
        return Ok(Action::await_change());
    }
    if is_force_delete(obj.as_ref()) {
        status::publish(
            &ctx.recorder,
            obj.as_ref(),
            true,
            "ForceDeleted",
            "Delete",
            format!(
                "finalizer removed by {}: the consumer was not deleted on the server",
                status::FORCE_DELETE_ANNOTATION
            ),
        )
        .await;
        return Ok(Action::await_change());
    }
    let owner = owner_mark(obj.as_ref());
    let (stream, durable) = (&obj.spec.stream_name, &obj.spec.durable_name);
    let result: Result<(), Error> = async {
        let conn = connect(&obj, ctx).await?;
        let Ok(info) = consumer_info(&conn, stream, durable).await? else {
            return Ok(());
        };
        let marked = info
            .pointer("/config/metadata")
            .and_then(|m| m.get(OWNER_KEY))
            .and_then(Value::as_str);
        if marked != Some(owner.as_str()) {
            return Ok(());
        }
        match conn
            .request::<_, Value>(
                "consumer.delete",
                format!("CONSUMER.DELETE.{stream}.{durable}"),
                &json!({}),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.api_code(), Some(STREAM_NOT_FOUND | CONSUMER_NOT_FOUND)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    .await;
    match result {
        Ok(()) => {
            status::publish(&ctx.recorder, obj.as_ref(), false, "Deleted", "Delete", format!("consumer {durable} of stream {stream} deleted on the server (deletionPolicy: Delete)")).await;
            Ok(Action::await_change())
        }
        Err(error) => {
            let message = format!(
                "{error}; the consumer is deleted once NATS answers (deletionPolicy: Delete); to remove the object without deleting the consumer, annotate it {}: \"true\"",
                status::FORCE_DELETE_ANNOTATION
            );
            write_status(
                &obj,
                ctx,
                &[Cond::new("Ready", Some(false), error.reason(), message)],
                None,
            )
            .await?;
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> JetStreamConsumerSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn spec_maps_to_pull_config() {
        let s = spec(
            "clusterRef: {name: n}\nstreamName: AKIRA_CDR\ndurableName: cdr-worker\nackWait: 30s\nmaxDeliver: 5\nbackoff: [1s, 5s]\nmaxAckPending: 256\nfilterSubject: cdr.raw\nmemoryStorage: true\n",
        );
        let (config, wire) = desired_config(&s, "o").unwrap();
        assert_eq!(config.durable_name.as_deref(), Some("cdr-worker"));
        assert_eq!(config.ack_wait, Duration::from_secs(30));
        assert_eq!(config.max_deliver, 5);
        assert_eq!(
            config.backoff,
            vec![Duration::from_secs(1), Duration::from_secs(5)]
        );
        assert_eq!(config.max_ack_pending, 256);
        assert_eq!(wire["mem_storage"], json!(true));
        assert_eq!(diff(&s, &wire, &wire), vec![]);
    }

    #[test]
    fn deliver_policy_change_is_immutable() {
        let s = spec("clusterRef: {name: n}\nstreamName: S\ndurableName: d\n");
        let (_, wire) = desired_config(&s, "o").unwrap();
        let mut actual = wire.clone();
        actual["deliver_policy"] = json!("new");
        actual["max_deliver"] = json!(3);
        actual["ack_wait"] = json!(30_000_000_000u64);
        let diffs = diff(&s, &wire, &actual);
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert_eq!(immutable_changes(&diffs), vec!["deliverPolicy"]);
    }
}
