//! The consumer configuration a JetStreamConsumer asks for (pure), how it compares with the
//! server's, and which differences NATS refuses on an existing consumer.

use async_nats::jetstream::consumer::pull;
use nats_cdr_crds::consumer::{AckPolicy, DeliverPolicy, JetStreamConsumerSpec, ReplayPolicy};
use nats_cdr_crds::units::parse_duration;
use serde_json::{Value, json};

use super::super::diff::{FieldDiff, diff_fields};
use super::super::{Error, OWNER_KEY, invalid};

fn nanos(field: &str, value: &str) -> Result<u64, Error> {
    let d = parse_duration(value).map_err(|e| invalid(field, e.to_string()))?;
    u64::try_from(d.as_nanos()).map_err(|_| invalid(field, format!("{value} is too long")))
}

/// `deliver_policy` with the start sequence or time it requires.
fn deliver(spec: &JetStreamConsumerSpec, v: &mut Value) -> Result<(), Error> {
    let policy = match spec.deliver_policy {
        DeliverPolicy::All => "all",
        DeliverPolicy::Last => "last",
        DeliverPolicy::New => "new",
        DeliverPolicy::LastPerSubject => "last_per_subject",
        DeliverPolicy::ByStartSequence => {
            let seq = spec.opt_start_seq.ok_or_else(|| {
                invalid("optStartSeq", "required by deliverPolicy ByStartSequence")
            })?;
            v["opt_start_seq"] = json!(seq);
            "by_start_sequence"
        }
        DeliverPolicy::ByStartTime => {
            let time = spec
                .opt_start_time
                .clone()
                .ok_or_else(|| invalid("optStartTime", "required by deliverPolicy ByStartTime"))?;
            v["opt_start_time"] = json!(time);
            "by_start_time"
        }
    };
    v["deliver_policy"] = json!(policy);
    Ok(())
}

/// The timing fields, as nanoseconds.
fn timings(spec: &JetStreamConsumerSpec, v: &mut Value) -> Result<(), Error> {
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
    if let Some(e) = &spec.max_expires {
        v["max_expires"] = json!(nanos("maxExpires", e)?);
    }
    if let Some(t) = &spec.inactive_threshold {
        v["inactive_threshold"] = json!(nanos("inactiveThreshold", t)?);
    }
    Ok(())
}

/// The optional fields that are copied as they are.
fn optional(spec: &JetStreamConsumerSpec, v: &mut Value) {
    if let Some(d) = spec.description.as_ref().filter(|d| !d.is_empty()) {
        v["description"] = json!(d);
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
    if spec.headers_only {
        v["headers_only"] = json!(true);
    }
    if let Some(s) = &spec.sample_frequency {
        v["sample_freq"] = json!(s);
    }
}

/// The consumer configuration the spec asks for, as async-nats's `pull::Config` (validated),
/// and as the JSON NATS receives (`mem_storage` is the server's name of `memory_storage`).
pub(super) fn desired_config(
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
        "num_replicas": spec.replicas,
    });
    deliver(spec, &mut v)?;
    timings(spec, &mut v)?;
    optional(spec, &mut v);
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
pub(super) fn diff(
    spec: &JetStreamConsumerSpec,
    desired: &Value,
    actual: &Value,
) -> Vec<FieldDiff> {
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
pub(super) fn immutable_changes(diffs: &[FieldDiff]) -> Vec<&'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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

    #[test]
    fn a_start_sequence_is_required_by_its_policy() {
        let s = spec(
            "clusterRef: {name: n}\nstreamName: S\ndurableName: d\ndeliverPolicy: ByStartSequence\n",
        );
        let err = desired_config(&s, "o").unwrap_err();
        assert!(err.to_string().starts_with("spec.optStartSeq"), "{err}");
    }
}
