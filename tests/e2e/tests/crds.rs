//! The CRDs on a real kube-apiserver: they install, the examples are accepted, and invalid objects
//! are refused at apply time with a message naming the offending field.
//!
//! Runs against the local control plane, or the cluster named by `KUBECONFIG` (kind included).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use nats_cdr_testsupport::manifests::ApplyError;
use nats_cdr_testsupport::{apply_yaml, install_crds, repo_root, shared_api_cluster};

async fn namespace_with_crds(prefix: &str) -> (kube::Client, String) {
    let cluster = shared_api_cluster()
        .await
        .expect("start or reach the test cluster");
    let client = cluster.client().await.expect("client");
    install_crds(&client).await.expect("install CRDs");
    let namespace = cluster.new_namespace(prefix).await.expect("namespace");
    (client, namespace)
}

fn refusal_message(result: Result<Vec<kube::api::DynamicObject>, ApplyError>) -> String {
    match result {
        Ok(_) => String::new(),
        Err(ApplyError::Apply {
            source: kube::Error::Api(status),
            ..
        }) => status.message.clone(),
        Err(other) => {
            panic!("expected the apiserver to refuse the object, got another error: {other}")
        }
    }
}

#[tokio::test]
async fn crds_install_and_are_served() {
    let (client, namespace) = namespace_with_crds("crds").await;
    let discovery = kube::Discovery::new(client).run().await.expect("discovery");
    let group = discovery
        .groups()
        .find(|g| g.name() == nats_cdr_crds::GROUP)
        .expect("group nats-cdr.dev served");
    let kinds: Vec<String> = group
        .versioned_resources(nats_cdr_crds::VERSION)
        .into_iter()
        .map(|(r, _)| r.kind)
        .collect();
    for kind in [
        "NatsCluster",
        "JetStreamStream",
        "JetStreamConsumer",
        "CdrPipeline",
    ] {
        assert!(
            kinds.contains(&kind.to_owned()),
            "{kind} not served; served: {kinds:?}"
        );
    }
    assert!(!namespace.is_empty());
}

#[tokio::test]
async fn every_example_is_accepted_and_defaults_are_applied() {
    let (client, namespace) = namespace_with_crds("examples").await;
    let dir = repo_root().join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "expected the pilot, GA and external examples, found {files:?}"
    );
    let mut applied = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("read example");
        let objects = apply_yaml(&client, &text, &namespace)
            .await
            .unwrap_or_else(|e| panic!("{} was refused: {e}", file.display()));
        applied += objects.len();
        for object in objects {
            let kind = object
                .types
                .as_ref()
                .map(|t| t.kind.clone())
                .unwrap_or_default();
            if kind == "CdrPipeline" {
                // Defaults from the schema are filled in by the apiserver.
                let spec = &object.data["spec"];
                assert_eq!(spec["bridge"]["stateDir"], "/var/lib/kam-cdr-bridge");
                assert_eq!(spec["stream"]["deletionPolicy"], "Retain");
            }
            if kind == "JetStreamStream" {
                assert_eq!(
                    object.data["spec"]["storage"], "File",
                    "file storage is the default"
                );
                assert_eq!(object.data["spec"]["deletionPolicy"], "Retain");
            }
            if kind == "JetStreamConsumer" {
                assert_eq!(object.data["spec"]["ackPolicy"], "Explicit");
            }
        }
    }
    assert!(applied >= 8, "applied only {applied} objects");
}

/// One invalid object: a valid base document with one thing wrong, and the field path the
/// apiserver's message must name.
struct Invalid {
    case: &'static str,
    yaml: String,
    names_field: &'static str,
}

const CLUSTER: &str =
    "apiVersion: nats-cdr.dev/v1alpha1\nkind: NatsCluster\nmetadata:\n  name: bad\nspec:\n";
const STREAM: &str = "apiVersion: nats-cdr.dev/v1alpha1\nkind: JetStreamStream\nmetadata:\n  name: bad\nspec:\n  clusterRef: {name: c}\n";
const CONSUMER: &str = "apiVersion: nats-cdr.dev/v1alpha1\nkind: JetStreamConsumer\nmetadata:\n  name: bad\nspec:\n  clusterRef: {name: c}\n  streamName: S\n";
const PIPELINE: &str = "apiVersion: nats-cdr.dev/v1alpha1\nkind: CdrPipeline\nmetadata:\n  name: bad\nspec:\n  clusterRef: {name: c}\n";
const PIPELINE_WORKLOADS: &str =
    "  bridge: {image: b}\n  worker: {image: w, databaseSecretRef: {name: db, key: url}}\n";

fn invalid_objects() -> Vec<Invalid> {
    let case = |case, yaml: String, names_field| Invalid {
        case,
        yaml,
        names_field,
    };
    vec![
        case(
            "cluster both managed and external",
            format!("{CLUSTER}  managed: {{replicas: 1}}\n  external: {{url: 'nats://n:4222'}}\n"),
            "spec.managed and spec.external",
        ),
        case(
            "cluster neither managed nor external",
            format!("{CLUSTER}  {{}}\n").replace("spec:\n  {}", "spec: {}"),
            "spec.managed and spec.external",
        ),
        case(
            "cluster with 2 replicas",
            format!("{CLUSTER}  managed: {{replicas: 2}}\n"),
            "spec.managed.replicas",
        ),
        case(
            "external cluster without url",
            format!("{CLUSTER}  external: {{}}\n"),
            "spec.external.url",
        ),
        case(
            "external cluster with an http url",
            format!("{CLUSTER}  external: {{url: 'http://nats:4222'}}\n"),
            "spec.external.url",
        ),
        case(
            "cluster with unknown credential type",
            format!(
                "{CLUSTER}  external: {{url: 'nats://n:4222', credentials: {{secretName: s, type: Password}}}}\n"
            ),
            "spec.external.credentials.type",
        ),
        case(
            "cluster storage size in words",
            format!("{CLUSTER}  managed: {{replicas: 1, jetstream: {{storageSize: ten gigs}}}}\n"),
            "spec.managed.jetstream.storageSize",
        ),
        case(
            "cluster sync interval not a duration",
            format!("{CLUSTER}  managed: {{syncInterval: sometimes}}\n"),
            "spec.managed.syncInterval",
        ),
        case("stream without name", STREAM.to_owned(), "spec.name"),
        case(
            "stream without clusterRef",
            STREAM.replace("  clusterRef: {name: c}\n", "  name: S\n"),
            "spec.clusterRef",
        ),
        case(
            "stream name with a dot",
            format!("{STREAM}  name: cdr.raw\n"),
            "spec.name",
        ),
        case(
            "stream with 7 replicas",
            format!("{STREAM}  name: S\n  replicas: 7\n"),
            "spec.replicas",
        ),
        case(
            "stream with 0 replicas",
            format!("{STREAM}  name: S\n  replicas: 0\n"),
            "spec.replicas",
        ),
        case(
            "stream on disk storage",
            format!("{STREAM}  name: S\n  storage: Disk\n"),
            "spec.storage",
        ),
        case(
            "stream kept forever",
            format!("{STREAM}  name: S\n  retention: Forever\n"),
            "spec.retention",
        ),
        case(
            "stream max age in words",
            format!("{STREAM}  name: S\n  maxAge: 1 day\n"),
            "spec.maxAge",
        ),
        case(
            "stream max bytes with a space",
            format!("{STREAM}  name: S\n  maxBytes: 10 GB\n"),
            "spec.maxBytes",
        ),
        case(
            "stream subject with empty token",
            format!("{STREAM}  name: S\n  subjects: ['cdr..raw']\n"),
            "spec.subjects[0]",
        ),
        case(
            "mirror with subjects",
            format!("{STREAM}  name: S\n  subjects: [a]\n  mirror: {{name: O}}\n"),
            "spec.subjects",
        ),
        case(
            "mirror with sources",
            format!("{STREAM}  name: S\n  mirror: {{name: O}}\n  sources: [{{name: P}}]\n"),
            "spec.sources",
        ),
        case(
            "discard new per subject without discard New",
            format!("{STREAM}  name: S\n  discardNewPerSubject: true\n  maxMsgsPerSubject: 5\n"),
            "spec.discardNewPerSubject",
        ),
        case(
            "stream deletion policy Destroy",
            format!("{STREAM}  name: S\n  deletionPolicy: Destroy\n"),
            "spec.deletionPolicy",
        ),
        case(
            "consumer without durable name",
            CONSUMER.to_owned(),
            "spec.durableName",
        ),
        case(
            "consumer ack policy Sometimes",
            format!("{CONSUMER}  durableName: d\n  ackPolicy: Sometimes\n"),
            "spec.ackPolicy",
        ),
        case(
            "consumer by start sequence without it",
            format!("{CONSUMER}  durableName: d\n  deliverPolicy: ByStartSequence\n"),
            "spec.optStartSeq",
        ),
        case(
            "consumer start sequence without its policy",
            format!("{CONSUMER}  durableName: d\n  optStartSeq: 5\n"),
            "spec.optStartSeq",
        ),
        case(
            "consumer filterSubject and filterSubjects",
            format!("{CONSUMER}  durableName: d\n  filterSubject: a\n  filterSubjects: [b]\n"),
            "spec.filterSubjects",
        ),
        case(
            "consumer backoff longer than maxDeliver",
            format!("{CONSUMER}  durableName: d\n  maxDeliver: 2\n  backoff: [1s, 2s, 3s]\n"),
            "spec.backoff",
        ),
        case(
            "consumer maxDeliver 0",
            format!("{CONSUMER}  durableName: d\n  maxDeliver: 0\n"),
            "spec.maxDeliver",
        ),
        case(
            "consumer backoff step in words",
            format!("{CONSUMER}  durableName: d\n  backoff: [soon]\n"),
            "spec.backoff[0]",
        ),
        case(
            "pipeline without worker",
            format!("{PIPELINE}  bridge: {{image: b}}\n"),
            "spec.worker",
        ),
        case(
            "pipeline batch size 0",
            format!("{PIPELINE}{PIPELINE_WORKLOADS}")
                .replace("key: url}}", "key: url}, batchSize: 0}"),
            "spec.worker.batchSize",
        ),
        case(
            "pipeline relative acc file",
            format!("{PIPELINE}{PIPELINE_WORKLOADS}")
                .replace("{image: b}", "{image: b, accFilePath: cdr.jsonl}"),
            "spec.bridge.accFilePath",
        ),
        case(
            "pipeline maxAckPending below batch x concurrency",
            format!("{PIPELINE}{PIPELINE_WORKLOADS}  consumer: {{maxAckPending: 10}}\n"),
            "spec.consumer.maxAckPending",
        ),
        case(
            "pipeline stream with 6 replicas",
            format!("{PIPELINE}{PIPELINE_WORKLOADS}  stream: {{replicas: 6}}\n"),
            "spec.stream.replicas",
        ),
    ]
}

#[tokio::test]
async fn invalid_objects_are_refused_naming_the_field() {
    let (client, namespace) = namespace_with_crds("invalid").await;
    let cases = invalid_objects();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for case in &cases {
        let message = refusal_message(apply_yaml(&client, &case.yaml, &namespace).await);
        if message.is_empty() {
            failures.push(format!("{}: accepted, but must be refused", case.case));
        } else if !message.contains(case.names_field) {
            failures.push(format!(
                "{}: message does not name {}: {message}",
                case.case, case.names_field
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Immutable fields and forbidden transitions: a valid object, then an update that must be refused.
#[tokio::test]
async fn immutable_fields_and_scale_down_are_refused_on_update() {
    let (client, namespace) = namespace_with_crds("immutable").await;
    let updates = [
        (
            format!("{STREAM}  name: S\n  storage: File\n"),
            ("name: S", "name: T"),
            "spec.name",
        ),
        (
            format!("{STREAM}  name: S\n  storage: File\n"),
            ("storage: File", "storage: Memory"),
            "spec.storage",
        ),
        (
            format!("{CONSUMER}  durableName: d\n"),
            ("durableName: d", "durableName: e"),
            "spec.durableName",
        ),
        (
            format!("{CLUSTER}  managed: {{replicas: 3}}\n"),
            ("replicas: 3", "replicas: 1"),
            "spec.managed.replicas",
        ),
        (
            format!("{PIPELINE}{PIPELINE_WORKLOADS}  stream: {{name: CDR}}\n"),
            ("name: CDR", "name: CDR2"),
            "spec.stream.name",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (valid, (from, to), field)) in updates.iter().enumerate() {
        let name = format!("update-{i}");
        let valid = valid.replace("name: bad", &format!("name: {name}"));
        apply_yaml(&client, &valid, &namespace)
            .await
            .unwrap_or_else(|e| panic!("base object {i} refused: {e}"));
        let changed = valid.replacen(from, to, 1);
        assert_ne!(changed, valid);
        let message = refusal_message(apply_yaml(&client, &changed, &namespace).await);
        if message.is_empty() {
            failures.push(format!("{field}: change {from:?} -> {to:?} accepted"));
        } else if !message.contains(field) {
            failures.push(format!("{field}: message does not name it: {message}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let kubectl =
        nats_cdr_testsupport::binaries::find("kubectl").expect("kubectl (bash scripts/setup.sh)");
    let output = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// What a person does: `kubectl apply -f crds/` (client-side apply, which stores the whole object
/// in an annotation and so has a size limit), `kubectl explain` shows the doc comments, and the
/// examples pass a server-side dry run; `kubectl get` prints the printer columns.
#[tokio::test]
async fn kubectl_apply_explain_and_get_work() {
    let cluster = shared_api_cluster().await.expect("cluster");
    let kubeconfig = cluster.kubeconfig_path();
    let namespace = cluster.new_namespace("kubectl").await.expect("namespace");
    let crds = repo_root().join("crds");
    let (ok, out) = kubectl(kubeconfig, &["apply", "-f", crds.to_str().unwrap()]);
    assert!(ok, "kubectl apply -f crds/ failed: {out}");
    let (ok, out) = kubectl(
        kubeconfig,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/jetstreamstreams.nats-cdr.dev",
            "crd/cdrpipelines.nats-cdr.dev",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        kubeconfig,
        &["explain", "jetstreamstream.spec.deletionPolicy"],
    );
    assert!(
        ok && out.contains("Retain") && out.contains("leaves the stream"),
        "explain: {out}"
    );
    let examples = repo_root().join("examples");
    let (ok, out) = kubectl(
        kubeconfig,
        &[
            "apply",
            "--dry-run=server",
            "-n",
            &namespace,
            "-f",
            examples.to_str().unwrap(),
        ],
    );
    assert!(ok, "examples refused on dry run: {out}");
    let (ok, out) = kubectl(
        kubeconfig,
        &[
            "apply",
            "-n",
            &namespace,
            "-f",
            examples.join("ga.yaml").to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = kubectl(kubeconfig, &["get", "jss", "-n", &namespace]);
    assert!(
        ok && out.contains("STREAM") && out.contains("AKIRA_CDR") && out.contains("REPLICAS"),
        "get: {out}"
    );
    let (ok, out) = kubectl(kubeconfig, &["get", "nats-cdr", "-n", &namespace]);
    assert!(
        ok && out.contains("nats-ga") && out.contains("cdr-worker-ga"),
        "category nats-cdr: {out}"
    );
}
