//! The operator binary: flags, `/readyz`, `/healthz`, `/metrics`, and a clean exit on SIGTERM.

use std::time::Duration;

use nats_cdr_crds::JetStreamStream;
use nats_cdr_testsupport::{ports, shared_api_cluster, wait_for};

use crate::support::{Env, T, stream};

/// A plain HTTP GET on a loopback port, off the runtime's threads.
async fn http_get(port: u16, path: &'static str) -> Option<String> {
    tokio::task::spawn_blocking(move || nats_cdr_testsupport::nats::http_get(port, path))
        .await
        .unwrap()
}

fn status(response: &Option<String>) -> Option<u16> {
    response.as_ref()?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn binary_serves_health_and_metrics_and_stops_on_sigterm() {
    let e = Env::with_nats("op-binary").await;
    let cluster = shared_api_cluster().await.unwrap();
    let port = ports::free_port().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nats-cdr-operator"))
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .args([
            "--namespaces",
            &e.ns,
            "--metrics-addr",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--log-format", "text", "--resync-period", "2s"])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the operator binary");
    wait_for(T, "/readyz 200", || async move {
        status(&http_get(port, "/readyz").await) == Some(200)
    })
    .await
    .unwrap();
    assert_eq!(status(&http_get(port, "/healthz").await), Some(200));
    e.apply(stream("bin", "BIN")).await;
    e.wait_reason::<JetStreamStream>("bin", &["Created", "InSync"])
        .await;
    let metrics = http_get(port, "/metrics").await.unwrap();
    assert!(
        metrics.contains("nats_cdr_operator_reconciles_total{kind=\"JetStreamStream\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nats_cdr_operator_nats_connected{cluster="),
        "{metrics}"
    );

    let pid = child.id().expect("running").to_string();
    let kill = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(kill.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("the operator stops within 20 s of SIGTERM")
        .unwrap();
    assert!(exit.success(), "exit status {exit}");
}
