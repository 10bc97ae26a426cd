//! The Helm chart on a real kube-apiserver: it lints, installs, and its RBAC is both sufficient
//! (the operator binary, running as the chart's ServiceAccount through impersonation, makes a
//! stream Ready on a real nats-server) and least-privilege (what it must not do is refused).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use nats_cdr_testsupport::{
    NatsServer, apply_yaml, binaries, install_crds, repo_root, shared_api_cluster, wait_for,
};

fn run(tool: &str, kubeconfig: &Path, args: &[&str]) -> (bool, String) {
    let binary = binaries::find(tool).unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(binary)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run tool");
    crate::support::outcome(&output)
}

fn chart() -> String {
    repo_root().join("charts/nats-cdr").display().to_string()
}

/// A kubeconfig that acts as `user` (impersonation by the admin of the local cluster).
fn impersonating_kubeconfig(admin: &Path, user: &str, dir: &Path) -> PathBuf {
    let mut doc: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(admin).unwrap()).unwrap();
    for entry in doc["users"].as_sequence_mut().unwrap() {
        entry["user"]["as"] = serde_yaml::Value::from(user);
    }
    let path = dir.join(format!("kubeconfig-as-{}", user.replace(':', "-")));
    std::fs::write(&path, serde_yaml::to_string(&doc).unwrap()).unwrap();
    path
}

#[test]
fn chart_lints_and_renders_namespaced_rbac_when_asked() {
    let helm = binaries::find("helm").unwrap_or_else(|e| panic!("{e}"));
    let lint = Command::new(&helm)
        .args(["lint", &chart()])
        .output()
        .unwrap();
    assert!(
        lint.status.success(),
        "{}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let rendered = Command::new(&helm)
        .args(["template", "t", &chart(), "--kube-version", "1.37.2"])
        .args(["--set", "watchNamespaces={telecom}"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(rendered.status.success(), "{text}");
    assert!(
        !text.contains("kind: ClusterRole"),
        "watching one namespace needs no ClusterRole:\n{text}"
    );
    assert!(text.contains("kind: Role") && text.contains("namespace: telecom"));
    assert!(text.contains("readOnlyRootFilesystem: true") && text.contains("runAsNonRoot: true"));
}

#[tokio::test]
async fn chart_installs_and_its_rbac_is_sufficient_and_least_privilege() {
    let cluster = shared_api_cluster().await.unwrap();
    if !cluster.is_local() {
        // Impersonation and the operator binary on the host need the local control plane.
        return;
    }
    let client = cluster.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let admin = cluster.kubeconfig_path();
    let release_ns = cluster.new_namespace("chart-sys").await.unwrap();
    let watched = cluster.new_namespace("chart-app").await.unwrap();
    let release = "nc";

    let (ok, out) = run(
        "helm",
        admin,
        &[
            "install",
            release,
            &chart(),
            "-n",
            &release_ns,
            "--set",
            &format!("watchNamespaces={{{watched}}}"),
        ],
    );
    assert!(ok, "helm install failed: {out}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &release_ns);
    let deployment = deployments.get("nc-operator").await.unwrap();
    let pod = deployment.spec.template.spec.unwrap();
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    let container = &pod.containers[0];
    let security = container.security_context.clone().unwrap();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));

    let service_account = format!("system:serviceaccount:{release_ns}:nc-operator");
    let can = |verb: &str, resource: &str, ns: &str| {
        let (ok, out) = run(
            "kubectl",
            admin,
            &[
                "auth",
                "can-i",
                verb,
                resource,
                "-n",
                ns,
                "--as",
                &service_account,
            ],
        );
        (ok, out)
    };
    for (verb, resource, ns) in [
        ("watch", "jetstreamstreams.nats-cdr.dev", watched.as_str()),
        (
            "patch",
            "jetstreamstreams.nats-cdr.dev/status",
            watched.as_str(),
        ),
        ("patch", "jetstreamconsumers.nats-cdr.dev", watched.as_str()),
        ("get", "secrets", watched.as_str()),
        ("create", "events.events.k8s.io", watched.as_str()),
        ("update", "leases.coordination.k8s.io", release_ns.as_str()),
    ] {
        let (ok, out) = can(verb, resource, ns);
        assert!(
            ok,
            "the operator must be allowed to {verb} {resource} in {ns}: {out}"
        );
    }
    for (verb, resource, ns) in [
        ("list", "secrets", watched.as_str()),
        ("delete", "secrets", watched.as_str()),
        ("create", "deployments.apps", watched.as_str()),
        ("delete", "jetstreamstreams.nats-cdr.dev", watched.as_str()),
        ("get", "jetstreamstreams.nats-cdr.dev", "default"),
        ("update", "leases.coordination.k8s.io", watched.as_str()),
    ] {
        let (ok, out) = can(verb, resource, ns);
        assert!(
            !ok,
            "least privilege: the operator must not {verb} {resource} in {ns}: {out}"
        );
    }

    // Sufficient: the real binary, as that ServiceAccount, reconciles a stream to Ready.
    let nats = NatsServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let as_operator = impersonating_kubeconfig(admin, &service_account, dir.path());
    // The impersonation really applies (else this test would prove nothing about the RBAC).
    let yaml = std::fs::read_to_string(&as_operator).unwrap();
    let as_client = nats_cdr_testsupport::kube_cluster::client_from_yaml(&yaml, &as_operator)
        .await
        .unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(as_client, &watched);
    let refused = secrets.list(&Default::default()).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(status)) if status.code == 403),
        "listing Secrets as the ServiceAccount must be forbidden: {refused:?}"
    );
    let port = nats_cdr_testsupport::ports::free_port().unwrap();
    let log = std::fs::File::create(dir.path().join("operator.log")).unwrap();
    let mut operator = Command::new(env!("CARGO_BIN_EXE_nats-cdr-operator"))
        .env("KUBECONFIG", &as_operator)
        .args(["--namespaces", &watched, "--leader-election"])
        .args([
            "--lease-namespace",
            &release_ns,
            "--lease-name",
            "nc-operator",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .args(["--log-format", "text", "--resync-period", "2s"])
        .stderr(log)
        .spawn()
        .unwrap();
    let objects = format!(
        "apiVersion: nats-cdr.dev/v1alpha1\nkind: NatsCluster\nmetadata: {{name: n}}\nspec:\n  external: {{url: '{}'}}\n---\n\
         apiVersion: nats-cdr.dev/v1alpha1\nkind: JetStreamStream\nmetadata: {{name: s}}\nspec:\n  clusterRef: {{name: n}}\n  name: CHART\n  subjects: [chart.>]\n",
        nats.url()
    );
    apply_yaml(&client, &objects, &watched).await.unwrap();
    let streams: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        &watched,
        &kube::discovery::ApiResource::erase::<nats_cdr_crds::JetStreamStream>(&()),
    );
    let ready = wait_for(
        Duration::from_secs(60),
        "stream Ready as the ServiceAccount",
        || {
            let streams = streams.clone();
            async move {
                streams.get("s").await.ok().is_some_and(|s| {
                    s.data["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
            }
        },
    )
    .await;
    let _ = operator.kill();
    let _ = operator.wait();
    let log = std::fs::read_to_string(dir.path().join("operator.log")).unwrap_or_default();
    assert!(
        ready.is_ok(),
        "stream not Ready with the chart's RBAC; operator log:\n{log}"
    );
    assert!(
        !log.contains("forbidden"),
        "the operator hit a forbidden call:\n{log}"
    );
    let nats_cli = binaries::find("nats").unwrap();
    let info = Command::new(nats_cli)
        .args(["--server", &nats.url(), "stream", "info", "CHART", "-j"])
        .output()
        .unwrap();
    assert!(info.status.success(), "stream CHART not on the server");
}
