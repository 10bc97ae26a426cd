//! The controllers, one [`Reconciler`](crate::reconcile::Reconciler) per kind: `nats_cluster`
//! (external mode) and `jetstream` (streams and consumers). They use the layers below
//! (`reconcile`, `status`, `k8s`, `nats`, `telemetry`); nothing below imports them.

pub(crate) mod jetstream;
pub(crate) mod nats_cluster;
