//! The Helm chart as a platform team uses it: it lints and renders with the default, pilot and GA
//! values; bad values are refused naming their path; its NatsCluster/CdrPipeline values mirror the
//! CRDs; the pilot values install objects the CRDs accept, and helm uninstall keeps them; the CRDs
//! upgrade by the documented path (server-side apply, then helm upgrade); the monitoring objects
//! are accepted by an apiserver serving the Prometheus Operator CRDs; the alerts pass
//! `promtool check rules` and their unit tests (`charts/nats-cdr/tests/alerts.test.yaml`).
//!
//! Runs against the local control plane, or the cluster named by `KUBECONFIG` (kind included):
//! every release lives in a namespace of its own and watches only that namespace (no
//! ClusterRole), and the CRD upgrade runs on CRDs of a group of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::ApiResource;
use nats_cdr_testsupport::manifests::{ApplyError, wait_crd_established};
use nats_cdr_testsupport::tools::{self, ToolError};
use nats_cdr_testsupport::{
    apply_yaml, binaries, install_crds, repo_root, scratch, shared_api_cluster, wait_for,
};
use serde::Deserialize;
use serde_json::Value;

/// Kubernetes version for `helm template` and `helm lint`: a helm built from source (ours) assumes
/// v1.20 without it, below the chart's kubeVersion.
const KUBE_VERSION: &str = "1.37.2";
const TIMEOUT: Duration = Duration::from_secs(60);

fn chart_dir() -> PathBuf {
    repo_root().join("charts/nats-cdr")
}

fn chart() -> String {
    chart_dir().display().to_string()
}

fn values_file(name: &str) -> String {
    chart_dir().join(name).display().to_string()
}

/// Runs helm without a cluster (lint, template): `Ok(stdout)` or `Err(stdout + stderr)`.
fn helm(args: &[&str]) -> Result<String, String> {
    let helm = binaries::find("helm").unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(helm).args(args).output().expect("run helm");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `helm template` of the chart in namespace `telecom` with `extra` arguments.
fn template(extra: &[&str]) -> Result<String, String> {
    let chart = chart();
    let mut args = vec![
        "template",
        "t",
        chart.as_str(),
        "-n",
        "telecom",
        "--kube-version",
        KUBE_VERSION,
    ];
    args.extend_from_slice(extra);
    helm(&args)
}

/// Every document of a multi-document YAML text, as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde_yaml::Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).expect("YAML as JSON"))
        .collect()
}

fn of_kind<'a>(documents: &'a [Value], kind: &str) -> Vec<&'a Value> {
    documents.iter().filter(|d| d["kind"] == kind).collect()
}

fn app_version() -> String {
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(chart_dir().join("Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml is YAML");
    chart["appVersion"].as_str().expect("appVersion").to_owned()
}

const MONITORING_KINDS: [&str; 3] = ["ServiceMonitor", "PodMonitor", "PrometheusRule"];

#[test]
fn chart_lints_and_renders_with_default_pilot_and_ga_values() {
    for values in ["values.yaml", "values-pilot.yaml", "values-ga.yaml"] {
        let file = values_file(values);
        let out = helm(&[
            "lint",
            "--strict",
            &chart(),
            "-f",
            &file,
            "--kube-version",
            KUBE_VERSION,
        ])
        .unwrap_or_else(|e| panic!("helm lint with {values}: {e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
        let rendered = documents(
            &template(&["-f", &file]).unwrap_or_else(|e| panic!("template {values}: {e}")),
        );
        for document in &rendered {
            assert!(
                document["metadata"]["name"].is_string(),
                "{values}: unnamed {document}"
            );
        }
        let deployment = of_kind(&rendered, "Deployment")[0];
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{values}");
        let container = &pod["containers"][0]["securityContext"];
        assert_eq!(container["readOnlyRootFilesystem"], true, "{values}");
        assert_eq!(container["allowPrivilegeEscalation"], false, "{values}");
    }

    // Defaults: the operator only.
    let defaults = documents(&template(&[]).unwrap());
    for kind in ["NatsCluster", "CdrPipeline"]
        .iter()
        .chain(&MONITORING_KINDS)
    {
        assert!(
            of_kind(&defaults, kind).is_empty(),
            "default values render a {kind}"
        );
    }

    // Pilot: one managed server with every ack on disk, a pipeline with one copy of each CDR.
    let pilot = documents(&template(&["-f", &values_file("values-pilot.yaml")]).unwrap());
    let nats = of_kind(&pilot, "NatsCluster");
    assert_eq!(nats.len(), 1);
    assert_eq!(nats[0]["spec"]["managed"]["replicas"], 1);
    assert_eq!(nats[0]["spec"]["managed"]["syncInterval"], "always");
    assert_eq!(
        nats[0]["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let pipeline = of_kind(&pilot, "CdrPipeline");
    assert_eq!(pipeline.len(), 1);
    let spec = &pipeline[0]["spec"];
    assert_eq!(spec["clusterRef"]["name"], "nats");
    assert!(spec["clusterRef"].get("namespace").is_none());
    assert_eq!(spec["stream"]["replicas"], 1);
    assert_eq!(spec["stream"]["deletionPolicy"], "Retain");
    let version = app_version();
    assert_eq!(
        spec["bridge"]["image"],
        format!("ghcr.io/nats-cdr/kam-cdr-bridge:{version}")
    );
    assert_eq!(
        spec["worker"]["image"],
        format!("ghcr.io/nats-cdr/cdr-worker:{version}")
    );
    for kind in MONITORING_KINDS {
        assert!(
            of_kind(&pilot, kind).is_empty(),
            "the pilot renders a {kind}"
        );
    }

    // GA: three servers, three copies, the monitoring objects.
    let ga = documents(&template(&["-f", &values_file("values-ga.yaml")]).unwrap());
    assert_eq!(
        of_kind(&ga, "NatsCluster")[0]["spec"]["managed"]["replicas"],
        3
    );
    assert_eq!(
        of_kind(&ga, "NatsCluster")[0]["spec"]["managed"]["syncInterval"],
        "always"
    );
    assert_eq!(
        of_kind(&ga, "CdrPipeline")[0]["spec"]["stream"]["replicas"],
        3
    );
    assert_eq!(of_kind(&ga, "ServiceMonitor").len(), 1);
    assert_eq!(of_kind(&ga, "PodMonitor").len(), 2);
    assert_eq!(of_kind(&ga, "PrometheusRule").len(), 1);

    // One registry setting moves every image; a pipeline in another namespace names its cluster's.
    let moved = documents(
        &template(&[
            "-f",
            &values_file("values-pilot.yaml"),
            "--set",
            "image.repository=registry.example/telco/nats-cdr-operator",
            "--set",
            "image.tag=1.2.3",
            "--set",
            "cdrPipeline.namespace=billing",
        ])
        .unwrap(),
    );
    let spec = &of_kind(&moved, "CdrPipeline")[0]["spec"];
    assert_eq!(
        spec["bridge"]["image"],
        "registry.example/telco/kam-cdr-bridge:1.2.3"
    );
    assert_eq!(
        spec["worker"]["image"],
        "registry.example/telco/cdr-worker:1.2.3"
    );
    assert_eq!(spec["clusterRef"]["namespace"], "telecom");
    let env = &of_kind(&moved, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"];
    let var = |name: &str| {
        env.as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .map(|e| e["value"].clone())
    };
    assert_eq!(
        var("BRIDGE_IMAGE"),
        Some("registry.example/telco/kam-cdr-bridge:1.2.3".into())
    );
    assert_eq!(
        var("WORKER_IMAGE"),
        Some("registry.example/telco/cdr-worker:1.2.3".into())
    );
    assert_eq!(var("NATS_IMAGE"), None, "the operator's own default");
}

#[test]
fn bad_values_are_refused_naming_their_path() {
    let pilot = values_file("values-pilot.yaml");
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "negative replicas",
            vec!["--set", "replicas=-1"],
            "at '/replicas'",
        ),
        (
            "unknown log format",
            vec!["--set", "logFormat=xml"],
            "at '/logFormat'",
        ),
        (
            "resync period in words",
            vec!["--set", "resyncPeriod=five minutes"],
            "at '/resyncPeriod'",
        ),
        (
            "two operators without leader election",
            vec!["--set", "leaderElection=false"],
            "at '/leaderElection'",
        ),
        (
            "a misspelled top-level value",
            vec!["--set", "replica=1"],
            "'replica' not allowed",
        ),
        (
            "a NatsCluster of 2 servers",
            vec!["-f", &pilot, "--set", "natsCluster.spec.managed.replicas=2"],
            "at '/natsCluster/spec/managed/replicas'",
        ),
        (
            "a sync interval that is no duration",
            vec![
                "-f",
                &pilot,
                "--set",
                "natsCluster.spec.managed.syncInterval=sometimes",
            ],
            "at '/natsCluster/spec/managed/syncInterval'",
        ),
        (
            "a NatsCluster both managed and external",
            vec![
                "-f",
                &pilot,
                "--set",
                "natsCluster.spec.external.url=nats://n:4222",
            ],
            "at '/natsCluster/spec'",
        ),
        (
            "an enabled NatsCluster with an empty spec",
            vec!["--set", "natsCluster.enabled=true"],
            "at '/natsCluster/spec'",
        ),
        (
            "a stream age in words",
            vec![
                "-f",
                &pilot,
                "--set",
                "cdrPipeline.spec.stream.maxAge=7 days",
            ],
            "at '/cdrPipeline/spec/stream/maxAge'",
        ),
        (
            "a stream of 7 replicas",
            vec!["-f", &pilot, "--set", "cdrPipeline.spec.stream.replicas=7"],
            "at '/cdrPipeline/spec/stream/replicas'",
        ),
        (
            "an unknown deletion policy",
            vec![
                "-f",
                &pilot,
                "--set",
                "cdrPipeline.spec.stream.deletionPolicy=Keep",
            ],
            "at '/cdrPipeline/spec/stream/deletionPolicy'",
        ),
        (
            "a misspelled worker field",
            vec!["-f", &pilot, "--set", "cdrPipeline.spec.worker.batchSze=10"],
            "'batchSze' not allowed",
        ),
        (
            "a negative backlog threshold",
            vec!["--set", "monitoring.rules.consumerBacklog.messages=-1"],
            "at '/monitoring/rules/consumerBacklog/messages'",
        ),
        (
            "an alert delay Prometheus cannot read",
            vec!["--set", "monitoring.rules.natsUnreachable.for=3min"],
            "at '/monitoring/rules/natsUnreachable/for'",
        ),
        (
            "an unknown alert to disable",
            vec!["--set", "monitoring.rules.disabled={NoSuchAlert}"],
            "at '/monitoring/rules/disabled/0'",
        ),
        (
            "a storage ratio above 1",
            vec![
                "--set",
                "monitoring.rules.jetstreamStorage.warningRatio=1.5",
            ],
            "at '/monitoring/rules/jetstreamStorage/warningRatio'",
        ),
    ];
    for (case, args, path) in &cases {
        match template(args) {
            Ok(_) => panic!("{case}: accepted"),
            Err(message) => {
                assert!(
                    message.contains("values don't meet the specifications of the schema"),
                    "{case}: not refused by the schema: {message}"
                );
                assert!(
                    message.contains(path),
                    "{case}: {path} not named: {message}"
                );
            }
        }
    }

    // What the schema cannot say, the template does.
    let orphan = template(&[
        "--set",
        "cdrPipeline.enabled=true",
        "--set",
        "cdrPipeline.spec.worker.databaseSecretRef.name=db",
        "--set",
        "cdrPipeline.spec.worker.databaseSecretRef.key=url",
    ])
    .expect_err("a CdrPipeline without a cluster");
    assert!(
        orphan.contains("cdrPipeline.spec.clusterRef.name is required"),
        "{orphan}"
    );

    // The control: valid values of the same kind render (an external NatsCluster).
    let external = documents(
        &template(&[
            "--set",
            "natsCluster.enabled=true",
            "--set",
            "natsCluster.spec.external.url=nats://nats.example:4222",
        ])
        .expect("an external NatsCluster"),
    );
    let spec = &of_kind(&external, "NatsCluster")[0]["spec"];
    assert_eq!(spec["external"]["url"], "nats://nats.example:4222");
}

/// Compares the values schema of a CRD spec with the CRD's own schema, both ways: same fields,
/// same types and the same constraints; every object closed to unknown fields in the values.
fn compare_schemas(path: &str, values: &Value, crd: &Value, problems: &mut Vec<String>) {
    for keyword in [
        "type",
        "enum",
        "pattern",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
    ] {
        let (ours, theirs) = (values.get(keyword), crd.get(keyword));
        let same = match (ours.and_then(Value::as_f64), theirs.and_then(Value::as_f64)) {
            (Some(a), Some(b)) => a == b,
            _ => ours == theirs,
        };
        if !same {
            problems.push(format!(
                "{path}: {keyword} is {ours:?} in values.schema.json but {theirs:?} in the CRD"
            ));
        }
    }
    let properties = |schema: &Value| -> BTreeSet<String> {
        schema["properties"]
            .as_object()
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default()
    };
    let (ours, theirs) = (properties(values), properties(crd));
    for missing in theirs.difference(&ours) {
        problems.push(format!(
            "{path}.{missing}: in the CRD, not in values.schema.json"
        ));
    }
    for extra in ours.difference(&theirs) {
        problems.push(format!(
            "{path}.{extra}: in values.schema.json, not in the CRD"
        ));
    }
    if !ours.is_empty() && values["additionalProperties"] != false {
        problems.push(format!(
            "{path}: values.schema.json must refuse unknown fields (additionalProperties: false)"
        ));
    }
    for name in ours.intersection(&theirs) {
        compare_schemas(
            &format!("{path}.{name}"),
            &values["properties"][name],
            &crd["properties"][name],
            problems,
        );
    }
    if let (Some(a), Some(b)) = (
        values.get("additionalProperties").filter(|v| v.is_object()),
        crd.get("additionalProperties").filter(|v| v.is_object()),
    ) {
        compare_schemas(&format!("{path}.*"), a, b, problems);
    }
}

#[test]
fn the_values_of_natscluster_and_cdrpipeline_are_their_crds_specs() {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).expect("schema"),
    )
    .expect("values.schema.json is JSON");
    let mut problems = Vec::new();
    for (value, crd_file) in [
        ("natsCluster", "natsclusters.yaml"),
        ("cdrPipeline", "cdrpipelines.yaml"),
    ] {
        let crd: Value = serde_yaml::from_str(
            &std::fs::read_to_string(chart_dir().join("crds").join(crd_file)).expect("CRD"),
        )
        .expect("CRD is YAML");
        let crd_spec =
            &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert!(crd_spec.is_object(), "{crd_file} has no spec schema");
        compare_schemas(
            &format!("{value}.spec"),
            &schema["properties"][value]["properties"]["spec"],
            crd_spec,
            &mut problems,
        );
    }
    assert!(
        problems.is_empty(),
        "charts/nats-cdr/values.schema.json differs from the CRDs (crds/src is the source of truth):\n{}",
        problems.join("\n")
    );
}

fn dynamic_api<K>(client: &kube::Client, namespace: &str) -> Api<DynamicObject>
where
    K: kube::Resource<DynamicType = ()>,
{
    Api::namespaced_with(client.clone(), namespace, &ApiResource::erase::<K>(&()))
}

fn monitoring_api(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", kind);
    Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

#[tokio::test]
async fn pilot_values_install_objects_the_crds_accept_and_uninstall_keeps_them() {
    let cluster = shared_api_cluster()
        .await
        .expect("start or reach a cluster");
    let client = cluster.client().await.unwrap();
    install_crds(&client).await.unwrap();
    let kubeconfig = cluster.kubeconfig_path();
    let ns = cluster.new_namespace("chart-pilot").await.unwrap();

    let notes = tools::run(
        "helm",
        kubeconfig,
        &[
            "install",
            "pilot",
            &chart(),
            "-n",
            &ns,
            "-f",
            &values_file("values-pilot.yaml"),
            "--set",
            &format!("watchNamespaces={{{ns}}}"),
            // No operator pod: the objects are checked as the CRDs stored them (on kind too).
            "--set",
            "replicas=0",
        ],
    )
    .expect("helm install with values-pilot.yaml");
    // NOTES.txt says what to do next.
    for next in [
        format!("kubectl -n {ns} create secret generic cdr-db --from-literal=url="),
        "kubectl label node <sip-node> nats-cdr.dev/sip-node=true".to_owned(),
        format!("kubectl -n {ns} get cdrpipeline cdr"),
        "helm uninstall leaves the NatsCluster and CdrPipeline in place".to_owned(),
        "The stream and its CDRs stay on the NATS servers".to_owned(),
        "kubectl apply --server-side --force-conflicts".to_owned(),
    ] {
        assert!(notes.contains(&next), "NOTES lack {next:?}:\n{notes}");
    }

    // The apiserver stored both objects, with the CRDs' defaults filled in.
    let clusters = dynamic_api::<nats_cdr_crds::NatsCluster>(&client, &ns);
    let nats = clusters.get("nats").await.expect("NatsCluster nats");
    let managed = &nats.data["spec"]["managed"];
    assert_eq!(managed["replicas"], 1);
    assert_eq!(managed["syncInterval"], "always");
    assert_eq!(managed["jetstream"]["storageSize"], "10Gi");
    let pipelines = dynamic_api::<nats_cdr_crds::CdrPipeline>(&client, &ns);
    let cdr = pipelines.get("cdr").await.expect("CdrPipeline cdr");
    let spec = &cdr.data["spec"];
    assert_eq!(spec["clusterRef"]["name"], "nats");
    assert_eq!(spec["stream"]["name"], "AKIRA_CDR");
    assert_eq!(spec["stream"]["replicas"], 1);
    assert_eq!(spec["stream"]["deletionPolicy"], "Retain");
    assert_eq!(spec["worker"]["databaseSecretRef"]["name"], "cdr-db");
    assert_eq!(
        spec["bridge"]["nodeSelector"]["nats-cdr.dev/sip-node"],
        "true"
    );

    // Uninstall removes the operator and keeps the NatsCluster and CdrPipeline (and so the stream).
    let out =
        tools::run("helm", kubeconfig, &["uninstall", "pilot", "-n", &ns]).expect("helm uninstall");
    assert!(out.contains("kept due to the resource policy"), "{out}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    wait_for(TIMEOUT, "the operator Deployment deleted", || {
        let deployments = deployments.clone();
        async move {
            deployments
                .get_opt("pilot-operator")
                .await
                .ok()
                .flatten()
                .is_none()
        }
    })
    .await
    .expect("operator removed by helm uninstall");
    assert!(
        clusters.get_opt("nats").await.unwrap().is_some(),
        "NatsCluster kept"
    );
    assert!(
        pipelines.get_opt("cdr").await.unwrap().is_some(),
        "CdrPipeline kept"
    );
    clusters
        .delete("nats", &DeleteParams::default())
        .await
        .unwrap();
    pipelines
        .delete("cdr", &DeleteParams::default())
        .await
        .unwrap();

    // A rule only the apiserver can check (CEL: max ack pending >= batch size x concurrency) fails
    // the install with the field named.
    let refused_ns = cluster.new_namespace("chart-cel").await.unwrap();
    let refused = tools::run(
        "helm",
        kubeconfig,
        &[
            "install",
            "cel",
            &chart(),
            "-n",
            &refused_ns,
            "-f",
            &values_file("values-pilot.yaml"),
            "--set",
            &format!("watchNamespaces={{{refused_ns}}}"),
            "--set",
            "cdrPipeline.spec.consumer.maxAckPending=10",
        ],
    );
    match refused {
        Err(ToolError::Failed { output, .. }) => assert!(
            output.contains("spec.consumer.maxAckPending must be at least"),
            "{output}"
        ),
        other => panic!("maxAckPending 10 < 100 x 2 was not refused: {other:?}"),
    }
}

/// The directory of the Prometheus Operator CRDs that scripts/setup.sh copies from the module.
fn prometheus_operator_crds_dir() -> PathBuf {
    let dir = std::env::var_os("NATS_CDR_PROMETHEUS_OPERATOR_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            binaries::cache_dir()
                .join("prometheus-operator")
                .join("crds")
        });
    assert!(
        dir.join("monitoring.coreos.com_prometheusrules.yaml")
            .is_file(),
        "cannot find the Prometheus Operator CRDs in {}: run `bash scripts/setup.sh`, or set \
         NATS_CDR_PROMETHEUS_OPERATOR_CRDS to a directory holding monitoring.coreos.com_*.yaml",
        dir.display()
    );
    dir
}

/// Installs the ServiceMonitor, PodMonitor and PrometheusRule CRDs unless the cluster already
/// serves them (a cluster with a Prometheus Operator keeps its own).
async fn ensure_prometheus_operator_crds(client: &kube::Client) {
    let dir = prometheus_operator_crds_dir();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for plural in ["servicemonitors", "podmonitors", "prometheusrules"] {
        let name = format!("{plural}.monitoring.coreos.com");
        if crds.get_opt(&name).await.unwrap().is_none() {
            let text =
                std::fs::read_to_string(dir.join(format!("monitoring.coreos.com_{plural}.yaml")))
                    .expect("read CRD");
            apply_yaml(client, &text, "default")
                .await
                .expect("install CRD");
        }
        wait_crd_established(client, &name, TIMEOUT)
            .await
            .expect("CRD established");
    }
}

#[tokio::test]
async fn ga_values_with_monitoring_are_accepted_by_an_apiserver_serving_the_prometheus_operator_crds()
 {
    let cluster = shared_api_cluster()
        .await
        .expect("start or reach a cluster");
    let client = cluster.client().await.unwrap();
    install_crds(&client).await.unwrap();
    ensure_prometheus_operator_crds(&client).await;
    let kubeconfig = cluster.kubeconfig_path();
    let ns = cluster.new_namespace("chart-ga").await.unwrap();

    tools::run(
        "helm",
        kubeconfig,
        &[
            "install",
            "ga",
            &chart(),
            "-n",
            &ns,
            "-f",
            &values_file("values-ga.yaml"),
            "--set",
            &format!("watchNamespaces={{{ns}}}"),
            "--set",
            "monitoring.labels.release=kube-prometheus-stack",
            "--set",
            "replicas=0",
        ],
    )
    .expect("helm install with values-ga.yaml and monitoring");

    let nats = dynamic_api::<nats_cdr_crds::NatsCluster>(&client, &ns)
        .get("nats")
        .await
        .unwrap();
    assert_eq!(nats.data["spec"]["managed"]["replicas"], 3);
    assert_eq!(nats.data["spec"]["managed"]["syncInterval"], "always");
    let cdr = dynamic_api::<nats_cdr_crds::CdrPipeline>(&client, &ns)
        .get("cdr")
        .await
        .unwrap();
    assert_eq!(cdr.data["spec"]["stream"]["replicas"], 3);

    // The ServiceMonitor selects the operator's metrics Service, by a port that Service has.
    let monitor = monitoring_api(&client, &ns, "ServiceMonitor", "servicemonitors")
        .get("ga-operator")
        .await
        .expect("ServiceMonitor stored");
    assert_eq!(
        monitor.metadata.labels.as_ref().unwrap()["release"],
        "kube-prometheus-stack"
    );
    let service = Api::<Service>::namespaced(client.clone(), &ns)
        .get("ga-operator-metrics")
        .await
        .unwrap();
    let service_labels = service.metadata.labels.unwrap();
    for (key, value) in monitor.data["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            service_labels.get(key).map(String::as_str),
            value.as_str(),
            "{key}"
        );
    }
    let port = monitor.data["spec"]["endpoints"][0]["port"]
        .as_str()
        .unwrap();
    assert!(
        service
            .spec
            .unwrap()
            .ports
            .unwrap()
            .iter()
            .any(|p| p.name.as_deref() == Some(port)),
        "the metrics Service has no port {port}"
    );
    assert_eq!(monitor.data["spec"]["jobLabel"], "app.kubernetes.io/name");

    // The PodMonitors select the bridge and worker pods by the pod contract of charts/README.md.
    let pod_monitors = monitoring_api(&client, &ns, "PodMonitor", "podmonitors");
    for (name, app) in [
        ("ga-kam-cdr-bridge", "kam-cdr-bridge"),
        ("ga-cdr-worker", "cdr-worker"),
    ] {
        let monitor = pod_monitors.get(name).await.expect("PodMonitor stored");
        let spec = &monitor.data["spec"];
        assert_eq!(
            spec["selector"]["matchLabels"]["app.kubernetes.io/name"],
            app
        );
        assert_eq!(
            spec["selector"]["matchLabels"]["app.kubernetes.io/part-of"],
            "nats-cdr"
        );
        assert_eq!(spec["podMetricsEndpoints"][0]["port"], "metrics");
        assert_eq!(
            spec["namespaceSelector"]["matchNames"],
            serde_json::json!([ns])
        );
    }

    // The PrometheusRule holds every alert.
    let rule = monitoring_api(&client, &ns, "PrometheusRule", "prometheusrules")
        .get("ga-operator")
        .await
        .expect("PrometheusRule stored");
    let alerts: BTreeSet<&str> = rule.data["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    assert_eq!(
        alerts,
        alert_names_in_schema().iter().map(String::as_str).collect()
    );

    // Acceptance means something: the same CRD refuses a rule whose delay is not a duration.
    let bad = r#"apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: bad-delay}
spec:
  groups:
  - name: bad
    rules:
    - alert: Bad
      expr: vector(1)
      for: 5 minutes
"#;
    match apply_yaml(&client, bad, &ns).await {
        Err(ApplyError::Apply {
            source: kube::Error::Api(status),
            ..
        }) => assert!(status.message.contains("for"), "{}", status.message),
        other => panic!("a PrometheusRule with `for: 5 minutes` was accepted: {other:?}"),
    }
}

/// The alert names the schema lets one disable: every alert of the PrometheusRule.
fn alert_names_in_schema() -> BTreeSet<String> {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    schema["properties"]["monitoring"]["properties"]["rules"]["properties"]["disabled"]["items"]
        ["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

fn printer_columns(crd: &CustomResourceDefinition) -> Vec<String> {
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

#[tokio::test]
async fn crds_upgrade_by_server_side_apply_before_helm_upgrade() {
    let cluster = shared_api_cluster()
        .await
        .expect("start or reach a cluster");
    let client = cluster.client().await.unwrap();
    let kubeconfig = cluster.kubeconfig_path();
    let ns = cluster.new_namespace("chart-upgrade").await.unwrap();
    let set_ns = format!("watchNamespaces={{{ns}}}");

    // A copy of the chart whose CRDs have a group of this test only, so that changing them
    // touches nothing another test (or a user of the cluster) relies on.
    let group = format!("u{}.chart-upgrade.nats-cdr.dev", std::process::id());
    let dir = scratch::new_dir("chart-upgrade").unwrap();
    let copy = dir.join("nats-cdr");
    copy_dir(&chart_dir(), &copy);
    let crd_dir = copy.join("crds");
    let mut crd_names = Vec::new();
    for entry in std::fs::read_dir(&crd_dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("nats-cdr.dev", &group);
        let crd: CustomResourceDefinition = serde_yaml::from_str(&text).unwrap();
        crd_names.push(crd.metadata.name.unwrap());
        std::fs::write(&path, text).unwrap();
    }
    let copy_path = copy.display().to_string();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let nats_crd = format!("natsclusters.{group}");

    // Install: helm creates the CRDs from crds/.
    tools::run(
        "helm",
        kubeconfig,
        &[
            "install",
            "up",
            &copy_path,
            "-n",
            &ns,
            "--set",
            &set_ns,
            "--set",
            "replicas=0",
        ],
    )
    .expect("helm install");
    wait_crd_established(&client, &nats_crd, TIMEOUT)
        .await
        .unwrap();
    let before = crds.get(&nats_crd).await.unwrap();
    assert!(!printer_columns(&before).contains(&"SyncInterval".to_owned()));
    let probe = |name: &str| {
        format!(
            "apiVersion: {group}/v1alpha1\nkind: NatsCluster\nmetadata: {{name: {name}}}\nspec:\n  managed: {{replicas: 1, upgradeProbe: kept}}\n"
        )
    };
    // Before the upgrade the apiserver refuses the next version's field.
    match apply_yaml(&client, &probe("before"), &ns).await {
        Err(ApplyError::Apply {
            source: kube::Error::Api(status),
            ..
        }) => assert!(
            status
                .message
                .contains("upgradeProbe: field not declared in schema"),
            "{}",
            status.message
        ),
        other => panic!("a field of the next version was accepted before the upgrade: {other:?}"),
    }

    // The next chart version changes a CRD: a new field and a new printer column.
    let natsclusters = crd_dir.join("natsclusters.yaml");
    let mut crd: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&natsclusters).unwrap()).unwrap();
    let version = &mut crd["spec"]["versions"][0];
    version["additionalPrinterColumns"]
        .as_sequence_mut()
        .unwrap()
        .push(
            serde_yaml::from_str(
                "{name: SyncInterval, type: string, jsonPath: .spec.managed.syncInterval}",
            )
            .unwrap(),
        );
    version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["managed"]["properties"]
        .as_mapping_mut()
        .unwrap()
        .insert(
            "upgradeProbe".into(),
            serde_yaml::from_str("{type: string, description: A field of the next version.}").unwrap(),
        );
    std::fs::write(&natsclusters, serde_yaml::to_string(&crd).unwrap()).unwrap();
    let chart_yaml = copy.join("Chart.yaml");
    let bumped = std::fs::read_to_string(&chart_yaml)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("version:") {
                "version: 99.0.0"
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&chart_yaml, bumped).unwrap();

    // helm upgrade alone leaves the served CRD as it was: helm never upgrades crds/.
    tools::run(
        "helm",
        kubeconfig,
        &[
            "upgrade",
            "up",
            &copy_path,
            "-n",
            &ns,
            "--set",
            &set_ns,
            "--set",
            "replicas=0",
        ],
    )
    .expect("helm upgrade");
    let unchanged = crds.get(&nats_crd).await.unwrap();
    assert_eq!(printer_columns(&unchanged), printer_columns(&before));

    // The documented path (charts/README.md, "Upgrade"): the chart's CRDs applied server-side,
    // then helm upgrade.
    let shown =
        tools::run("helm", kubeconfig, &["show", "crds", &copy_path]).expect("helm show crds");
    let crd_file = dir.join("crds.yaml");
    std::fs::write(&crd_file, &shown).unwrap();
    let crd_file = crd_file.display().to_string();
    // Without --force-conflicts kubectl refuses: helm created the CRDs and owns their fields.
    match tools::run(
        "kubectl",
        kubeconfig,
        &["apply", "--server-side", "-f", &crd_file],
    ) {
        Err(ToolError::Failed { output, .. }) => assert!(output.contains("conflict"), "{output}"),
        other => panic!("expected a field-manager conflict, got {other:?}"),
    }
    tools::run(
        "kubectl",
        kubeconfig,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            &crd_file,
        ],
    )
    .expect("kubectl apply --server-side --force-conflicts");
    tools::run(
        "helm",
        kubeconfig,
        &[
            "upgrade",
            "up",
            &copy_path,
            "-n",
            &ns,
            "--set",
            &set_ns,
            "--set",
            "replicas=0",
        ],
    )
    .expect("helm upgrade after the CRDs");

    let upgraded = crds.get(&nats_crd).await.unwrap();
    assert!(
        printer_columns(&upgraded).contains(&"SyncInterval".to_owned()),
        "{:?}",
        printer_columns(&upgraded)
    );
    let stored = apply_yaml(&client, &probe("after"), &ns).await.unwrap();
    assert_eq!(
        stored[0].data["spec"]["managed"]["upgradeProbe"], "kept",
        "the new field is served"
    );
    let listed = tools::run("kubectl", kubeconfig, &["get", &nats_crd, "-n", &ns]).unwrap();
    assert!(listed.contains("SYNCINTERVAL"), "{listed}");
    let history = tools::run("helm", kubeconfig, &["history", "up", "-n", &ns]).unwrap();
    assert!(history.contains("99.0.0"), "{history}");

    tools::run("helm", kubeconfig, &["uninstall", "up", "-n", &ns]).unwrap();
    for name in crd_names {
        crds.delete(&name, &DeleteParams::default()).await.unwrap();
    }
}

/// The PrometheusRule's rule groups rendered with `extra` values, as a Prometheus rule file.
fn rule_file(extra: &[&str]) -> String {
    let mut args = vec![
        "--show-only",
        "templates/prometheusrule.yaml",
        "--set",
        "monitoring.rules.enabled=true",
    ];
    args.extend_from_slice(extra);
    let rendered = documents(&template(&args).unwrap());
    let groups = serde_json::json!({"groups": rendered[0]["spec"]["groups"]});
    serde_yaml::to_string(&groups).unwrap()
}

fn promtool(args: &[&str], dir: &Path) -> Result<String, String> {
    let promtool = binaries::find("promtool").unwrap_or_else(|e| panic!("{e}"));
    let output = Command::new(promtool)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// A directory with `rules.yaml` (the rules rendered with `extra`) and the chart's unit tests.
fn rules_and_tests(label: &str, extra: &[&str]) -> PathBuf {
    let dir = scratch::new_dir(label).unwrap();
    std::fs::write(dir.join("rules.yaml"), rule_file(extra)).unwrap();
    std::fs::copy(
        chart_dir().join("tests/alerts.test.yaml"),
        dir.join("alerts.test.yaml"),
    )
    .unwrap();
    dir
}

#[test]
fn alerts_pass_promtool_check_and_their_unit_tests() {
    let dir = rules_and_tests("chart-alerts", &[]);
    let checked = promtool(&["check", "rules", "rules.yaml"], &dir)
        .unwrap_or_else(|e| panic!("promtool check rules:\n{e}"));
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yaml"], &dir)
        .unwrap_or_else(|e| panic!("promtool test rules:\n{e}"));
    assert!(tested.contains("SUCCESS"), "{tested}");

    // Every alert has a unit test, and the schema knows every alert (to disable it).
    let rules: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("rules.yaml")).unwrap()).unwrap();
    let names: BTreeSet<String> = rules["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, alert_names_in_schema());
    let tests: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("alerts.test.yaml")).unwrap())
            .unwrap();
    let tested_names: BTreeSet<String> = tests["tests"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().cloned().unwrap_or_default())
        .filter(|t| !t["exp_alerts"].as_array().is_none_or(Vec::is_empty))
        .map(|t| t["alertname"].as_str().unwrap().to_owned())
        .collect();
    let untested: Vec<_> = names.difference(&tested_names).collect();
    assert!(
        untested.is_empty(),
        "alerts without a firing unit test: {untested:?}"
    );

    // The unit tests hold the thresholds: with a backlog threshold the test series never reach,
    // the backlog test fails.
    let strict = rules_and_tests(
        "chart-alerts-threshold",
        &["--set", "monitoring.rules.consumerBacklog.messages=1000000"],
    );
    let failed = promtool(&["test", "rules", "alerts.test.yaml"], &strict)
        .expect_err("unit tests pass with a threshold of 1,000,000");
    assert!(failed.contains("CdrConsumerBacklogGrowing"), "{failed}");

    // A disabled alert leaves the rules.
    let fewer: Value = serde_yaml::from_str(&rule_file(&[
        "--set",
        "monitoring.rules.disabled={CdrWorkerNotReady}",
    ]))
    .unwrap();
    let rules = fewer["groups"][0]["rules"].as_array().unwrap();
    assert!(rules.iter().all(|r| r["alert"] != "CdrWorkerNotReady"));
    assert_eq!(
        rules
            .iter()
            .filter_map(|r| r["alert"].as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        names.len() - 1
    );
}
