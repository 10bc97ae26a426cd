//! Kubernetes plumbing every controller shares: the one field manager, the annotations a person
//! sets on an object, the watch caches (`index`), leader election (`lease`), and child objects
//! applied by server-side apply (`resources`). Imports no other module of this crate: the NATS
//! layer, status, the reconcile frame and the controllers build on it.

pub(crate) mod index;
pub(crate) mod lease;
pub mod resources;

use kube::api::Api;
use kube::core::NamespaceResourceScope;
use kube::{Client, Resource, ResourceExt};

/// The one field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "nats-cdr-operator";

/// Annotation that pauses reconciliation of an object: `nats-cdr.dev/reconcile: paused`.
pub(crate) const PAUSE_ANNOTATION: &str = "nats-cdr.dev/reconcile";
/// Annotation that lets a person remove an object whose external cleanup cannot run.
pub(crate) const FORCE_DELETE_ANNOTATION: &str = "nats-cdr.dev/force-delete";
/// Finalizer on objects whose state outside Kubernetes must be cleaned up.
pub(crate) const FINALIZER: &str = "nats-cdr.dev/cleanup";

/// Whether `obj` carries the pause annotation.
pub(crate) fn is_paused<K: Resource>(obj: &K) -> bool {
    obj.annotations()
        .get(PAUSE_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("paused"))
}

/// Whether `obj` carries `nats-cdr.dev/force-delete: "true"`.
pub(crate) fn is_force_delete<K: Resource>(obj: &K) -> bool {
    obj.annotations()
        .get(FORCE_DELETE_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The API of `K` in the namespace of `obj`.
pub(crate) fn api_for<K>(client: &Client, obj: &K) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(client.clone(), &obj.namespace().unwrap_or_default())
}

/// A key naming one object for per-object bookkeeping: its uid (its name before it has one).
pub(crate) fn object_key<K: Resource>(obj: &K) -> String {
    obj.meta().uid.clone().unwrap_or_else(|| obj.name_any())
}
