//! The operator's integration tests: one binary, so one control plane (a real etcd +
//! kube-apiserver from the test-support crate, or the cluster `KUBECONFIG` names) serves the
//! whole run; each test has a namespace of its own and starts the nats-server it needs.
//!
//! Modules by topic: `cluster` (NatsCluster, credentials, an unreachable cluster, rotation),
//! `stream`, `consumer`, `leader` (Lease election), `binary` (the shipped binary), `chart` (the
//! Helm chart and its RBAC), `resources` (child objects by server-side apply); `support` is the
//! harness.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod binary;
mod chart;
mod cluster;
mod consumer;
mod leader;
mod resources;
mod stream;
mod support;
