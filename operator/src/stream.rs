//! The JetStreamStream controller: read (the object, its cluster, the server's stream info) ->
//! validate and build the desired `stream::Config` (pure) -> compare on the fields the spec
//! controls -> create or update only when they differ -> status by server-side apply, only when
//! it changed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::{Resource, ResourceExt};
use nats_cdr_crds::common::DeletionPolicy;
use nats_cdr_crds::stream::{
    Compression, Discard, JetStreamStream, JetStreamStreamSpec, JetStreamStreamStatus, Retention,
    Storage, StreamSource,
};
use nats_cdr_crds::units::{parse_duration, parse_size};
use serde_json::{Value, json};

use crate::Context;
use crate::nats::{self, Connection, STREAM_NOT_FOUND};
use crate::status::{
    self, Cond, FINALIZER, OWNER_KEY, SUCCESS_REASONS, is_force_delete, is_paused, owner_mark,
};

/// Kind name (metric label).
pub const KIND: &str = "JetStreamStream";

/// Failure of a JetStreamStream reconcile.
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
            Self::Kube(_) => "KubeError",
            Self::Finalizer(e) => match e.as_ref() {
                finalizer::Error::ApplyFailed(e) | finalizer::Error::CleanupFailed(e) => e.reason(),
                _ => "FinalizerError",
            },
        }
    }

    /// Whether retrying without a change of the object can help (else: wait for a change).
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

// ---------------------------------------------------------------------------------------------
// Build (pure)

fn duration(field: &str, value: Option<&String>) -> Result<Duration, Error> {
    value.map_or(Ok(Duration::ZERO), |v| {
        parse_duration(v).map_err(|e| invalid(field, e.to_string()))
    })
}

fn size_i64(field: &str, value: Option<&String>) -> Result<i64, Error> {
    value.map_or(Ok(-1), |v| {
        let bytes = parse_size(v).map_err(|e| invalid(field, e.to_string()))?;
        i64::try_from(bytes).map_err(|_| invalid(field, format!("{v} is too large")))
    })
}

fn source(field: &str, s: &StreamSource) -> Result<stream::Source, Error> {
    let mut v = json!({ "name": s.name });
    if let Some(seq) = s.opt_start_seq {
        v["opt_start_seq"] = json!(seq);
    }
    if let Some(t) = &s.opt_start_time {
        v["opt_start_time"] = json!(t);
    }
    if let Some(f) = &s.filter_subject {
        v["filter_subject"] = json!(f);
    }
    if let Some(api) = &s.external_api_prefix {
        v["external"] = json!({ "api": api, "deliver": s.external_deliver_prefix });
    } else if s.external_deliver_prefix.is_some() {
        return Err(invalid(
            &format!("{field}.externalDeliverPrefix"),
            "needs externalApiPrefix as well",
        ));
    }
    serde_json::from_value(v).map_err(|e| invalid(field, e.to_string()))
}

/// The stream configuration the spec asks for, with the owner mark in its metadata.
pub fn desired_config(spec: &JetStreamStreamSpec, owner: &str) -> Result<stream::Config, Error> {
    let max_msg_size = match &spec.max_msg_size {
        None => -1,
        Some(v) => {
            let bytes = parse_size(v).map_err(|e| invalid("maxMsgSize", e.to_string()))?;
            i32::try_from(bytes)
                .map_err(|_| invalid("maxMsgSize", format!("{v} is above NATS's limit of 2 GiB")))?
        }
    };
    let mut metadata: HashMap<String, String> = spec
        .metadata
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    metadata.insert(OWNER_KEY.to_owned(), owner.to_owned());
    let sources = match &spec.sources {
        Some(list) if !list.is_empty() => Some(
            list.iter()
                .enumerate()
                .map(|(i, s)| source(&format!("sources[{i}]"), s))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        _ => None,
    };
    Ok(stream::Config {
        name: spec.name.clone(),
        description: spec.description.clone().filter(|d| !d.is_empty()),
        subjects: spec.subjects.clone().unwrap_or_default(),
        retention: match spec.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::Interest => stream::RetentionPolicy::Interest,
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
        },
        storage: match spec.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        num_replicas: usize::try_from(spec.replicas.max(1)).unwrap_or(1),
        max_age: duration("maxAge", spec.max_age.as_ref())?,
        max_bytes: size_i64("maxBytes", spec.max_bytes.as_ref())?,
        max_messages: spec.max_msgs.unwrap_or(-1),
        max_message_size: max_msg_size,
        max_messages_per_subject: spec.max_msgs_per_subject.unwrap_or(-1),
        max_consumers: spec.max_consumers.unwrap_or(-1),
        discard: match spec.discard {
            Discard::Old => stream::DiscardPolicy::Old,
            Discard::New => stream::DiscardPolicy::New,
        },
        discard_new_per_subject: spec.discard_new_per_subject,
        duplicate_window: duration("duplicateWindow", spec.duplicate_window.as_ref())?,
        deny_delete: spec.deny_delete,
        deny_purge: spec.deny_purge,
        allow_rollup: spec.allow_rollup,
        allow_direct: spec.allow_direct,
        compression: Some(match spec.compression {
            Compression::None => stream::Compression::None,
            Compression::S2 => stream::Compression::S2,
        }),
        placement: spec.placement.as_ref().map(|p| stream::Placement {
            cluster: p.cluster.clone(),
            tags: p.tags.clone(),
        }),
        mirror: spec
            .mirror
            .as_ref()
            .map(|m| source("mirror", m))
            .transpose()?,
        sources,
        metadata,
        ..Default::default()
    })
}

/// One field of the spec whose value differs on the server.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldDiff {
    /// Name of the field in the spec (`maxAge`).
    pub field: &'static str,
    pub desired: Value,
    pub actual: Value,
}

/// Spec field name and NATS wire name of every field the spec controls.
const STREAM_FIELDS: &[(&str, &str)] = &[
    ("description", "description"),
    ("subjects", "subjects"),
    ("retention", "retention"),
    ("storage", "storage"),
    ("replicas", "num_replicas"),
    ("maxAge", "max_age"),
    ("maxBytes", "max_bytes"),
    ("maxMsgs", "max_msgs"),
    ("maxMsgSize", "max_msg_size"),
    ("maxMsgsPerSubject", "max_msgs_per_subject"),
    ("maxConsumers", "max_consumers"),
    ("discard", "discard"),
    ("discardNewPerSubject", "discard_new_per_subject"),
    ("duplicateWindow", "duplicate_window"),
    ("denyDelete", "deny_delete"),
    ("denyPurge", "deny_purge"),
    ("allowRollup", "allow_rollup_hdrs"),
    ("allowDirect", "allow_direct"),
    ("compression", "compression"),
    ("placement", "placement"),
    ("mirror", "mirror"),
    ("sources", "sources"),
    ("metadata", "metadata"),
];

/// Values NATS treats as "not set" compare equal: null, false, 0, "", [], {} (recursively), -1
/// for the limits, and `none` compression; server-owned `_nats.*` metadata keys are ignored.
pub fn normalize(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let out: serde_json::Map<String, Value> = map
                .iter()
                .filter(|(k, _)| !k.starts_with("_nats"))
                .map(|(k, v)| (k.clone(), normalize(v)))
                .filter(|(_, v)| !v.is_null())
                .collect();
            if out.is_empty() {
                Value::Null
            } else {
                Value::Object(out)
            }
        }
        Value::Array(items) if items.is_empty() => Value::Null,
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        Value::Bool(false) => Value::Null,
        Value::String(s) if s.is_empty() || s == "none" => Value::Null,
        Value::Number(n) if n.as_i64() == Some(0) || n.as_i64() == Some(-1) => Value::Null,
        other => other.clone(),
    }
}

/// The spec-controlled fields whose values differ between `desired` and `actual`, after
/// normalization. Fields the spec leaves to the server (duplicate window, placement when unset)
/// are not compared.
pub fn diff_fields(
    fields: &[(&'static str, &'static str)],
    desired: &Value,
    actual: &Value,
    skip: &[&str],
) -> Vec<FieldDiff> {
    fields
        .iter()
        .filter(|(field, _)| !skip.contains(field))
        .filter_map(|(field, wire)| {
            let d = normalize(desired.get(*wire).unwrap_or(&Value::Null));
            let a = normalize(actual.get(*wire).unwrap_or(&Value::Null));
            (d != a).then_some(FieldDiff {
                field,
                desired: d,
                actual: a,
            })
        })
        .collect()
}

/// Differences between the desired and the actual stream configuration.
pub fn diff(
    spec: &JetStreamStreamSpec,
    desired: &stream::Config,
    actual: &stream::Config,
) -> Vec<FieldDiff> {
    let desired = serde_json::to_value(desired).unwrap_or_default();
    let actual = serde_json::to_value(actual).unwrap_or_default();
    let mut skip = Vec::new();
    if spec.duplicate_window.is_none() {
        skip.push("duplicateWindow");
    }
    if spec.placement.is_none() {
        skip.push("placement");
    }
    diff_fields(STREAM_FIELDS, &desired, &actual, &skip)
}

/// Changes NATS cannot make in place (and the operator never makes by delete + recreate).
pub fn immutable_changes(diffs: &[FieldDiff]) -> Vec<&'static str> {
    diffs
        .iter()
        .filter(|d| match d.field {
            "storage" | "mirror" => true,
            // NATS moves between limits and interest, never to or from a work queue.
            "retention" => d.desired == json!("workqueue") || d.actual == json!("workqueue"),
            _ => false,
        })
        .map(|d| d.field)
        .collect()
}

fn describe(diffs: &[FieldDiff]) -> String {
    diffs
        .iter()
        .map(|d| format!("spec.{} (server {}, spec {})", d.field, d.actual, d.desired))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether a NATS refusal means "this field cannot be changed in place".
fn refusal_is_immutable(description: &str) -> bool {
    let d = description.to_ascii_lowercase();
    [
        // NATS prefixes its in-place refusals with this ("... can not cancel deny message deletes").
        "configuration update can not",
        "can not cancel",
        "can not change",
        "cannot change",
        "can not be changed",
        "can not be updated",
        "can not be modified",
        "cannot be changed",
        "not allowed to change",
        "can not be altered",
    ]
    .iter()
    .any(|p| d.contains(p))
}

/// Replicas the server reports current: the leader plus current peers.
pub fn current_replicas(info: &stream::Info) -> i32 {
    match &info.cluster {
        Some(cluster) if cluster.leader.is_some() => {
            1 + i32::try_from(cluster.replicas.iter().filter(|p| p.current).count()).unwrap_or(0)
        }
        Some(_) => 0,
        None => 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Reconcile

/// Entry point of the controller.
pub async fn reconcile(obj: Arc<JetStreamStream>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let ns = obj.namespace().unwrap_or_default();
    let api: Api<JetStreamStream> = Api::namespaced(ctx.client.clone(), &ns);
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
            tracing::warn!(stream = %obj.spec.name, object = %obj.name_any(), namespace = %ns, reason = e.reason(), error = %e, "reconcile failed");
        }
    }
    result
}

/// Retry policy: capped exponential backoff per object.
pub fn error_policy(obj: Arc<JetStreamStream>, _error: &Error, ctx: Arc<Context>) -> Action {
    Action::requeue(ctx.next_backoff(obj.as_ref()))
}

fn cluster_ns(obj: &JetStreamStream) -> String {
    obj.spec.cluster_ref.namespace_for(obj.namespace())
}

async fn connect(obj: &JetStreamStream, ctx: &Context) -> Result<Connection, nats::Error> {
    let cluster = ctx
        .cluster(&cluster_ns(obj), &obj.spec.cluster_ref.name)
        .await?;
    ctx.pool.connect(&cluster).await
}

async fn stream_info(conn: &Connection, name: &str) -> Result<Option<stream::Info>, nats::Error> {
    match conn
        .request::<_, stream::Info>("stream.info", format!("STREAM.INFO.{name}"), &json!({}))
        .await
    {
        Ok(info) => Ok(Some(info)),
        Err(e) if e.api_code() == Some(STREAM_NOT_FOUND) => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a successful apply did.
enum Done {
    InSync,
    Created { recreated: bool },
    Updated { diffs: Vec<FieldDiff>, drift: bool },
    Adopted,
}

async fn apply(obj: Arc<JetStreamStream>, ctx: &Context) -> Result<Action, Error> {
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
        write_status(&obj, ctx, &[cond("Ready"), cond("Synced")], None, false).await?;
        return Ok(Action::await_change());
    }
    // Validate (pure) before touching anything.
    let owner = owner_mark(obj.as_ref());
    let desired = match desired_config(&obj.spec, &owner) {
        Ok(d) => d,
        Err(e) => return fail(&obj, ctx, e, None).await,
    };
    // Another object naming the same stream on the same cluster: the oldest owns it.
    let cluster_key = obj.spec.cluster_ref.key_for(obj.namespace());
    let rivals = ctx.streams_named(&cluster_key, &obj.spec.name);
    if let Some(first) = status::oldest(rivals)
        && first.meta().uid != obj.meta().uid
    {
        let owner = format!(
            "{}/{}",
            first.namespace().unwrap_or_default(),
            first.name_any()
        );
        let message = format!(
            "stream {} on NatsCluster {cluster_key} is already managed by JetStreamStream {owner} (the older object); delete one of the two or rename spec.name",
            obj.spec.name
        );
        return fail(&obj, ctx, Error::Conflict { owner, message }, None).await;
    }

    let conn = match connect(&obj, ctx).await {
        Ok(c) => c,
        Err(e) => return fail(&obj, ctx, e.into(), None).await,
    };
    let info = match stream_info(&conn, &obj.spec.name).await {
        Ok(i) => i,
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
    // An invalid or immutable change already reported for this generation waits for an edit.
    if observed_current
        && matches!(
            previous_reason.as_deref(),
            Some("InvalidSpec" | "ImmutableField")
        )
        && info.is_some()
    {
        return Ok(Action::requeue(ctx.resync(obj.as_ref())));
    }

    let (done, info) = match info {
        None => {
            let created = create(&conn, &desired).await;
            match created {
                Ok(info) => (
                    Done::Created {
                        recreated: was_synced && observed_current,
                    },
                    info,
                ),
                Err(e) => return fail(&obj, ctx, e, None).await,
            }
        }
        Some(info) => {
            let marked = info.config.metadata.get(OWNER_KEY);
            let ours = marked.is_some_and(|m| *m == owner);
            if !ours && !obj.spec.adopt_existing {
                let message = match marked {
                    Some(m) => format!(
                        "stream {} already exists on the server, owned by {m}; set spec.adoptExisting: true to take it over",
                        obj.spec.name
                    ),
                    None => format!(
                        "stream {} already exists on the server and was not created by this object; set spec.adoptExisting: true to take it over (its configuration will be changed to match the spec)",
                        obj.spec.name
                    ),
                };
                // No live figures of a stream this object does not own.
                return fail(&obj, ctx, Error::AlreadyExists { message }, None).await;
            }
            let diffs = diff(&obj.spec, &desired, &info.config);
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
                        "NATS cannot change {} of an existing stream in place, and the operator never deletes a stream to recreate it; revert the field, or create a new stream (new object, new spec.name) and move consumers to it",
                        describe(&blocked)
                    );
                    let err = Error::ImmutableField {
                        fields: immutable.iter().map(|f| (*f).to_owned()).collect(),
                        message,
                    };
                    return fail(&obj, ctx, err, Some(&info)).await;
                }
                match update(&conn, &desired, &diffs).await {
                    Ok(updated) => {
                        let drift = ours && observed_current && was_synced;
                        if ours {
                            (Done::Updated { diffs, drift }, updated)
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
            "the stream on the server matches the spec".to_owned(),
            None,
        ),
        Done::Created { recreated: false } => (
            "Created",
            "stream created on the server".to_owned(),
            Some("Created"),
        ),
        Done::Created { recreated: true } => {
            ctx.metrics.drift_repaired(KIND);
            (
                "DriftRepaired",
                "the stream had been deleted on the server behind the operator's back; recreated (its messages are gone)".to_owned(),
                Some("DriftRepaired"),
            )
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
            "existing stream adopted (spec.adoptExisting) and brought in line with the spec"
                .to_owned(),
            Some("Adopted"),
        ),
    };
    let current = current_replicas(&info);
    let wanted = obj.spec.replicas.max(1);
    let mut conds = vec![Cond::new("Ready", Some(true), reason, message.clone())];
    if current < wanted {
        conds.push(Cond::new(
            "Synced",
            Some(false),
            "ReplicasPending",
            format!("{current} of {wanted} replicas current on the server; waiting for the new peers to catch up"),
        ));
    } else {
        conds.push(Cond::new("Synced", Some(true), reason, message.clone()));
    }
    // A steady state keeps the reason of the last change: no status write just to say InSync.
    let keep_previous = matches!(done, Done::InSync) && was_synced && observed_current;
    let conds = if keep_previous { Vec::new() } else { conds };
    write_status(&obj, ctx, &conds, Some(&info), event.is_some()).await?;
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
    if current < wanted {
        return Ok(Action::requeue(
            ctx.settings.dependency_poll.min(Duration::from_secs(5)),
        ));
    }
    Ok(Action::requeue(ctx.resync(obj.as_ref())))
}

async fn create(conn: &Connection, desired: &stream::Config) -> Result<stream::Info, Error> {
    conn.request::<_, stream::Info>(
        "stream.create",
        format!("STREAM.CREATE.{}", desired.name),
        desired,
    )
    .await
    .map_err(|e| match e {
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
    conn.request::<_, stream::Info>(
        "stream.update",
        format!("STREAM.UPDATE.{}", desired.name),
        desired,
    )
    .await
    .map_err(|e| match e {
        nats::Error::Api { description, .. } if refusal_is_immutable(&description) => {
            Error::ImmutableField {
                fields: diffs.iter().map(|d| d.field.to_owned()).collect(),
                message: format!(
                    "NATS refused to change {} in place: \"{description}\"; the operator never deletes a stream to recreate it: revert the change, or create a new stream",
                    describe(diffs)
                ),
            }
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

/// Reports `error` in status (and an Event on transition). Transient errors are returned for
/// backoff; the others wait for a change of the object (with a slow resync).
async fn fail(
    obj: &Arc<JetStreamStream>,
    ctx: &Context,
    error: Error,
    info: Option<&stream::Info>,
) -> Result<Action, Error> {
    let reason = error.reason();
    let message = error.to_string();
    let conds = [
        Cond::new("Ready", Some(false), reason, message.clone()),
        Cond::new("Synced", Some(false), reason, message.clone()),
    ];
    let changed = write_status(obj, ctx, &conds, info, false).await?;
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
        "Conflict" | "AlreadyExists" => ctx.settings.dependency_poll.max(ctx.settings.min_backoff),
        _ => ctx.resync(obj.as_ref()),
    }))
}

/// Writes status when it differs from what the object shows. Live figures are refreshed at most
/// every `status_refresh` unless something else changes. Returns whether the Ready/Synced
/// conditions changed.
async fn write_status(
    obj: &Arc<JetStreamStream>,
    ctx: &Context,
    conds: &[Cond],
    info: Option<&stream::Info>,
    force: bool,
) -> Result<bool, Error> {
    let old = obj.status.clone().unwrap_or_default();
    let generation = obj.meta().generation;
    let conditions = if conds.is_empty() {
        old.common.conditions.clone()
    } else {
        status::merge_conditions(&old.common.conditions, conds, generation)
    };
    let conditions_changed = !status::same_conditions(&old.common.conditions, &conditions);
    let mut new = JetStreamStreamStatus {
        common: nats_cdr_crds::CommonStatus {
            observed_generation: generation,
            conditions,
        },
        ..old.clone()
    };
    if let Some(info) = info {
        new.current_replicas = Some(current_replicas(info));
    }
    let structural = conditions_changed
        || new.common.observed_generation != old.common.observed_generation
        || new.current_replicas != old.current_replicas;
    let uid = obj.meta().uid.clone().unwrap_or_default();
    if let Some(info) = info {
        let live_due = structural || force || ctx.live_due(&uid);
        if live_due {
            new.messages = Some(info.state.messages);
            new.bytes = Some(info.state.bytes);
            new.first_sequence = Some(info.state.first_sequence);
            new.last_sequence = Some(info.state.last_sequence);
            new.consumer_count = Some(info.state.consumer_count as u64);
        }
    }
    if new == old {
        return Ok(false);
    }
    let api: Api<JetStreamStream> =
        Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    status::apply_status(&api, &obj.name_any(), &new)
        .await
        .map_err(Error::Kube)?;
    ctx.metrics.apiserver_write(KIND);
    ctx.live_written(&uid);
    Ok(conditions_changed)
}

/// Cleanup on delete. Paused or `Retain`: nothing on NATS, the finalizer goes at once. `Delete`:
/// the stream is deleted when this object owns it; while NATS is unreachable the finalizer stays
/// (retried with backoff, `Ready=False NatsUnavailable`) unless `nats-cdr.dev/force-delete: "true"`.
async fn cleanup(obj: Arc<JetStreamStream>, ctx: &Context) -> Result<Action, Error> {
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
                "finalizer removed by {}: the stream was not deleted on the server",
                status::FORCE_DELETE_ANNOTATION
            ),
        )
        .await;
        return Ok(Action::await_change());
    }
    let owner = owner_mark(obj.as_ref());
    let result: Result<(), Error> = async {
        let conn = connect(&obj, ctx).await?;
        let Some(info) = stream_info(&conn, &obj.spec.name).await? else {
            return Ok(());
        };
        if info.config.metadata.get(OWNER_KEY) != Some(&owner) {
            // Not ours (never adopted, or a conflict loser): leave it alone.
            return Ok(());
        }
        match conn
            .request::<_, Value>(
                "stream.delete",
                format!("STREAM.DELETE.{}", obj.spec.name),
                &json!({}),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.api_code() == Some(STREAM_NOT_FOUND) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    .await;
    match result {
        Ok(()) => {
            status::publish(
                &ctx.recorder,
                obj.as_ref(),
                false,
                "Deleted",
                "Delete",
                format!(
                    "stream {} deleted on the server (deletionPolicy: Delete)",
                    obj.spec.name
                ),
            )
            .await;
            Ok(Action::await_change())
        }
        Err(error) => {
            let message = format!(
                "{error}; the stream is deleted once NATS answers (deletionPolicy: Delete); to remove the object without deleting the stream, annotate it {}: \"true\"",
                status::FORCE_DELETE_ANNOTATION
            );
            let conds = [Cond::new("Ready", Some(false), error.reason(), message)];
            write_status(&obj, ctx, &conds, None, false).await?;
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_update_refusals_are_recognised() {
        assert!(refusal_is_immutable(
            "stream configuration update can not cancel deny message deletes (code 500, error code 10052)"
        ));
        assert!(!refusal_is_immutable(
            "insufficient resources (code 503, error code 10023)"
        ));
    }

    fn spec(yaml: &str) -> JetStreamStreamSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    const BASE: &str = "
clusterRef: {name: nats}
name: AKIRA_CDR
subjects: [cdr.raw, cdr.>]
maxAge: 24h
maxBytes: 1GiB
duplicateWindow: 2m
";

    #[test]
    fn spec_maps_to_config_with_parsed_units() {
        let c = desired_config(&spec(BASE), "ns/a/u").unwrap();
        assert_eq!(c.max_age, Duration::from_secs(86_400));
        assert_eq!(c.max_bytes, 1024 * 1024 * 1024);
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(c.max_messages, -1);
        assert_eq!(c.metadata.get(OWNER_KEY).unwrap(), "ns/a/u");
        assert_eq!(c.subjects, vec!["cdr.raw", "cdr.>"]);
    }

    #[test]
    fn equal_configs_have_no_diff_even_with_server_defaults() {
        let s = spec("clusterRef: {name: nats}\nname: S\nsubjects: [a]\n");
        let desired = desired_config(&s, "o").unwrap();
        // What a server answers: defaults filled in, a server metadata key, duplicate window.
        let mut actual: stream::Config = serde_json::from_value(json!({
            "name": "S", "subjects": ["a"], "retention": "limits", "max_consumers": -1,
            "max_msgs": -1, "max_bytes": -1, "max_age": 0, "max_msgs_per_subject": -1,
            "max_msg_size": -1, "discard": "old", "storage": "file", "num_replicas": 1,
            "duplicate_window": 120_000_000_000u64, "compression": "none",
            "allow_direct": false, "mirror_direct": false, "sealed": false,
            "deny_delete": false, "deny_purge": false, "allow_rollup_hdrs": false,
            "consumer_limits": {}, "metadata": {"_nats.req.level": "0", OWNER_KEY: "o"}
        }))
        .unwrap();
        assert_eq!(diff(&s, &desired, &actual), vec![]);
        actual.max_age = Duration::from_secs(60);
        let d = diff(&s, &desired, &actual);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].field, "maxAge");
    }

    #[test]
    fn storage_and_workqueue_changes_are_immutable() {
        let s = spec(BASE);
        let desired = desired_config(&s, "o").unwrap();
        let mut actual = desired.clone();
        actual.storage = stream::StorageType::Memory;
        actual.retention = stream::RetentionPolicy::WorkQueue;
        actual.max_age = Duration::from_secs(1);
        let diffs = diff(&s, &desired, &actual);
        assert_eq!(immutable_changes(&diffs), vec!["retention", "storage"]);
    }

    #[test]
    fn bad_units_name_the_field() {
        let mut s = spec(BASE);
        s.max_msg_size = Some("3GiB".into());
        let err = desired_config(&s, "o").unwrap_err();
        assert_eq!(err.reason(), "InvalidSpec");
        assert!(err.to_string().starts_with("spec.maxMsgSize"), "{err}");
    }

    #[test]
    fn mirror_and_sources_map() {
        let s = spec(
            "clusterRef: {name: n}\nname: M\nmirror: {name: AKIRA_CDR, optStartSeq: 5, externalApiPrefix: '$JS.hub.API'}\n",
        );
        let c = desired_config(&s, "o").unwrap();
        let m = c.mirror.unwrap();
        assert_eq!(m.name, "AKIRA_CDR");
        assert_eq!(m.start_sequence, Some(5));
        assert_eq!(m.external.unwrap().api_prefix, "$JS.hub.API");
    }
}
