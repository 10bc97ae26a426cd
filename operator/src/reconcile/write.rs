//! Status writes of the frame: the new status is computed (pure), compared with what the object
//! shows, and written by server-side apply only when it differs. Live figures are refreshed at
//! most every `status_refresh`, unless something else changes anyway.

use super::{Context, Error, Reconciler};
use crate::k8s::{self, object_key};
use crate::status::{self, Cond, merge_conditions, transitioned};

/// Writes the status of `obj` when it changes; returns whether a condition transitioned (a new
/// status or reason: the moment for an Event).
pub(super) async fn status<R: Reconciler>(
    obj: &R,
    ctx: &Context,
    conds: &[Cond],
    observed: Option<&R::Observed>,
    force_live: bool,
) -> Result<bool, Error> {
    let key = object_key(obj);
    let old = obj.status().cloned().unwrap_or_default();
    let new = next::<R>(&old, obj.meta().generation, conds, observed, |structural| {
        structural || force_live || ctx.live.due(&key)
    });
    if new == old {
        return Ok(false);
    }
    status::apply(&k8s::api_for(&ctx.client, obj), obj, &new)
        .await
        .map_err(Error::Status)?;
    ctx.metrics.apiserver_write(R::KIND);
    ctx.live.written(&key);
    Ok(transitioned(
        &R::common(&old).conditions,
        &R::common(&new).conditions,
    ))
}

/// The status after setting `conds` (none: keep the conditions) and what was observed;
/// `live_due(structural)` says whether live figures are copied too, `structural` being whether
/// anything else changed.
pub(super) fn next<R: Reconciler>(
    old: &R::Status,
    generation: Option<i64>,
    conds: &[Cond],
    observed: Option<&R::Observed>,
    live_due: impl FnOnce(bool) -> bool,
) -> R::Status {
    let mut new = old.clone();
    let common = R::common_mut(&mut new);
    common.observed_generation = generation;
    if !conds.is_empty() {
        common.conditions = merge_conditions(&R::common(old).conditions, conds, generation);
    }
    if let Some(observed) = observed {
        R::set_observed(&mut new, observed);
        if live_due(new != *old) {
            R::set_live(&mut new, observed);
        }
    }
    new
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::stream;
    use nats_cdr_crds::{JetStreamStream, JetStreamStreamStatus};
    use serde_json::json;

    /// A stream as the server reports it: `messages` messages, one replica.
    fn info(messages: u64) -> stream::Info {
        let ts = "2026-01-01T00:00:00Z";
        serde_json::from_value(json!({
            "config": {"name": "S", "retention": "limits", "storage": "file", "discard": "old",
                       "max_consumers": -1, "max_msgs": -1, "max_bytes": -1, "max_age": 0,
                       "max_msg_size": -1, "num_replicas": 1},
            "created": ts,
            "state": {"messages": messages, "bytes": 10, "first_seq": 1, "first_ts": ts,
                      "last_seq": messages, "last_ts": ts, "consumer_count": 0}
        }))
        .unwrap()
    }

    fn ready(reason: &'static str) -> Cond {
        Cond::new("Ready", Some(true), reason, "ok".into())
    }

    /// A status written once with `info(5)`, for generation 1.
    fn written() -> JetStreamStreamStatus {
        next::<JetStreamStream>(
            &JetStreamStreamStatus::default(),
            Some(1),
            &[ready("Created")],
            Some(&info(5)),
            |_| true,
        )
    }

    #[test]
    fn a_steady_state_changes_nothing_until_live_figures_are_due() {
        let old = written();
        assert_eq!(old.current_replicas, Some(1));
        assert_eq!(old.messages, Some(5));
        let mut asked = None;
        let steady = next::<JetStreamStream>(&old, Some(1), &[], Some(&info(9)), |structural| {
            asked = Some(structural);
            false
        });
        assert_eq!(asked, Some(false), "nothing structural changed");
        assert_eq!(steady, old, "no write");
        let due = next::<JetStreamStream>(&old, Some(1), &[], Some(&info(9)), |_| true);
        assert_eq!(due.messages, Some(9));
    }

    #[test]
    fn a_new_generation_or_condition_is_structural_and_brings_live_figures_along() {
        let old = written();
        for (generation, conds) in [(Some(2), vec![]), (Some(1), vec![ready("Updated")])] {
            let mut asked = None;
            let new = next::<JetStreamStream>(&old, generation, &conds, Some(&info(9)), |s| {
                asked = Some(s);
                s
            });
            assert_eq!(asked, Some(true));
            assert_eq!(new.messages, Some(9));
            assert_eq!(new.common.observed_generation, generation);
        }
    }

    #[test]
    fn no_conditions_keep_the_conditions() {
        let old = written();
        let new = next::<JetStreamStream>(&old, Some(1), &[], None, |_| true);
        assert_eq!(new, old);
    }
}
