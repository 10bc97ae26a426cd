//! Configuration files of one real node: containerd, the CNI network, the kubelet and kube-proxy,
//! built as typed values (JSON and TOML documents), never by pasting text together.
//! ../shared/REALNODE.md explains each non-default setting.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::network::Addressing;

/// Paths of one node, all inside its directory.
#[derive(Debug, Clone)]
pub struct NodePaths {
    pub dir: PathBuf,
}

impl NodePaths {
    pub fn containerd_config(&self) -> PathBuf {
        self.dir.join("containerd.toml")
    }
    pub fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }
    pub fn containerd_root(&self) -> PathBuf {
        self.dir.join("containerd/root")
    }
    pub fn containerd_state(&self) -> PathBuf {
        self.dir.join("containerd/state")
    }
    pub fn runc_root(&self) -> PathBuf {
        self.dir.join("runc")
    }
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.dir.join("cni/net.d")
    }
    pub fn cni_ipam_dir(&self) -> PathBuf {
        self.dir.join("cni/ipam")
    }
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }
    pub fn kubelet_config(&self) -> PathBuf {
        self.dir.join("kubelet.json")
    }
    pub fn kubelet_kubeconfig(&self) -> PathBuf {
        self.dir.join("kubelet.kubeconfig")
    }
    pub fn pod_logs(&self) -> PathBuf {
        self.dir.join("pod-logs")
    }
    pub fn static_pods(&self) -> PathBuf {
        self.dir.join("manifests")
    }
    pub fn resolv_conf(&self) -> PathBuf {
        self.dir.join("resolv.conf")
    }
    pub fn kube_proxy_config(&self) -> PathBuf {
        self.dir.join("kube-proxy.json")
    }
    pub fn kube_proxy_kubeconfig(&self) -> PathBuf {
        self.dir.join("kube-proxy.kubeconfig")
    }
    pub fn certs(&self) -> PathBuf {
        self.dir.join("pki")
    }

    /// Every directory the node's processes expect to exist.
    pub fn directories(&self) -> Vec<PathBuf> {
        vec![
            self.containerd_root(),
            self.containerd_state(),
            self.runc_root(),
            self.cni_conf_dir(),
            self.cni_ipam_dir(),
            self.kubelet_root(),
            self.pod_logs(),
            self.static_pods(),
            self.certs(),
        ]
    }
}

/// containerd 2's configuration (version 3): its own paths, runc from Debian without systemd
/// cgroups, the CNI plugins from Debian, the local pause image, and `restrict_oom_score_adj`,
/// without which no sandbox starts here (root lacks CAP_SYS_RESOURCE).
pub fn containerd_toml(paths: &NodePaths, pause_image: &str) -> Result<String, toml::ser::Error> {
    let config = json!({
        "version": 3,
        "root": paths.containerd_root(),
        "state": paths.containerd_state(),
        "grpc": {"address": paths.containerd_socket()},
        "ttrpc": {"address": format!("{}.ttrpc", paths.containerd_socket().display())},
        "debug": {"address": ""},
        "metrics": {"address": ""},
        "disabled_plugins": [
            "io.containerd.nri.v1.nri",
            "io.containerd.tracing.processor.v1.otlp",
            "io.containerd.internal.v1.tracing",
        ],
        "plugins": {
            "io.containerd.cri.v1.runtime": {
                "restrict_oom_score_adj": true,
                "enable_selinux": false,
                "disable_apparmor": true,
                "netns_mounts_under_state_dir": true,
                "containerd": {
                    "default_runtime_name": "runc",
                    "runtimes": {"runc": {
                        "runtime_type": "io.containerd.runc.v2",
                        "options": {
                            "BinaryName": "/usr/sbin/runc",
                            "SystemdCgroup": false,
                            "Root": paths.runc_root(),
                        },
                    }},
                },
                "cni": {
                    "bin_dirs": ["/usr/lib/cni"],
                    "conf_dir": paths.cni_conf_dir(),
                    "max_conf_num": 1,
                },
            },
            "io.containerd.cri.v1.images": {
                "snapshotter": "overlayfs",
                "pinned_images": {"sandbox": pause_image},
            },
            "io.containerd.grpc.v1.cri": {
                "stream_server_address": "127.0.0.1",
            },
        },
    });
    toml::to_string(&config)
}

/// The pod network of node `node`: a bridge with a static /24, no masquerade (nothing may be
/// routed out of the machine), hairpin for a pod reaching itself through its Service.
pub fn cni_conflist(paths: &NodePaths, addressing: &Addressing, node: usize) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": addressing.cni_network(),
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": addressing.pod_cidr(node)}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": paths.cni_ipam_dir(),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// What the kubelet needs besides its paths.
#[derive(Debug, Clone)]
pub struct KubeletSettings<'a> {
    pub node_ip: Ipv4Addr,
    pub cgroup_root: String,
    pub cluster_dns: Ipv4Addr,
    pub ca_file: &'a Path,
    pub serving_cert: &'a Path,
    pub serving_key: &'a Path,
}

/// The kubelet's configuration file (KubeletConfiguration v1beta1).
pub fn kubelet_config(paths: &NodePaths, settings: &KubeletSettings<'_>) -> serde_json::Value {
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": settings.node_ip.to_string(),
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": settings.ca_file},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": settings.serving_cert,
        "tlsPrivateKeyFile": settings.serving_key,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": settings.cgroup_root,
        "failCgroupV1": false,
        "failSwapOn": false,
        "containerRuntimeEndpoint": format!("unix://{}", paths.containerd_socket().display()),
        "clusterDNS": [settings.cluster_dns.to_string()],
        "clusterDomain": "cluster.local",
        "resolvConf": paths.resolv_conf(),
        // The disk is shared with everything else on the machine: never evict or collect images.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "50Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
        },
        "podLogsDir": paths.pod_logs(),
        "staticPodPath": paths.static_pods(),
        "serializeImagePulls": false,
        "maxPods": 110,
        "nodeStatusReportFrequency": "10s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "20s",
        "shutdownGracePeriod": "0s",
    })
}

/// kube-proxy in iptables mode, confined to its node's network namespace.
pub fn kube_proxy_config(
    paths: &NodePaths,
    addressing: &Addressing,
    node: usize,
    node_name: &str,
) -> serde_json::Value {
    json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": paths.kube_proxy_kubeconfig()},
        "mode": "iptables",
        "hostnameOverride": node_name,
        "bindAddress": addressing.node_ip(node).to_string(),
        "clusterCIDR": addressing.cluster_cidr(),
        "detectLocalMode": "ClusterCIDR",
        "nodePortAddresses": [addressing.node_subnet(node)],
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        // Leave the host's sysctls alone.
        "conntrack": {"maxPerCore": 0},
    })
}

/// A kubeconfig for a client certificate.
pub fn kubeconfig(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str, user: &str) -> String {
    use base64::Engine;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {
            "server": server,
            "certificate-authority-data": b64(ca_pem),
        }}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(cert_pem),
            "client-key-data": b64(key_pem),
        }}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    });
    doc.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths() -> NodePaths {
        NodePaths {
            dir: PathBuf::from("/tmp/x/nodes/n0"),
        }
    }

    #[test]
    fn containerd_config_has_the_settings_this_machine_needs() {
        let text = containerd_toml(&paths(), "localhost/pause:v1").unwrap();
        let value: toml::Table = text.parse().unwrap();
        let runtime = &value["plugins"]["io.containerd.cri.v1.runtime"];
        assert_eq!(runtime["restrict_oom_score_adj"].as_bool(), Some(true));
        assert_eq!(
            runtime["netns_mounts_under_state_dir"].as_bool(),
            Some(true)
        );
        let runc = &runtime["containerd"]["runtimes"]["runc"]["options"];
        assert_eq!(runc["SystemdCgroup"].as_bool(), Some(false));
        assert_eq!(runc["Root"].as_str(), Some("/tmp/x/nodes/n0/runc"));
        assert_eq!(
            value["plugins"]["io.containerd.cri.v1.images"]["pinned_images"]["sandbox"].as_str(),
            Some("localhost/pause:v1")
        );
        assert_eq!(
            value["grpc"]["address"].as_str(),
            Some("/tmp/x/nodes/n0/containerd.sock")
        );
    }

    #[test]
    fn pods_get_the_nodes_own_subnet_and_no_masquerade() {
        let list = cni_conflist(&paths(), &Addressing::new(2), 1);
        assert_eq!(
            list["plugins"][0]["ipam"]["ranges"][0][0]["subnet"],
            "10.244.9.0/24"
        );
        assert_eq!(list["plugins"][0]["ipMasq"], false);
        assert_eq!(list["name"], "ncdr-s2");
    }

    #[test]
    fn kubelet_runs_on_cgroup_v1_with_cgroupfs_and_the_cluster_dns() {
        let ca = PathBuf::from("/ca.crt");
        let config = kubelet_config(
            &paths(),
            &KubeletSettings {
                node_ip: Ipv4Addr::new(10, 200, 8, 2),
                cgroup_root: "/ncdr-s2-n0".into(),
                cluster_dns: Ipv4Addr::new(10, 96, 2, 10),
                ca_file: &ca,
                serving_cert: &ca,
                serving_key: &ca,
            },
        );
        assert_eq!(config["failCgroupV1"], false);
        assert_eq!(config["cgroupDriver"], "cgroupfs");
        assert_eq!(config["readOnlyPort"], 0);
        assert_eq!(config["clusterDNS"][0], "10.96.2.10");
        assert_eq!(
            config["containerRuntimeEndpoint"],
            "unix:///tmp/x/nodes/n0/containerd.sock"
        );
    }
}
