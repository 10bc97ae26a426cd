//! The decisions of the stream and consumer controllers, pure: from what the server holds, the
//! owner mark, `adoptExisting` and what status says about earlier reconciles, to one [`Plan`].

use std::sync::Arc;

use kube::Resource;

use super::diff::{FieldDiff, only};
use crate::k8s::index::oldest;

/// What the server holds (`I`: its info), reduced to what the decision needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seen<I> {
    /// Nothing by that name.
    Missing,
    /// A consumer whose stream does not exist.
    NoStream,
    /// It exists: whom its owner mark names, and how it differs from the spec.
    Present {
        info: I,
        owner: Option<String>,
        diffs: Vec<FieldDiff>,
        /// The differing fields NATS cannot change in place.
        immutable: Vec<&'static str>,
    },
}

/// What the object's status says about earlier reconciles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct History {
    /// `Synced` has a success reason: the server matched the spec last time.
    pub(crate) was_synced: bool,
    /// `status.observedGeneration` is the current generation.
    pub(crate) observed_current: bool,
    /// `Synced` says the spec was refused (`InvalidSpec`, `ImmutableField`).
    pub(crate) refused: bool,
}

/// What to do; plans about an existing object carry what the server said about it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan<I> {
    /// The server matches the spec.
    InSync(I),
    /// This generation was already refused: wait for an edit.
    WaitForEdit,
    Create,
    /// Synced before, gone now: deleted on the server behind the operator's back.
    Recreate,
    /// The spec changed.
    Update(Vec<FieldDiff>, I),
    /// The spec did not change, the server did: revert it.
    RepairDrift(Vec<FieldDiff>, I),
    /// Not created by this object, and `adoptExisting` asks to take it over.
    Adopt(Vec<FieldDiff>, I),
    /// The change cannot be made in place (and is never made by delete + recreate).
    RefuseImmutable(Vec<FieldDiff>, I),
    /// Exists, not ours, and `adoptExisting` is off; the owner mark it carries, if any.
    AlreadyExists(Option<String>),
    /// A consumer's stream does not exist yet.
    WaitForStream,
}

/// The plan for an object whose owner mark is `mine`.
pub(crate) fn decide<I>(seen: Seen<I>, mine: &str, adopt: bool, history: History) -> Plan<I> {
    let (info, owner, diffs, immutable) = match seen {
        Seen::NoStream => return Plan::WaitForStream,
        Seen::Missing if history.was_synced && history.observed_current => return Plan::Recreate,
        Seen::Missing => return Plan::Create,
        Seen::Present { .. } if history.observed_current && history.refused => {
            return Plan::WaitForEdit;
        }
        Seen::Present {
            info,
            owner,
            diffs,
            immutable,
        } => (info, owner, diffs, immutable),
    };
    let ours = owner.as_deref() == Some(mine);
    if !ours && !adopt {
        return Plan::AlreadyExists(owner);
    }
    if diffs.is_empty() {
        return Plan::InSync(info);
    }
    if !immutable.is_empty() {
        return Plan::RefuseImmutable(only(&diffs, &immutable), info);
    }
    match (ours, history.was_synced && history.observed_current) {
        (false, _) => Plan::Adopt(diffs, info),
        (true, true) => Plan::RepairDrift(diffs, info),
        (true, false) => Plan::Update(diffs, info),
    }
}

/// Among the objects naming the same NATS object (`rivals`, `obj` among them), the one that
/// owns it when it is not `obj`: the oldest wins.
pub(crate) fn rival_owner<K: Resource>(obj: &K, rivals: Vec<Arc<K>>) -> Option<Arc<K>> {
    oldest(rivals).filter(|first| first.meta().uid != obj.meta().uid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MINE: &str = "ns/a/uid-1";

    fn diff(field: &'static str) -> FieldDiff {
        FieldDiff {
            field,
            desired: json!(1),
            actual: json!(2),
        }
    }

    fn present(
        owner: Option<&str>,
        diffs: &[&'static str],
        immutable: &[&'static str],
    ) -> Seen<()> {
        Seen::Present {
            info: (),
            owner: owner.map(str::to_owned),
            diffs: diffs.iter().map(|f| diff(f)).collect(),
            immutable: immutable.to_vec(),
        }
    }

    const fn history(was_synced: bool, observed_current: bool, refused: bool) -> History {
        History {
            was_synced,
            observed_current,
            refused,
        }
    }

    const NEW: History = history(false, false, false);
    const SYNCED: History = history(true, true, false);
    const EDITED: History = history(true, false, false);
    const REFUSED: History = history(false, true, true);
    const REFUSED_THEN_EDITED: History = history(false, false, true);

    /// What, seen on the server, adoptExisting, history, the plan wanted.
    type Case = (&'static str, Seen<()>, bool, History, Plan<()>);

    #[test]
    #[rustfmt::skip]
    fn every_decision() {
        let ds = |fields: &[&'static str]| fields.iter().map(|f| diff(f)).collect::<Vec<_>>();
        let table: Vec<Case> = vec![
            ("new object, nothing there", Seen::Missing, false, NEW, Plan::Create),
            ("refused, gone from the server", Seen::Missing, false, REFUSED, Plan::Create),
            ("spec edited, nothing there", Seen::Missing, false, EDITED, Plan::Create),
            ("synced before, deleted on the server", Seen::Missing, false, SYNCED, Plan::Recreate),
            ("consumer before its stream", Seen::NoStream, false, SYNCED, Plan::WaitForStream),
            ("ours, equal", present(Some(MINE), &[], &[]), false, SYNCED, Plan::InSync(())),
            ("ours, equal, first look", present(Some(MINE), &[], &[]), false, NEW, Plan::InSync(())),
            ("ours, spec edited", present(Some(MINE), &["maxAge"], &[]), false, EDITED, Plan::Update(ds(&["maxAge"]), ())),
            ("ours, edited on the server", present(Some(MINE), &["maxAge"], &[]), false, SYNCED, Plan::RepairDrift(ds(&["maxAge"]), ())),
            ("ours, immutable change", present(Some(MINE), &["maxAge", "storage"], &["storage"]), false, EDITED, Plan::RefuseImmutable(ds(&["storage"]), ())),
            ("refused for this generation", present(Some(MINE), &["storage"], &["storage"]), false, REFUSED, Plan::WaitForEdit),
            ("refused, then edited", present(Some(MINE), &[], &[]), false, REFUSED_THEN_EDITED, Plan::InSync(())),
            ("someone else's, no adoption", present(Some("ns/b/uid-2"), &["metadata"], &[]), false, NEW, Plan::AlreadyExists(Some("ns/b/uid-2".into()))),
            ("unmarked, no adoption", present(None, &["metadata"], &[]), false, SYNCED, Plan::AlreadyExists(None)),
            ("unmarked, adoption", present(None, &["metadata"], &[]), true, NEW, Plan::Adopt(ds(&["metadata"]), ())),
            ("unmarked, adoption, synced before", present(None, &["metadata"], &[]), true, SYNCED, Plan::Adopt(ds(&["metadata"]), ())),
            ("adoption of an immutable difference", present(None, &["metadata", "retention"], &["retention"]), true, NEW, Plan::RefuseImmutable(ds(&["retention"]), ())),
        ];
        for (what, seen, adopt, history, want) in table {
            assert_eq!(decide(seen, MINE, adopt, history), want, "{what}");
        }
    }

    #[test]
    fn the_older_object_owns_and_the_younger_one_is_refused() {
        let stream = |uid: &str, secs: i64| -> Arc<nats_cdr_crds::JetStreamStream> {
            let mut s: nats_cdr_crds::JetStreamStream = serde_json::from_value(json!({
                "apiVersion": "nats-cdr.dev/v1alpha1", "kind": "JetStreamStream",
                "metadata": {"name": uid, "namespace": "ns", "uid": uid},
                "spec": {"clusterRef": {"name": "n"}, "name": "S"}
            }))
            .unwrap();
            s.metadata.creation_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::from_second(secs).unwrap(),
                ));
            Arc::new(s)
        };
        let (old, young) = (stream("old", 1), stream("young", 2));
        let rivals = vec![young.clone(), old.clone()];
        assert!(rival_owner(old.as_ref(), rivals.clone()).is_none());
        let owner = rival_owner(young.as_ref(), rivals).unwrap();
        assert_eq!(owner.metadata.uid.as_deref(), Some("old"));
    }
}
