//! Real servers for tests and the demo, started on random loopback ports in temp dirs and stopped
//! when dropped (and killed by the kernel if the test process dies first):
//!
//! - [`LocalCluster`]: etcd + kube-apiserver, optionally with kube-controller-manager,
//!   kube-scheduler, real nodes ([`node`]: kubelet + containerd + kube-proxy in network
//!   namespaces, CoreDNS, the images of `scripts/images.sh` imported) and kwok fake nodes, from
//!   binaries built by `scripts/setup.sh`;
//! - [`NatsServer`]: nats-server with JetStream, one node or a cluster;
//! - [`Postgres`]: PostgreSQL via initdb + postgres.
//!
//! Binaries are found through `NATS_CDR_<NAME>` variables, the cache of `scripts/setup.sh`, and
//! `PATH`; a missing one is an error saying how to get it.

pub mod addons;
pub mod binaries;
pub mod certs;
pub mod demo;
pub mod images;
pub mod in_cluster;
pub mod k8s;
pub mod kube_cluster;
pub mod manifests;
pub mod nats;
pub mod node;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod scratch;
pub mod shared;
pub mod tools;

pub use kube_cluster::{ClusterError, ClusterOptions, LocalCluster, wait_for};
pub use manifests::{apply_yaml, install_crds, parse_documents};
pub use nats::{NatsOptions, NatsServer};
pub use postgres::Postgres;
pub use shared::{TestCluster, shared_api_cluster, shared_node_cluster, shared_workload_cluster};

/// Root of the repository (for examples and manifests).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}
