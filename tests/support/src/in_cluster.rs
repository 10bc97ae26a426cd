//! Servers run as pods of a test cluster (from this repository's images), for tests where the
//! operator or the workloads run in the cluster too: a nats-server Deployment with JetStream
//! (`sync_interval: always`) behind a Service.

use serde_json::json;

/// The objects of a single nats-server named `name` (ConfigMap, Deployment, Service `name` on
/// port 4222, monitoring on 8222), from `image`, as a JSON stream `apply_yaml` takes.
pub fn nats_server(name: &str, image: &str) -> String {
    let labels = json!({"app.kubernetes.io/name": "nats", "app.kubernetes.io/instance": name});
    let conf = "port: 4222\nhttp_port: 8222\nserver_name: $POD_NAME\n\
                jetstream {\n  store_dir: /data\n  sync_interval: always\n}\n";
    let objects = [
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name}, "data": {"nats.conf": conf}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 5,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                                        "fsGroup": 65532,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "nats",
                        "image": image,
                        "imagePullPolicy": "IfNotPresent",
                        "args": ["--config", "/etc/nats/nats.conf"],
                        "env": [{"name": "POD_NAME",
                                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                        "ports": [{"name": "client", "containerPort": 4222},
                                  {"name": "monitor", "containerPort": 8222}],
                        "readinessProbe": {"httpGet": {"path": "/healthz?js-enabled-only=true",
                                                       "port": 8222},
                                           "periodSeconds": 2},
                        "securityContext": {"allowPrivilegeEscalation": false,
                                            "readOnlyRootFilesystem": true,
                                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/nats"},
                                         {"name": "data", "mountPath": "/data"}],
                    }],
                    "volumes": [{"name": "config", "configMap": {"name": name}},
                                {"name": "data", "emptyDir": {}}],
                },
            },
        }}),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": name},
               "spec": {"selector": labels,
                        "ports": [{"name": "client", "port": 4222, "targetPort": 4222},
                                  {"name": "monitor", "port": 8222, "targetPort": 8222}]}}),
    ];
    objects
        .iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n")
}
