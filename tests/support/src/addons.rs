//! Cluster add-ons of a local cluster with real nodes: CoreDNS (the slim build of
//! scripts/setup.sh, no `forward` plugin, so names outside cluster.local never leave the machine)
//! as the `kube-dns` Service at the cluster DNS address the kubelets hand to pods.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use crate::images;
use crate::kube_cluster::{ClusterError, wait_for};
use crate::manifests::FIELD_MANAGER;

const NAMESPACE: &str = "kube-system";

/// The Corefile: cluster.local from the API, answers cached, nothing forwarded.
const COREFILE: &str = ".:1053 {
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 5
    }
    cache 5
    loadbalance
    reload
}
";

/// Installs CoreDNS with the Service IP `dns_ip` and waits until it answers (its Deployment is
/// available).
pub async fn install_coredns(client: &Client, dns_ip: Ipv4Addr) -> Result<(), ClusterError> {
    for (api_version, kind, plural, namespaced, object) in coredns_objects(dns_ip) {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let resource = kube::discovery::ApiResource {
            group: group.into(),
            version: version.into(),
            api_version: api_version.into(),
            kind: kind.into(),
            plural: plural.into(),
        };
        let api: Api<kube::api::DynamicObject> = if namespaced {
            Api::namespaced_with(client.clone(), NAMESPACE, &resource)
        } else {
            Api::all_with(client.clone(), &resource)
        };
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await?;
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    wait_for(Duration::from_secs(120), "CoreDNS available", || {
        let deployments = deployments.clone();
        async move {
            deployments
                .get_opt("coredns")
                .await
                .ok()
                .flatten()
                .and_then(|d| d.status)
                .and_then(|s| s.available_replicas)
                .unwrap_or(0)
                >= 1
        }
    })
    .await
}

type Object = (
    &'static str,
    &'static str,
    &'static str,
    bool,
    serde_json::Value,
);

fn coredns_objects(dns_ip: Ipv4Addr) -> Vec<Object> {
    let labels = json!({"k8s-app": "kube-dns"});
    vec![
        (
            "v1",
            "ServiceAccount",
            "serviceaccounts",
            true,
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "coredns", "namespace": NAMESPACE}}),
        ),
        (
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "clusterroles",
            false,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "nats-cdr:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                 "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                 "verbs": ["list", "watch"]},
            ]}),
        ),
        (
            "rbac.authorization.k8s.io/v1",
            "ClusterRoleBinding",
            "clusterrolebindings",
            false,
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": "nats-cdr:coredns"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": "nats-cdr:coredns"},
                   "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": NAMESPACE}]}),
        ),
        (
            "v1",
            "ConfigMap",
            "configmaps",
            true,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "coredns", "namespace": NAMESPACE},
                   "data": {"Corefile": COREFILE}}),
        ),
        (
            "apps/v1",
            "Deployment",
            "deployments",
            true,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": NAMESPACE, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "terminationGracePeriodSeconds": 1,
                        "tolerations": [{"operator": "Exists"}],
                        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "coredns",
                            "image": images::COREDNS,
                            "imagePullPolicy": "Never",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "ports": [
                                {"name": "dns", "containerPort": 1053, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 1053, "protocol": "TCP"},
                            ],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181},
                                               "periodSeconds": 2},
                            "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                            "securityContext": {"allowPrivilegeEscalation": false,
                                                "readOnlyRootFilesystem": true,
                                                "capabilities": {"drop": ["ALL"]}},
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            }}),
        ),
        (
            "v1",
            "Service",
            "services",
            true,
            json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": NAMESPACE, "labels": labels},
            "spec": {
                "selector": labels,
                "clusterIP": dns_ip.to_string(),
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"},
                ],
            }}),
        ),
    ]
}

/// Name of the default StorageClass of a local cluster (kind's is named the same).
pub const STORAGE_CLASS: &str = "standard";

/// A default StorageClass with `count` statically provisioned volumes: host directories under
/// `volumes_dir` (writable by any user, like a fresh disk with a sticky bit), each offered as a
/// PersistentVolume of `capacity` that a claim of the class binds to. Every node shares the host's
/// file system, so a volume keeps its data wherever its pod is rescheduled.
pub async fn install_local_storage(
    client: &Client,
    volumes_dir: &std::path::Path,
    count: usize,
    capacity: &str,
) -> Result<(), ClusterError> {
    use std::os::unix::fs::PermissionsExt;
    let class = json!({
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS,
                     "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "kubernetes.io/no-provisioner",
        "reclaimPolicy": "Retain",
        "volumeBindingMode": "Immediate",
    });
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    classes
        .patch(
            STORAGE_CLASS,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&class),
        )
        .await?;
    let volumes: Api<k8s_openapi::api::core::v1::PersistentVolume> = Api::all(client.clone());
    for i in 0..count {
        let dir = volumes_dir.join(format!("pv-{i}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))?;
        let name = format!("local-pv-{i}");
        let volume = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "labels": {"nats-cdr.dev/local-volume": "true"}},
            "spec": {
                "capacity": {"storage": capacity},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": STORAGE_CLASS,
                "hostPath": {"path": dir, "type": "Directory"},
            },
        });
        volumes
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&volume),
            )
            .await?;
    }
    Ok(())
}
