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
