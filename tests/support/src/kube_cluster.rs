//! A real local Kubernetes control plane: etcd + kube-apiserver, and optionally
//! kube-controller-manager, kube-scheduler, real nodes (kubelet + containerd + kube-proxy in
//! network namespaces, with CoreDNS, where pods really run: see [`crate::node`]) and kwok (fake
//! nodes, for cheap scheduling tests), so Deployments and DaemonSets get pods and owner references
//! cascade.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use nix::sys::signal::Signal;

use crate::addons;
use crate::binaries::{self, MissingBinary};
use crate::certs::{CertError, ControlPlaneCerts};
use crate::node::network::Addressing;
use crate::node::{JoinInfo, NodeError, RealNodes};
use crate::ports::{free_port, is_listening, is_listening_on};
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
    #[error("real node: {0}")]
    Node(#[from] NodeError),
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

/// Statically provisioned volumes of a cluster with real nodes (see [`addons::install_local_storage`]).
pub const LOCAL_VOLUMES: usize = 24;

/// What to run besides etcd and the apiserver.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Run kube-controller-manager, kube-scheduler and kwok with this many fake nodes (0: none).
    pub fake_nodes: usize,
    /// Run kube-controller-manager, kube-scheduler, this many real nodes (at most 4) and CoreDNS
    /// (0: none). The apiserver then listens on a non-loopback address that pods reach, with
    /// Node + RBAC authorization and ServiceAccount tokens, as a real cluster does.
    pub real_nodes: usize,
}

/// A running local control plane. Stops every process on drop.
#[derive(Debug)]
pub struct LocalCluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    kubeconfig_yaml: String,
    server_url: String,
    // Declared in stop order: nodes, node simulators and controllers first, etcd last.
    real_nodes: Option<RealNodes>,
    kwok: Option<ServerProcess>,
    scheduler: Option<ServerProcess>,
    controller_manager: Option<ServerProcess>,
    apiserver: ServerProcess,
    // Held only so that it stops (last) when the cluster is dropped.
    _etcd: ServerProcess,
}

impl LocalCluster {
    /// Starts etcd and kube-apiserver (and the workload controllers, real nodes and kwok when
    /// asked) in a new temp dir, and waits until the API answers `/readyz` and nodes are Ready.
    pub async fn start(options: ClusterOptions) -> Result<Self, ClusterError> {
        let dir = scratch::new_dir("kube")?;
        // The host network comes first: the apiserver listens on the address it provides.
        let real_nodes = match options.real_nodes {
            0 => None,
            n => Some(RealNodes::claim_network(&dir, n)?),
        };
        let addressing = real_nodes.as_ref().map(RealNodes::addressing);
        let certs = match addressing {
            Some(a) => ControlPlaneCerts::generate_for(
                &dir,
                &[a.api_address(), a.kubernetes_service_ip()],
            )?,
            None => ControlPlaneCerts::generate(&dir)?,
        };
        let (etcd, etcd_port) = start_etcd(&dir)?;
        let api_ip = addressing.map_or(Ipv4Addr::LOCALHOST, |a| a.api_address());
        let api_port = free_port()?;
        let mut api_cmd = Command::new(binaries::find("kube-apiserver")?);
        api_cmd.args(apiserver_args(
            &dir, &certs, etcd_port, api_port, addressing,
        ));
        let mut apiserver = ServerProcess::start(
            "kube-apiserver",
            api_cmd,
            &dir.join("kube-apiserver.log"),
            Signal::SIGTERM,
        )?;
        apiserver.wait_until(Duration::from_secs(60), || {
            is_listening_on(api_ip, api_port)
        })?;

        let server_url = format!("https://{api_ip}:{api_port}");
        let kubeconfig_yaml = render_kubeconfig(&server_url, &certs);
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, &kubeconfig_yaml)?;

        let mut cluster = Self {
            dir,
            kubeconfig,
            kubeconfig_yaml,
            server_url,
            real_nodes,
            kwok: None,
            scheduler: None,
            controller_manager: None,
            apiserver,
            _etcd: etcd,
        };
        cluster.wait_ready().await?;
        if options.fake_nodes > 0 || options.real_nodes > 0 {
            cluster.start_workload_controllers(&certs, options.real_nodes > 0)?;
        }
        if options.real_nodes > 0 {
            cluster.join_real_nodes(&certs, options.real_nodes).await?;
        }
        if options.fake_nodes > 0 {
            cluster.start_kwok(options.real_nodes > 0)?;
            cluster.add_fake_nodes(options.fake_nodes).await?;
        }
        Ok(cluster)
    }

    async fn join_real_nodes(
        &mut self,
        certs: &ControlPlaneCerts,
        count: usize,
    ) -> Result<(), ClusterError> {
        let join = JoinInfo {
            server_url: self.server_url.clone(),
            certs: certs.clone(),
        };
        let Some(nodes) = self.real_nodes.as_mut() else {
            return Ok(());
        };
        let addressing = nodes.addressing();
        nodes.start_nodes(&self.dir, count, &join)?;
        let names = nodes.names();
        let client = self.client().await?;
        wait_nodes_ready(&client, &names).await?;
        addons::install_local_storage(
            &client,
            &self.dir.join("nodes").join("volumes"),
            LOCAL_VOLUMES,
            "100Gi",
        )
        .await?;
        addons::install_coredns(&client, addressing.dns_ip()).await?;
        wait_default_service_account(&client).await
    }

    /// The real nodes, when the cluster has some.
    pub fn real_nodes(&self) -> Option<&RealNodes> {
        self.real_nodes.as_ref()
    }

    /// The addresses of the cluster's real nodes, when it has some.
    pub fn addressing(&self) -> Option<Addressing> {
        self.real_nodes.as_ref().map(RealNodes::addressing)
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
        real_nodes: bool,
    ) -> Result<(), ClusterError> {
        let kubeconfig = self.kubeconfig.display().to_string();
        // Without kubelets there are no pod CIDRs to allocate and nothing to evict from; with
        // real nodes the node-lifecycle controller lifts the not-ready taint and watches health.
        let controllers = if real_nodes {
            "*,-node-ipam-controller"
        } else {
            "*,-node-ipam-controller,-node-lifecycle-controller"
        };
        let mut cm = Command::new(binaries::find("kube-controller-manager")?);
        cm.args([
            format!("--kubeconfig={kubeconfig}"),
            "--leader-elect=false".to_owned(),
            "--secure-port=0".to_owned(),
            format!("--controllers={controllers}"),
            format!(
                "--service-account-private-key-file={}",
                certs.service_account_key.display()
            ),
            format!("--root-ca-file={}", certs.ca_cert.display()),
            format!("--cluster-signing-cert-file={}", certs.ca_cert.display()),
            format!("--cluster-signing-key-file={}", certs.ca_key.display()),
            "--concurrent-gc-syncs=5".to_owned(),
            format!("--use-service-account-credentials={real_nodes}"),
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
        Ok(())
    }

    /// kwok for fake nodes; beside real nodes it manages only the nodes it is told to.
    fn start_kwok(&mut self, beside_real_nodes: bool) -> Result<(), ClusterError> {
        let kubeconfig = self.kubeconfig.display().to_string();
        let stages = binaries::kwok_stages()?;
        let mut kwok = Command::new(binaries::find("kwok")?);
        kwok.args([
            format!("--kubeconfig={kubeconfig}"),
            format!("--server-address=127.0.0.1:{}", free_port()?),
            "--cidr=10.250.0.0/16".to_owned(),
            "--node-ip=127.0.0.1".to_owned(),
            format!("--config={}", stages.display()),
        ]);
        if beside_real_nodes {
            kwok.arg("--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake");
        } else {
            kwok.arg("--manage-all-nodes=true");
        }
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
        wait_default_service_account(&client).await
    }
}

/// The controller-manager creates each namespace's default ServiceAccount; the workload
/// controllers are serving once it exists.
async fn wait_default_service_account(client: &Client) -> Result<(), ClusterError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    wait_for(Duration::from_secs(60), "default ServiceAccount", || {
        let accounts = accounts.clone();
        async move { accounts.get_opt("default").await.ok().flatten().is_some() }
    })
    .await
}

/// Waits until every node of `names` reports Ready.
async fn wait_nodes_ready(client: &Client, names: &[String]) -> Result<(), ClusterError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let mut last = String::new();
    let start = Instant::now();
    let timeout = Duration::from_secs(120);
    loop {
        let mut ready = 0;
        last.clear();
        for name in names {
            let node = nodes.get_opt(name).await.ok().flatten();
            let condition = node
                .as_ref()
                .and_then(|n| n.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
            match condition {
                Some(c) if c.status == "True" => ready += 1,
                Some(c) => last.push_str(&format!(
                    "{name}: {} {}; ",
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default()
                )),
                None => last.push_str(&format!("{name}: not registered; ")),
            }
        }
        if ready == names.len() {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(ClusterError::Timeout {
                what: "real nodes Ready".into(),
                waited: timeout,
                detail: last,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn start_etcd(dir: &Path) -> Result<(ServerProcess, u16), ClusterError> {
    let etcd_port = free_port()?;
    let etcd_peer_port = free_port()?;
    let mut etcd_cmd = Command::new(binaries::find("etcd")?);
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
    let mut etcd = ServerProcess::start("etcd", etcd_cmd, &dir.join("etcd.log"), Signal::SIGTERM)?;
    etcd.wait_until(Duration::from_secs(30), || is_listening(etcd_port))?;
    Ok((etcd, etcd_port))
}

/// The apiserver's flags: envtest's set without real nodes; with them, what a kubelet and
/// in-cluster clients need (a reachable address and endpoint, Node authorization, ServiceAccount
/// tokens, kubelet client credentials for logs and exec).
fn apiserver_args(
    dir: &Path,
    certs: &ControlPlaneCerts,
    etcd_port: u16,
    api_port: u16,
    addressing: Option<Addressing>,
) -> Vec<String> {
    let mut args = vec![
        format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
        format!("--secure-port={api_port}"),
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
        "--allow-privileged=true".to_owned(),
        "--enable-priority-and-fairness=false".to_owned(),
        "--profiling=false".to_owned(),
    ];
    match addressing {
        None => args.extend([
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            "--service-cluster-ip-range=10.0.0.0/24".to_owned(),
            "--authorization-mode=RBAC".to_owned(),
            // No ServiceAccount tokens (as envtest), and no not-ready taint on new nodes: with no
            // kubelet and no node-lifecycle controller nothing would remove it.
            "--disable-admission-plugins=ServiceAccount,TaintNodesByCondition".to_owned(),
            "--endpoint-reconciler-type=none".to_owned(),
        ]),
        Some(a) => args.extend([
            format!("--bind-address={}", a.api_address()),
            format!("--advertise-address={}", a.api_address()),
            format!("--service-cluster-ip-range={}", a.service_cidr()),
            "--authorization-mode=Node,RBAC".to_owned(),
            "--enable-admission-plugins=NodeRestriction".to_owned(),
            format!(
                "--kubelet-client-certificate={}",
                certs.admin_cert.display()
            ),
            format!("--kubelet-client-key={}", certs.admin_key.display()),
            format!(
                "--kubelet-certificate-authority={}",
                certs.ca_cert.display()
            ),
            "--kubelet-preferred-address-types=InternalIP".to_owned(),
        ]),
    }
    args
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
