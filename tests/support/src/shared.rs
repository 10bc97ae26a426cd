//! The cluster a test binary runs against: the cluster named by `KUBECONFIG` when it is set (kind,
//! or any real cluster), else one local control plane shared by every test of the binary (an
//! apiserver takes seconds to start and the machine has 2 cores). Tests isolate themselves in
//! namespaces of their own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::OnceCell;

use crate::kube_cluster::{ClusterError, ClusterOptions, LocalCluster, client_from_yaml};

/// A cluster for tests.
#[derive(Debug)]
pub enum TestCluster {
    /// A local control plane started by this process.
    Local(Box<LocalCluster>),
    /// A cluster named by `KUBECONFIG`.
    External { kubeconfig: PathBuf, yaml: String },
}

impl TestCluster {
    /// A new client for the calling test's runtime.
    pub async fn client(&self) -> Result<Client, ClusterError> {
        match self {
            Self::Local(local) => local.client().await,
            Self::External { kubeconfig, yaml } => client_from_yaml(yaml, kubeconfig).await,
        }
    }

    /// Path of the kubeconfig to give kubectl or the operator.
    pub fn kubeconfig_path(&self) -> &Path {
        match self {
            Self::Local(local) => local.kubeconfig_path(),
            Self::External { kubeconfig, .. } => kubeconfig,
        }
    }

    /// Whether this is a local control plane (the e2e suite can then inspect its processes).
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local(_))
    }

    /// The local control plane, when this is one.
    pub fn local(&self) -> Option<&LocalCluster> {
        match self {
            Self::Local(local) => Some(local),
            Self::External { .. } => None,
        }
    }

    /// Creates a namespace of its own for a test: `<prefix>-<pid>-<n>`.
    pub async fn new_namespace(&self, prefix: &str) -> Result<String, ClusterError> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let namespaces: Api<Namespace> = Api::all(self.client().await?);
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"nats-cdr.dev/test": "true"}}
        }))
        .map_err(|e| ClusterError::Kubeconfig {
            path: "namespace".into(),
            message: e.to_string(),
        })?;
        namespaces
            .create(&PostParams::default(), &namespace)
            .await?;
        Ok(name)
    }
}

/// The cluster of this test binary with only etcd and the apiserver when local.
pub async fn shared_api_cluster() -> Result<&'static TestCluster, ClusterError> {
    static CLUSTER: OnceCell<TestCluster> = OnceCell::const_new();
    CLUSTER
        .get_or_try_init(|| start(ClusterOptions::default()))
        .await
}

/// The cluster of this test binary with workload controllers, a scheduler and two kwok nodes
/// when local, so Deployments and DaemonSets get Running pods and garbage collection works.
pub async fn shared_workload_cluster() -> Result<&'static TestCluster, ClusterError> {
    static CLUSTER: OnceCell<TestCluster> = OnceCell::const_new();
    CLUSTER
        .get_or_try_init(|| {
            start(ClusterOptions {
                fake_nodes: 2,
                ..Default::default()
            })
        })
        .await
}

/// The cluster of this test binary where pods really run: when local, one real node (kubelet,
/// containerd, kube-proxy) with CoreDNS and this repository's images imported; with `KUBECONFIG`,
/// that cluster (kind loads the same images: scripts/kind-e2e.sh).
pub async fn shared_node_cluster() -> Result<&'static TestCluster, ClusterError> {
    static CLUSTER: OnceCell<TestCluster> = OnceCell::const_new();
    CLUSTER
        .get_or_try_init(|| {
            start(ClusterOptions {
                real_nodes: 1,
                ..Default::default()
            })
        })
        .await
}

async fn start(options: ClusterOptions) -> Result<TestCluster, ClusterError> {
    if let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        let kubeconfig = PathBuf::from(path);
        let yaml = std::fs::read_to_string(&kubeconfig)?;
        return Ok(TestCluster::External { kubeconfig, yaml });
    }
    Ok(TestCluster::Local(Box::new(
        LocalCluster::start(options).await?,
    )))
}
