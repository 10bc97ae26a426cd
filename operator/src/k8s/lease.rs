//! Leader election on a coordination.k8s.io Lease: acquire it when free or expired, renew it
//! periodically, step down when a renewal fails, release it on shutdown. The controllers run only
//! while this instance leads.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use tokio::sync::watch;

use super::FIELD_MANAGER;

/// Where the Lease is and how it is held.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    /// Identity written as `holderIdentity`.
    pub identity: String,
    /// A holder that has not renewed for this long has lost the Lease.
    pub lease_duration: Duration,
    /// How often the holder renews (and a candidate retries).
    pub renew_interval: Duration,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            name: "nats-cdr-operator".into(),
            namespace: "nats-cdr-system".into(),
            identity: String::new(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
        }
    }
}

/// Whether `lease` may be taken by `identity` at `now`.
pub(crate) fn can_take(lease: &Lease, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = &lease.spec else { return true };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return true;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    match &spec.renew_time {
        Some(renewed) => renewed.0 + duration < now,
        None => true,
    }
}

/// One attempt to acquire or renew. `Ok(true)`: this instance holds the Lease.
pub(crate) async fn try_acquire(api: &Api<Lease>, s: &LeaseSettings) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let outcome = match api.get_opt(&s.name).await? {
        None => api
            .create(&PostParams::default(), &new_lease(s, now))
            .await
            .map(drop),
        Some(lease) if can_take(&lease, &s.identity, now) => api
            .patch(
                &s.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&renewal(&lease, s, now)),
            )
            .await
            .map(drop),
        Some(_) => return Ok(false),
    };
    match outcome {
        Ok(()) => Ok(true),
        // Someone else created or changed it first: they win, we lose.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

fn lease_seconds(s: &LeaseSettings) -> i32 {
    i32::try_from(s.lease_duration.as_secs()).unwrap_or(15)
}

/// A Lease held by this instance from `now`.
fn new_lease(s: &LeaseSettings, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(s.name.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(s.identity.clone()),
            lease_duration_seconds: Some(lease_seconds(s)),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// The apply body that renews (or takes over) `lease`. Its resourceVersion makes the apply
/// conditional: a concurrent change wins.
fn renewal(lease: &Lease, s: &LeaseSettings, now: Timestamp) -> serde_json::Value {
    let spec = lease.spec.clone().unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(s.identity.as_str());
    let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
    let acquire = if ours {
        spec.acquire_time.map(|t| t.0).unwrap_or(now)
    } else {
        now
    };
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": s.name, "resourceVersion": lease.metadata.resource_version},
        "spec": {
            "holderIdentity": s.identity,
            "leaseDurationSeconds": lease_seconds(s),
            "acquireTime": MicroTime(acquire),
            "renewTime": MicroTime(now),
            "leaseTransitions": transitions,
        }
    })
}

async fn release(api: &Api<Lease>, s: &LeaseSettings) -> Result<(), kube::Error> {
    let Some(lease) = api.get_opt(&s.name).await? else {
        return Ok(());
    };
    let holder = lease
        .spec
        .as_ref()
        .and_then(|l| l.holder_identity.as_deref());
    if holder != Some(s.identity.as_str()) {
        return Ok(());
    }
    let body = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": s.name, "resourceVersion": lease.metadata.resource_version},
        "spec": {"holderIdentity": "", "renewTime": MicroTime(Timestamp::UNIX_EPOCH)}
    });
    api.patch(
        &s.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// Runs the elector until `stop` turns true, publishing whether this instance leads.
pub(crate) async fn run(
    client: Client,
    s: LeaseSettings,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client, &s.namespace);
    loop {
        let now_leading = match try_acquire(&api, &s).await {
            Ok(l) => l,
            Err(error) => {
                tracing::warn!(%error, lease = %s.name, "cannot acquire or renew the Lease; stepping down");
                false
            }
        };
        if now_leading != *leading.borrow() {
            tracing::info!(identity = %s.identity, leading = now_leading, "leadership changed");
            let _ = leading.send(now_leading);
        }
        tokio::select! {
            _ = tokio::time::sleep(s.renew_interval) => {}
            _ = stop.wait_for(|v| *v) => break,
        }
    }
    if *leading.borrow() {
        let _ = leading.send(false);
        release(&api, &s).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_secs_ago: i64) -> Lease {
        let now = Timestamp::now();
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
                ..LeaseSpec::default()
            }),
        }
    }

    #[test]
    fn held_lease_is_taken_only_when_expired_or_ours() {
        let now = Timestamp::now();
        assert!(!can_take(&lease("other", 1), "me", now));
        assert!(can_take(&lease("other", 60), "me", now));
        assert!(can_take(&lease("me", 1), "me", now));
        assert!(can_take(&lease("", 1), "me", now));
    }
}
