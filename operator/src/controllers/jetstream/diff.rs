//! Comparing a desired JetStream configuration with the server's, on the fields the spec
//! controls, after normalizing the values the server fills in for "unset".

use serde_json::Value;

/// One field of the spec whose value differs on the server.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FieldDiff {
    /// Name of the field in the spec (`maxAge`).
    pub(crate) field: &'static str,
    pub(crate) desired: Value,
    pub(crate) actual: Value,
}

/// Values NATS treats as "not set" compare equal: null, false, 0, "", [], {} (recursively), -1
/// for the limits, and `none` compression; server-owned `_nats.*` metadata keys are ignored.
pub(crate) fn normalize(value: &Value) -> Value {
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

/// The fields (spec name, wire name) whose normalized values differ between `desired` and
/// `actual`, leaving out the spec names in `skip` (fields the spec leaves to the server).
pub(crate) fn diff_fields(
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

/// `spec.maxAge (server 60000000000, spec 3600000000000), ...` for messages.
pub(crate) fn describe(diffs: &[FieldDiff]) -> String {
    diffs
        .iter()
        .map(|d| format!("spec.{} (server {}, spec {})", d.field, d.actual, d.desired))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The diffs of `fields` only.
pub(crate) fn only(diffs: &[FieldDiff], fields: &[&'static str]) -> Vec<FieldDiff> {
    diffs
        .iter()
        .filter(|d| fields.contains(&d.field))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_defaults_compare_equal_to_unset() {
        let server = json!({"max_msgs": -1, "sealed": false, "metadata": {"_nats.level": "1"}, "subjects": []});
        assert_eq!(normalize(&server), Value::Null);
        let fields = [
            ("maxMsgs", "max_msgs"),
            ("subjects", "subjects"),
            ("metadata", "metadata"),
        ];
        assert_eq!(diff_fields(&fields, &json!({}), &server, &[]), vec![]);
        let d = diff_fields(&fields, &json!({"max_msgs": 5}), &server, &[]);
        assert_eq!(describe(&d), "spec.maxMsgs (server null, spec 5)");
        assert_eq!(
            diff_fields(&fields, &json!({"max_msgs": 5}), &server, &["maxMsgs"]),
            vec![]
        );
    }
}
