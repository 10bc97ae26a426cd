//! The data path of the embedded default (`nats-cdr-local up`): a real nats-server and
//! PostgreSQL, the operator installed by its Helm chart and running in the cluster (reconciling an
//! external `NatsCluster` at that nats-server, the CDR stream and the workers' consumer), then
//! kam-cdr-bridge tailing a sample acc_json file and cdr-worker writing the CDRs into PostgreSQL.
//! Sample calls keep being appended so CDRs keep flowing. (Bridge and worker run as host
//! processes until the CdrPipeline controller deploys them as pods.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::discovery::ApiResource;
use nix::sys::signal::Signal;

use crate::k8s::wait_deployment_available;
use crate::kube_cluster::wait_for;
use crate::nats::NatsOptions;
use crate::ports::free_port;
use crate::process::ServerProcess;
use crate::{NatsServer, Postgres, apply_yaml, repo_root, tools};

/// Name of the NatsCluster that points at the demo's nats-server.
pub const NATS_CLUSTER: &str = "local-nats";
/// Database the worker writes to.
pub const DATABASE: &str = "cdr";

/// Namespace and release name of the operator's Helm release.
pub const OPERATOR_NAMESPACE: &str = "nats-cdr-system";
pub const OPERATOR_RELEASE: &str = "nats-cdr";

/// Everything the data path runs; stops on drop (processes first, then the servers).
pub struct DataPath {
    pub bridge: ServerProcess,
    pub worker: ServerProcess,
    pub nats: NatsServer,
    pub postgres: Postgres,
    pub acc_file: PathBuf,
}

/// Path of a binary built next to the running one (every workspace binary lands in the same
/// target directory); `cargo build --workspace --bins` builds them.
fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .map(|dir| dir.join(name))
        .ok_or_else(|| anyhow::anyhow!("no directory for {}", exe.display()))?;
    anyhow::ensure!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` (scripts/demo.sh does)",
        path.display()
    );
    Ok(path)
}

/// Installs the operator with its Helm chart (the image of scripts/images.sh, two replicas with
/// leader election) and waits until it is available.
pub async fn install_operator(client: &Client, kubeconfig: &Path) -> anyhow::Result<()> {
    let chart = repo_root().join("charts").join("nats-cdr");
    tools::run(
        "helm",
        kubeconfig,
        &[
            "upgrade",
            "--install",
            OPERATOR_RELEASE,
            &chart.display().to_string(),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--create-namespace",
            "--set",
            "logFormat=text",
            "--set",
            "resyncPeriod=1m",
            "--set",
            "statusRefresh=10s",
            "--wait",
            "--timeout",
            "5m",
        ],
    )?;
    wait_deployment_available(
        client,
        OPERATOR_NAMESPACE,
        &format!("{OPERATOR_RELEASE}-operator"),
        2,
        Duration::from_secs(180),
    )
    .await?;
    Ok(())
}

/// Starts the data path and waits until the first sample CDRs are in PostgreSQL. nats-server
/// listens on `nats_listen`, an address the operator's pods reach.
pub async fn start(
    client: &Client,
    namespace: &str,
    state_dir: &Path,
    nats_listen: std::net::Ipv4Addr,
) -> anyhow::Result<DataPath> {
    let logs = state_dir.join("logs");
    std::fs::create_dir_all(&logs)?;
    let nats = NatsServer::start_with(NatsOptions {
        listen: nats_listen,
        ..Default::default()
    })?;
    let postgres = Postgres::start()?;
    postgres.create_database(DATABASE)?;
    println!(
        "nats-server at {}, PostgreSQL at {}",
        nats.url(),
        postgres.url_for(DATABASE)
    );

    apply_yaml(client, &jetstream_objects(&nats.url()), namespace).await?;
    wait_ready(client, namespace, "JetStreamConsumer", "cdr-worker").await?;
    println!("operator: stream AKIRA_CDR and consumer cdr-worker are Ready");

    let acc_dir = state_dir.join("acc");
    std::fs::create_dir_all(&acc_dir)?;
    let acc_file = acc_dir.join("cdr.jsonl");
    std::fs::write(&acc_file, sample_lines(0, 20))?;

    let mut bridge_cmd = Command::new(sibling_binary("kam-cdr-bridge")?);
    bridge_cmd
        .arg("--file")
        .arg(&acc_file)
        .arg("--checkpoint")
        .arg(state_dir.join("bridge-checkpoint.json"))
        .args(["--nats-url", &nats.url(), "--node-name", "sip-demo-01"])
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port()?)])
        .args(["--log-format", "text"]);
    let bridge = ServerProcess::start(
        "kam-cdr-bridge",
        bridge_cmd,
        &logs.join("bridge.log"),
        Signal::SIGTERM,
    )?;

    let mut worker_cmd = Command::new(sibling_binary("cdr-worker")?);
    worker_cmd
        .args(["--nats-url", &nats.url(), "--expect-consumer"])
        .env("DATABASE_URL", postgres.url_for(DATABASE))
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port()?)])
        .args(["--log-format", "text"]);
    let worker = ServerProcess::start(
        "cdr-worker",
        worker_cmd,
        &logs.join("worker.log"),
        Signal::SIGTERM,
    )?;

    let data_path = DataPath {
        bridge,
        worker,
        nats,
        postgres,
        acc_file,
    };
    wait_for(Duration::from_secs(90), "sample CDRs in PostgreSQL", || {
        let count = data_path.cdr_count();
        async move { count >= 20 }
    })
    .await?;
    Ok(data_path)
}

impl DataPath {
    /// Rows in the `cdr` table (0 while the table does not exist yet).
    pub fn cdr_count(&self) -> u64 {
        self.postgres
            .psql(DATABASE, "SELECT count(*) FROM cdr")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    /// Appends one more sample call (its INVITE and BYE lines) to the acc file.
    pub fn append_call(&self, call: u64) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.acc_file)?;
        file.write_all(sample_lines(call, 1).as_bytes())
    }
}

async fn wait_ready(
    client: &Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> anyhow::Result<()> {
    let resource = ApiResource {
        group: nats_cdr_crds::GROUP.into(),
        version: nats_cdr_crds::VERSION.into(),
        api_version: format!("{}/{}", nats_cdr_crds::GROUP, nats_cdr_crds::VERSION),
        kind: kind.into(),
        plural: format!("{}s", kind.to_lowercase()),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    wait_for(
        Duration::from_secs(90),
        &format!("{kind}/{name} Ready"),
        || {
            let api = api.clone();
            async move {
                api.get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|o| o.data["status"]["conditions"].as_array().cloned())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            }
        },
    )
    .await?;
    Ok(())
}

/// The NatsCluster (external, at the demo's nats-server), the CDR stream and the worker consumer.
fn jetstream_objects(nats_url: &str) -> String {
    format!(
        r#"apiVersion: nats-cdr.dev/v1alpha1
kind: NatsCluster
metadata:
  name: {NATS_CLUSTER}
spec:
  external:
    url: {nats_url}
---
apiVersion: nats-cdr.dev/v1alpha1
kind: JetStreamStream
metadata:
  name: akira-cdr-local
spec:
  clusterRef: {{name: {NATS_CLUSTER}}}
  name: AKIRA_CDR
  subjects: ["cdr.>"]
  maxAge: 7d
  maxBytes: 1GiB
  duplicateWindow: 2m
  deletionPolicy: Delete
---
apiVersion: nats-cdr.dev/v1alpha1
kind: JetStreamConsumer
metadata:
  name: cdr-worker
spec:
  clusterRef: {{name: {NATS_CLUSTER}}}
  streamName: AKIRA_CDR
  durableName: cdr-worker
  filterSubject: cdr.raw
  ackWait: 30s
  # Unlimited on the server: cdr-worker enforces its own --max-deliver and dead-letters, so a CDR
  # whose worker dies on the last delivery is never stranded.
  maxDeliver: -1
  maxAckPending: 2000
"#
    )
}

/// acc_json lines of `count` sample calls starting at number `first`: answered calls (INVITE 200
/// and BYE), busy (486), cancelled (487), some behind a syslog prefix, as Kamailio writes them.
pub fn sample_lines(first: u64, count: u64) -> String {
    let base = 1_763_800_000u64;
    let mut out = String::new();
    for call in first..first + count {
        let t = base + call * 7;
        let call_id = format!("demo-{call}@sip-demo-01");
        let users = format!(
            r#""src_user":"10{:02}","dst_user":"20{:02}""#,
            call % 100,
            (call * 7) % 100
        );
        let prefix = if call % 3 == 0 {
            "Nov 22 10:00:00 sip-demo-01 json_acc[812]: "
        } else {
            ""
        };
        match call % 5 {
            3 => out.push_str(&format!(
                "{prefix}{{\"method\":\"INVITE\",\"from_tag\":\"f{call}\",\"to_tag\":\"\",\"callid\":\"{call_id}\",\"sip_code\":\"486\",\"sip_reason\":\"Busy Here\",\"time\":{t},{users}}}\n"
            )),
            4 => out.push_str(&format!(
                "{prefix}{{\"method\":\"INVITE\",\"from_tag\":\"f{call}\",\"to_tag\":\"\",\"callid\":\"{call_id}\",\"sip_code\":\"487\",\"sip_reason\":\"Request Terminated\",\"time\":{t},{users}}}\n"
            )),
            _ => {
                out.push_str(&format!(
                    "{prefix}{{\"method\":\"INVITE\",\"from_tag\":\"f{call}\",\"to_tag\":\"t{call}\",\"callid\":\"{call_id}\",\"sip_code\":\"200\",\"sip_reason\":\"OK\",\"time\":{t},{users}}}\n"
                ));
                out.push_str(&format!(
                    "{{\"method\":\"BYE\",\"from_tag\":\"f{call}\",\"to_tag\":\"t{call}\",\"callid\":\"{call_id}\",\"sip_code\":\"200\",\"sip_reason\":\"OK\",\"time\":{},{users}}}\n",
                    t + 30 + call % 90
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_lines_are_acc_json_with_every_disposition() {
        let text = sample_lines(0, 10);
        assert_eq!(
            text.lines().count(),
            16,
            "6 answered calls x 2 + 4 failed x 1"
        );
        assert!(text.contains("\"sip_code\":\"486\"") && text.contains("\"sip_code\":\"487\""));
        assert!(text.lines().any(|l| l.starts_with("Nov 22")));
        for line in text.lines() {
            let json = &line[line.find('{').unwrap()..];
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            assert!(
                value["callid"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("demo-"))
            );
        }
    }
}
