//! The stream configuration a JetStreamStream asks for (pure), how it compares with the server's,
//! and which differences NATS cannot apply in place.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::stream;
use nats_cdr_crds::stream::{
    Compression, Discard, JetStreamStreamSpec, Retention, Storage, StreamSource,
};
use nats_cdr_crds::units::{parse_duration, parse_size};
use serde_json::json;

use super::super::diff::{FieldDiff, diff_fields};
use super::super::{Error, OWNER_KEY, invalid};

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

fn max_msg_size(value: Option<&String>) -> Result<i32, Error> {
    value.map_or(Ok(-1), |v| {
        let bytes = parse_size(v).map_err(|e| invalid("maxMsgSize", e.to_string()))?;
        i32::try_from(bytes)
            .map_err(|_| invalid("maxMsgSize", format!("{v} is above NATS's limit of 2 GiB")))
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

fn sources(spec: &JetStreamStreamSpec) -> Result<Option<Vec<stream::Source>>, Error> {
    match &spec.sources {
        Some(list) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, s)| source(&format!("sources[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        _ => Ok(None),
    }
}

/// The stream configuration the spec asks for, with the owner mark in its metadata.
pub(super) fn desired_config(
    spec: &JetStreamStreamSpec,
    owner: &str,
) -> Result<stream::Config, Error> {
    let mut metadata: HashMap<String, String> = spec
        .metadata
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    metadata.insert(OWNER_KEY.to_owned(), owner.to_owned());
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
        max_message_size: max_msg_size(spec.max_msg_size.as_ref())?,
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
        sources: sources(spec)?,
        metadata,
        ..Default::default()
    })
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

/// Differences between the desired and the actual stream configuration. The duplicate window
/// and the placement are compared only when the spec sets them (the server picks them else).
pub(super) fn diff(
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
pub(super) fn immutable_changes(diffs: &[FieldDiff]) -> Vec<&'static str> {
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

/// Replicas the server reports current: the leader plus current peers.
pub(super) fn current_replicas(info: &stream::Info) -> i32 {
    match &info.cluster {
        Some(cluster) if cluster.leader.is_some() => {
            1 + i32::try_from(cluster.replicas.iter().filter(|p| p.current).count()).unwrap_or(0)
        }
        Some(_) => 0,
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(err, Error::InvalidSpec { .. }), "{err:?}");
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
