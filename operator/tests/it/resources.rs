//! Child objects applied with `k8s::resources::Children` on the real apiserver: server-side apply
//! with the operator's field manager, the owner's controller reference, the standard labels, no
//! change when nothing changed, and orphans deleted by label (only this owner's).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::ResourceExt;
use kube::api::{Patch, PatchParams, PostParams};
use nats_cdr_crds::NatsCluster;
use nats_cdr_operator::k8s::FIELD_MANAGER;
use nats_cdr_operator::k8s::resources::{
    Children, Error, INSTANCE_LABEL, MANAGED_BY_LABEL, NAME_LABEL,
};
use serde_json::json;

use crate::support::{Env, nats_cluster};

fn config_map(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {"own": "label"}},
        "data": {"key": value}
    }))
    .unwrap()
}

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"clusterIP": "None", "ports": [{"name": "client", "port": 4222}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn children_are_applied_labelled_owned_and_their_orphans_deleted() {
    let e = Env::new("op-children").await;
    let owner = e.apply(nats_cluster("owner", "nats://owner:4222")).await;
    let other = e.apply(nats_cluster("other", "nats://other:4222")).await;

    let mut children = Children::new(e.client.clone(), &owner, "nats").unwrap();
    let applied = children.apply(config_map("config", "one")).await.unwrap();
    children.apply(config_map("old-config", "x")).await.unwrap();
    children.apply(service("headless")).await.unwrap();

    // Labels (its own kept), the controller reference, the one field manager.
    let labels = applied.labels();
    assert_eq!(labels.get("own").map(String::as_str), Some("label"));
    assert_eq!(labels[NAME_LABEL], "nats");
    assert_eq!(labels[INSTANCE_LABEL], "owner");
    assert_eq!(labels[MANAGED_BY_LABEL], FIELD_MANAGER);
    let reference = &applied.owner_references()[0];
    assert_eq!(Some(&reference.uid), owner.metadata.uid.as_ref());
    assert_eq!(reference.kind, "NatsCluster");
    assert_eq!(reference.controller, Some(true));
    let managers: Vec<_> = applied
        .managed_fields()
        .iter()
        .filter_map(|f| f.manager.clone())
        .collect();
    assert_eq!(managers, [FIELD_MANAGER]);

    // A child of another owner, and an object with the same labels but no owner reference.
    let mut foreign = Children::new(e.client.clone(), &other, "nats").unwrap();
    foreign.apply(config_map("foreign", "y")).await.unwrap();
    let mut lookalike = config_map("lookalike", "z");
    lookalike.metadata.labels = Some(BTreeMap::from_iter(
        children
            .labels()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone())),
    ));
    e.api::<ConfigMap>()
        .create(&PostParams::default(), &lookalike)
        .await
        .unwrap();

    // The next reconcile applies `config` unchanged and no longer `old-config`.
    let mut next = Children::new(e.client.clone(), &owner, "nats").unwrap();
    let again = next.apply(config_map("config", "one")).await.unwrap();
    assert_eq!(
        again.resource_version(),
        applied.resource_version(),
        "an unchanged child is not changed"
    );
    next.apply(service("headless")).await.unwrap();
    let deleted = next.delete_orphans::<ConfigMap>().await.unwrap();
    assert_eq!(deleted, ["old-config"]);
    assert!(next.delete_orphans::<Service>().await.unwrap().is_empty());
    let api = e.api::<ConfigMap>();
    for kept in ["config", "foreign", "lookalike"] {
        assert!(api.get_opt(kept).await.unwrap().is_some(), "{kept} kept");
    }
    let gone = api.get_opt("old-config").await.unwrap();
    assert!(gone.is_none_or(|o| o.metadata.deletion_timestamp.is_some()));

    // A changed child is updated in place, under the same manager.
    let changed = next.apply(config_map("config", "two")).await.unwrap();
    assert_eq!(changed.data.as_ref().unwrap()["key"], "two");
    assert_ne!(changed.resource_version(), applied.resource_version());
}

#[tokio::test]
async fn a_field_another_manager_owns_is_taken_over_and_unsaved_owners_are_refused() {
    let e = Env::new("op-children-conflict").await;
    let owner = e.apply(nats_cluster("owner", "nats://owner:4222")).await;
    // Someone else set the same field with their own manager first.
    let api = e.api::<ConfigMap>();
    let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "config"}, "data": {"key": "theirs"}});
    api.patch(
        "config",
        &PatchParams::apply("someone-else"),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
    let mut children = Children::new(e.client.clone(), &owner, "nats").unwrap();
    let applied = children.apply(config_map("config", "ours")).await.unwrap();
    assert_eq!(
        applied.data.unwrap()["key"],
        "ours",
        "forced: the operator's spec wins"
    );

    let unsaved: NatsCluster = nats_cluster("unsaved", "nats://x:4222").build();
    assert!(matches!(
        Children::new(e.client.clone(), &unsaved, "nats"),
        Err(Error::Owner(_))
    ));
}
