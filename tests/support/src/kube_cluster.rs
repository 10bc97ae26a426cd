//! A real local Kubernetes control plane: etcd + kube-apiserver, and optionally
//! kube-controller-manager, kube-scheduler and kwok (fake nodes that run pods without a kubelet),
//! so Deployments and DaemonSets get Running pods and owner references cascade.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use nix::sys::signal::Signal;

use crate::binaries::{self, MissingBinary};
use crate::certs::{CertError, ControlPlaneCerts};
use crate::ports::{free_port, is_listening};
use crate::process::{ProcessError, ServerProcess};
use crate::scratch;

/// Failure to start or reach a local control plane.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    MissingBinary(#[from] MissingBinary),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Certs(#[from] CertError),
    #[error("file system: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("{what} not ready after {waited:?}: {detail}")]
    Timeout {
        what: String,
        waited: Duration,
        detail: String,
    },
}

/// What to run besides etcd and the apiserver.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Run kube-controller-manager, kube-scheduler and kwok with this many fake nodes (0: none).
    pub fake_nodes: usize,
}

/// A running local control plane. Stops every process on drop.
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    kubeconfig_yaml: String,
    server_url: String,
    // Declared in stop order: node simulators and controllers first, etcd last.
    kwok: Option<ServerProcess>,
    scheduler: Option<ServerProcess>,
    controller_manager: Option<ServerProcess>,
    apiserver: ServerProcess,
    // Held only so that it stops (last) when the cluster is dropped.
    _etcd: ServerProcess,
}

impl LocalCluster {
    /// Starts etcd and kube-apiserver (and the workload controllers and kwok when asked) on
    /// random loopback ports in a new temp dir, and waits until the API answers `/readyz`.
    pub async fn start(options: ClusterOptions) -> Result<Self, ClusterError> {
        let etcd_bin = binaries::find("etcd")?;
        let apiserver_bin = binaries::find("kube-apiserver")?;
        let dir = scratch::new_dir("kube")?;
        let certs = ControlPlaneCerts::generate(&dir)?;

        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let mut etcd_cmd = Command::new(etcd_bin);
        etcd_cmd.args([
            "--name=etcd".to_owned(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"),
            format!("--initial-cluster=etcd=http://127.0.0.1:{etcd_peer_port}"),
            "--unsafe-no-fsync=true".to_owned(),
            "--log-level=warn".to_owned(),
        ]);
        let mut etcd =
            ServerProcess::start("etcd", etcd_cmd, &dir.join("etcd.log"), Signal::SIGTERM)?;
        etcd.wait_until(Duration::from_secs(30), || is_listening(etcd_port))?;

        let api_port = free_port()?;
        let mut api_cmd = Command::new(apiserver_bin);
        api_cmd.args([
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--cert-dir={}", dir.display()),
            format!("--tls-cert-file={}", certs.server_cert.display()),
            format!("--tls-private-key-file={}", certs.server_key.display()),
            format!("--client-ca-file={}", certs.ca_cert.display()),
            format!(
                "--service-account-key-file={}",
                certs.service_account_public_key.display()
            ),
            format!(
                "--service-account-signing-key-file={}",
                certs.service_account_key.display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc".to_owned(),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            "--allow-privileged=true".to_owned(),
            "--authorization-mode=RBAC".to_owned(),
            // No ServiceAccount tokens (as envtest), and no not-ready taint on new nodes: with no
            // kubelet and no node-lifecycle controller nothing would remove it.
            "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition".to_owned(),
            "--enable-priority-and-fairness=false".to_owned(),
            "--profiling=false".to_owned(),
            "--endpoint-reconciler-type=none".to_owned(),
        ]);
        let mut apiserver = ServerProcess::start(
            "kube-apiserver",
            api_cmd,
            &dir.join("kube-apiserver.log"),
            Signal::SIGTERM,
        )?;
        apiserver.wait_until(Duration::from_secs(60), || is_listening(api_port))?;

        let server_url = format!("https://127.0.0.1:{api_port}");
        let kubeconfig_yaml = render_kubeconfig(&server_url, &certs);
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, &kubeconfig_yaml)?;

        let mut cluster = Self {
            dir,
            kubeconfig,
            kubeconfig_yaml,
            server_url,
            kwok: None,
            scheduler: None,
            controller_manager: None,
            apiserver,
            _etcd: etcd,
        };
        cluster.wait_ready().await?;
        if options.fake_nodes > 0 {
            cluster.start_workload_controllers(&certs)?;
            cluster.add_fake_nodes(options.fake_nodes).await?;
        }
        Ok(cluster)
    }

    /// Path of an admin kubeconfig for this cluster (usable with kubectl).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// URL of the apiserver.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The temp dir holding data, certificates and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A new admin client. Each test makes its own: a client is bound to the runtime it is used on.
    pub async fn client(&self) -> Result<Client, ClusterError> {
        client_from_yaml(&self.kubeconfig_yaml, &self.kubeconfig).await
    }

    async fn wait_ready(&mut self) -> Result<(), ClusterError> {
        let client = self.client().await?;
        let start = Instant::now();
        let timeout = Duration::from_secs(90);
        let mut last = String::new();
        loop {
            let request = http::Request::get("/readyz").body(Vec::new());
            if let Ok(request) = request {
                match client.request_text(request).await {
                    Ok(text) if text.trim() == "ok" => break,
                    Ok(text) => last = text,
                    Err(e) => last = e.to_string(),
                }
            }
            self.apiserver.check_running()?;
            if start.elapsed() > timeout {
                return Err(ClusterError::Timeout {
                    what: "kube-apiserver /readyz".into(),
                    waited: timeout,
                    detail: last,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // The default namespace is created by a post-start hook shortly after readiness.
        wait_for(Duration::from_secs(30), "namespace default", || {
            let client = client.clone();
            async move {
                let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client);
                namespaces.get_opt("default").await.ok().flatten().is_some()
            }
        })
        .await
    }

    fn start_workload_controllers(
        &mut self,
        certs: &ControlPlaneCerts,
    ) -> Result<(), ClusterError> {
        let kubeconfig = self.kubeconfig.display().to_string();
        let mut cm = Command::new(binaries::find("kube-controller-manager")?);
        cm.args([
            format!("--kubeconfig={kubeconfig}"),
            "--leader-elect=false".to_owned(),
            "--secure-port=0".to_owned(),
            // Fake nodes have no pod CIDRs to allocate and no kubelet to evict from.
            "--controllers=*,-node-ipam-controller,-node-lifecycle-controller".to_owned(),
            format!(
                "--service-account-private-key-file={}",
                certs.service_account_key.display()
            ),
            format!("--root-ca-file={}", certs.ca_cert.display()),
            format!("--cluster-signing-cert-file={}", certs.ca_cert.display()),
            format!("--cluster-signing-key-file={}", certs.ca_key.display()),
            "--concurrent-gc-syncs=5".to_owned(),
        ]);
        self.controller_manager = Some(ServerProcess::start(
            "kube-controller-manager",
            cm,
            &self.dir.join("kube-controller-manager.log"),
            Signal::SIGTERM,
        )?);

        let mut scheduler = Command::new(binaries::find("kube-scheduler")?);
        scheduler.args([
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--leader-elect=false".to_owned(),
            "--bind-address=127.0.0.1".to_owned(),
            format!("--secure-port={}", free_port()?),
        ]);
        self.scheduler = Some(ServerProcess::start(
            "kube-scheduler",
            scheduler,
            &self.dir.join("kube-scheduler.log"),
            Signal::SIGTERM,
        )?);

        let stages = binaries::kwok_stages()?;
        let mut kwok = Command::new(binaries::find("kwok")?);
        kwok.args([
            format!("--kubeconfig={kubeconfig}"),
            "--manage-all-nodes=true".to_owned(),
            format!("--server-address=127.0.0.1:{}", free_port()?),
            "--cidr=10.244.0.0/16".to_owned(),
            "--node-ip=127.0.0.1".to_owned(),
            format!("--config={}", stages.display()),
        ]);
        self.kwok = Some(ServerProcess::start(
            "kwok",
            kwok,
            &self.dir.join("kwok.log"),
            Signal::SIGTERM,
        )?);
        Ok(())
    }

    async fn add_fake_nodes(&mut self, count: usize) -> Result<(), ClusterError> {
        let client = self.client().await?;
        let nodes: Api<Node> = Api::all(client.clone());
        for i in 0..count {
            let node: Node = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": format!("kwok-node-{i}"),
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {
                        "kubernetes.io/hostname": format!("kwok-node-{i}"),
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                    }
                },
                "status": {
                    "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                    "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}
                }
            }))
            .map_err(|e| ClusterError::Kubeconfig {
                path: "node".into(),
                message: e.to_string(),
            })?;
            nodes.create(&PostParams::default(), &node).await?;
        }
        wait_for(Duration::from_secs(60), "fake nodes Ready", || {
            let nodes = nodes.clone();
            async move {
                let Ok(list) = nodes.list(&Default::default()).await else {
                    return false;
                };
                list.items.len() >= count
                    && list.items.iter().all(|n| {
                        n.status
                            .as_ref()
                            .and_then(|s| s.conditions.as_ref())
                            .is_some_and(|c| {
                                c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                            })
                    })
            }
        })
        .await?;
        // The controller-manager creates each namespace's default ServiceAccount; workloads
        // controllers are serving once it exists.
        let accounts: Api<ServiceAccount> = Api::namespaced(client, "default");
        wait_for(Duration::from_secs(60), "default ServiceAccount", || {
            let accounts = accounts.clone();
            async move { accounts.get_opt("default").await.ok().flatten().is_some() }
        })
        .await
    }
}

/// Polls `check` every 200 ms until it is true or `timeout` passes.
pub async fn wait_for<F, Fut>(
    timeout: Duration,
    what: &str,
    mut check: F,
) -> Result<(), ClusterError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(ClusterError::Timeout {
                what: what.to_owned(),
                waited: timeout,
                detail: "condition never became true".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An admin client from kubeconfig text (`path` is for error messages).
pub async fn client_from_yaml(yaml: &str, path: &Path) -> Result<Client, ClusterError> {
    let invalid = |message: String| ClusterError::Kubeconfig {
        path: path.display().to_string(),
        message,
    };
    let kubeconfig = Kubeconfig::from_yaml(yaml).map_err(|e| invalid(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| invalid(e.to_string()))?;
    Ok(Client::try_from(config)?)
}

fn render_kubeconfig(server_url: &str, certs: &ControlPlaneCerts) -> String {
    use base64::Engine;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "nats-cdr-local", "cluster": {
            "server": server_url,
            "certificate-authority-data": b64(&certs.ca_pem),
        }}],
        "users": [{"name": "nats-cdr-admin", "user": {
            "client-certificate-data": b64(&certs.admin_cert_pem),
            "client-key-data": b64(&certs.admin_key_pem),
        }}],
        "contexts": [{"name": "nats-cdr-local", "context": {
            "cluster": "nats-cdr-local",
            "user": "nats-cdr-admin",
            "namespace": "default",
        }}],
        "current-context": "nats-cdr-local",
    });
    serde_yaml::to_string(&doc).unwrap_or_default()
}
