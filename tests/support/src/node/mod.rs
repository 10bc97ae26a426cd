//! Real Kubernetes nodes for a local control plane: each node is a network namespace with its own
//! containerd, kubelet and kube-proxy, joined to the cluster's apiserver, with the images of this
//! repository imported so pods run without a registry. ../shared/REALNODE.md has the facts behind
//! every setting.
//!
//! Nothing outlives the test process: the node processes get a parent-death signal like every
//! server here, and the reaper of [`network::HostNetwork`] removes the containers, mounts,
//! cgroups, network namespaces, veths, routes and guard rules once the process is gone.

pub mod config;
pub mod network;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::binaries::{self, MissingBinary};
use crate::certs::{CertError, ControlPlaneCerts};
use crate::images::{self, ImageArchive, MissingImage};
use crate::process::{ProcessError, ServerProcess};
use config::{KubeletSettings, NodePaths};
use network::{Addressing, HostNetwork};

/// Failure to start a real node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    MissingBinary(#[from] MissingBinary),
    #[error(transparent)]
    MissingImage(#[from] MissingImage),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{0}")]
    Config(String),
    #[error("cannot write the containerd configuration")]
    Toml(#[from] toml::ser::Error),
}

impl NodeError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// What every node shares: the control plane it joins.
#[derive(Debug, Clone)]
pub struct JoinInfo {
    /// URL of the apiserver as the nodes reach it (its non-loopback address).
    pub server_url: String,
    pub certs: ControlPlaneCerts,
}

/// The real nodes of one cluster. Drop stops them (pods first) and removes the host plumbing.
#[derive(Debug)]
pub struct RealNodes {
    // Declared in drop order: the nodes' processes, then the network (the reaper's final sweep).
    nodes: Vec<RealNode>,
    network: HostNetwork,
}

/// One running node.
#[derive(Debug)]
pub struct RealNode {
    name: String,
    index: usize,
    addressing: Addressing,
    paths: NodePaths,
    kubelet: Option<ServerProcess>,
    kube_proxy: Option<ServerProcess>,
    containerd: Option<ServerProcess>,
}

impl RealNodes {
    /// Claims the host network for `count` nodes under `cluster_dir`. The control plane is
    /// started on [`Self::addressing`] before the nodes join with [`Self::start_nodes`].
    pub fn claim_network(cluster_dir: &Path, count: usize) -> Result<Self, NodeError> {
        let network = HostNetwork::claim(cluster_dir, count)?;
        Ok(Self {
            nodes: Vec::with_capacity(count),
            network,
        })
    }

    /// The cluster's addresses.
    pub fn addressing(&self) -> Addressing {
        self.network.addressing()
    }

    /// Starts `count` nodes named `node-0`, `node-1`, ... joined to the control plane, each with
    /// every image of `scripts/images.sh` imported.
    pub fn start_nodes(
        &mut self,
        cluster_dir: &Path,
        count: usize,
        join: &JoinInfo,
    ) -> Result<(), NodeError> {
        let archives = images::all()?;
        for index in 0..count {
            let node = RealNode::start(cluster_dir, index, self.addressing(), join, &archives)?;
            self.nodes.push(node);
        }
        Ok(())
    }

    /// Names of the nodes.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RealNode] {
        &self.nodes
    }

    /// Imports more image archives into every node (e.g. a second tag built by a test).
    pub fn import_images(&self, archives: &[ImageArchive]) -> Result<(), NodeError> {
        for node in &self.nodes {
            node.import_images(archives)?;
        }
        Ok(())
    }
}

impl RealNode {
    fn start(
        cluster_dir: &Path,
        index: usize,
        addressing: Addressing,
        join: &JoinInfo,
        archives: &[ImageArchive],
    ) -> Result<Self, NodeError> {
        let name = format!("node-{index}");
        let paths = NodePaths {
            dir: cluster_dir.join("nodes").join(format!("n{index}")),
        };
        for dir in paths.directories() {
            std::fs::create_dir_all(&dir).map_err(|e| NodeError::io(&dir, e))?;
        }
        let mut node = Self {
            name,
            index,
            addressing,
            paths,
            kubelet: None,
            kube_proxy: None,
            containerd: None,
        };
        node.start_containerd()?;
        node.import_images(archives)?;
        node.start_kubelet(join)?;
        node.start_kube_proxy(join)?;
        Ok(node)
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's IP (reachable from the host).
    pub fn ip(&self) -> Ipv4Addr {
        self.addressing.node_ip(self.index)
    }

    /// The node's directory (logs of containerd, kubelet and kube-proxy are there).
    pub fn dir(&self) -> &Path {
        &self.paths.dir
    }

    /// The node's network namespace (a name under /run/netns).
    pub fn netns(&self) -> String {
        self.addressing.netns(self.index)
    }

    /// Command running `program` inside the node's network namespace (and nothing else: the
    /// kubelet's mounts must be visible to containerd and runc, so the mount namespace is shared).
    fn in_netns(&self, program: &Path) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{}", self.netns()))
            .arg("--")
            .arg(program)
            .env("PATH", search_path(program));
        command
    }

    fn write(&self, path: &Path, text: &str) -> Result<(), NodeError> {
        std::fs::write(path, text).map_err(|e| NodeError::io(path, e))
    }

    fn start_containerd(&mut self) -> Result<(), NodeError> {
        let paths = &self.paths;
        self.write(
            &paths.containerd_config(),
            &config::containerd_toml(paths, images::PAUSE)?,
        )?;
        let conflist = config::cni_conflist(paths, &self.addressing, self.index);
        self.write(
            &paths.cni_conf_dir().join("10-nats-cdr.conflist"),
            &conflist.to_string(),
        )?;
        let mut command = self.in_netns(&binaries::find("containerd")?);
        command
            .arg("--config")
            .arg(paths.containerd_config())
            .args(["--log-level", "warn"]);
        let mut process = ServerProcess::start(
            "containerd",
            command,
            &paths.dir.join("containerd.log"),
            Signal::SIGTERM,
        )?;
        let socket = paths.containerd_socket();
        process.wait_until(Duration::from_secs(30), || socket.exists())?;
        self.containerd = Some(process);
        Ok(())
    }

    /// Imports image archives into the node's containerd (namespace k8s.io, where the kubelet
    /// looks), under the reference each archive carries.
    pub fn import_images(&self, archives: &[ImageArchive]) -> Result<(), NodeError> {
        let ctr = binaries::find("ctr")?;
        for archive in archives {
            // ctr needs an ABSOLUTE socket path, or the import silently does nothing.
            let output = Command::new(&ctr)
                .arg("--address")
                .arg(self.paths.containerd_socket())
                .args(["--namespace", "k8s.io", "images", "import"])
                .arg(&archive.file)
                .output()
                .map_err(|e| NodeError::io(&ctr, e))?;
            if !output.status.success() {
                return Err(NodeError::Command {
                    what: format!("ctr images import {}", archive.file.display()),
                    detail: String::from_utf8_lossy(&output.stderr).into_owned(),
                });
            }
        }
        let listed = Command::new(&ctr)
            .arg("--address")
            .arg(self.paths.containerd_socket())
            .args(["--namespace", "k8s.io", "images", "list", "--quiet"])
            .output()
            .map_err(|e| NodeError::io(&ctr, e))?;
        let listed = String::from_utf8_lossy(&listed.stdout);
        for archive in archives {
            if !listed.lines().any(|l| l.trim() == archive.reference) {
                return Err(NodeError::Command {
                    what: format!("importing {}", archive.reference),
                    detail: format!(
                        "{} is not listed by containerd after the import; it lists:\n{listed}",
                        archive.reference
                    ),
                });
            }
        }
        Ok(())
    }

    fn start_kubelet(&mut self, join: &JoinInfo) -> Result<(), NodeError> {
        let paths = self.paths.clone();
        let ip = self.ip();
        let client = join.certs.issue_client(
            &paths.certs(),
            "kubelet-client",
            &format!("system:node:{}", self.name),
            Some("system:nodes"),
        )?;
        let serving = join.certs.issue_serving(
            &paths.certs(),
            "kubelet-serving",
            &self.name,
            &[ip],
            std::slice::from_ref(&self.name),
        )?;
        self.write(
            &paths.kubelet_kubeconfig(),
            &config::kubeconfig(
                &join.server_url,
                &join.certs.ca_pem,
                &client.cert_pem,
                &client.key_pem,
                &format!("system:node:{}", self.name),
            ),
        )?;
        let settings = KubeletSettings {
            node_ip: ip,
            cgroup_root: self.addressing.cgroup_root(self.index),
            cluster_dns: self.addressing.dns_ip(),
            ca_file: &join.certs.ca_cert,
            serving_cert: &serving.cert,
            serving_key: &serving.key,
        };
        self.write(
            &paths.kubelet_config(),
            &config::kubelet_config(&paths, &settings).to_string(),
        )?;
        self.write(
            &paths.resolv_conf(),
            &format!("nameserver {}\n", self.addressing.dns_ip()),
        )?;
        let mut command = self.in_netns(&binaries::find("kubelet")?);
        command
            .arg(format!("--config={}", paths.kubelet_config().display()))
            .arg(format!(
                "--kubeconfig={}",
                paths.kubelet_kubeconfig().display()
            ))
            .arg(format!("--root-dir={}", paths.kubelet_root().display()))
            .arg(format!("--hostname-override={}", self.name))
            .arg(format!("--node-ip={ip}"))
            .arg("--v=1");
        self.kubelet = Some(ServerProcess::start(
            "kubelet",
            command,
            &paths.dir.join("kubelet.log"),
            Signal::SIGTERM,
        )?);
        Ok(())
    }

    fn start_kube_proxy(&mut self, join: &JoinInfo) -> Result<(), NodeError> {
        let paths = self.paths.clone();
        let client =
            join.certs
                .issue_client(&paths.certs(), "kube-proxy", "system:kube-proxy", None)?;
        self.write(
            &paths.kube_proxy_kubeconfig(),
            &config::kubeconfig(
                &join.server_url,
                &join.certs.ca_pem,
                &client.cert_pem,
                &client.key_pem,
                "system:kube-proxy",
            ),
        )?;
        let proxy_config =
            config::kube_proxy_config(&paths, &self.addressing, self.index, &self.name);
        self.write(&paths.kube_proxy_config(), &proxy_config.to_string())?;
        let mut command = self.in_netns(&binaries::find("kube-proxy")?);
        command.arg(format!("--config={}", paths.kube_proxy_config().display()));
        self.kube_proxy = Some(ServerProcess::start(
            "kube-proxy",
            command,
            &paths.dir.join("kube-proxy.log"),
            Signal::SIGTERM,
        )?);
        Ok(())
    }

    /// Stops the node as an administrator would: kubelet first, then every pod sandbox through
    /// containerd (CNI teardown, unmounts), then kube-proxy and containerd. Whatever is left, the
    /// reaper removes.
    fn stop(&mut self) {
        if let Some(mut kubelet) = self.kubelet.take() {
            kubelet.stop(Duration::from_secs(5));
        }
        if self.containerd.is_some()
            && let Ok(crictl) = binaries::find("crictl")
        {
            let _ = Command::new(crictl)
                .arg(format!(
                    "--runtime-endpoint=unix://{}",
                    self.paths.containerd_socket().display()
                ))
                .args(["--timeout=20s", "rmp", "--force", "--all"])
                .output();
        }
        if let Some(mut proxy) = self.kube_proxy.take() {
            proxy.stop(Duration::from_secs(5));
        }
        if let Some(mut containerd) = self.containerd.take() {
            containerd.stop(Duration::from_secs(10));
        }
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// PATH of a node process: the directory of its own binary first (containerd finds its shim on
/// PATH, and Debian's older shim in /usr/bin must not win), then the tools of scripts/setup.sh,
/// then the system's (iptables, conntrack, runc, nsenter).
fn search_path(program: &Path) -> String {
    let own = program.parent().unwrap_or(Path::new("/"));
    let cache_bin: PathBuf = binaries::cache_dir().join("bin");
    format!(
        "{}:{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        own.display(),
        cache_bin.display()
    )
}
