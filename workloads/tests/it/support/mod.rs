//! Fixtures of every workload integration test, in one place (the pipeline and bridge benches
//! include this module by path too):
//! - [`acc`]: acc_json lines as Kamailio writes them, and the CDRs the contract merges them into;
//! - [`workload`]: a realistic mixed log with malformed lines, and what must come out of it;
//! - [`nats`]: the stream as the operator creates it, publishing like the bridge, reading back;
//! - [`db`]: PostgreSQL counts, stored CDRs, stalled commits;
//! - [`proc`]: the two binaries as child processes that never outlive a test;
//! - [`pipeline`]: the whole data path as processes, with its end-to-end verification.
//!
//! Ports and plain HTTP come from `nats_cdr_testsupport` (`ports::free_port`, `nats::http_get`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod acc;
pub mod db;
pub mod nats;
pub mod pipeline;
pub mod proc;
pub mod workload;

use std::time::{Duration, Instant};

pub use nats_cdr_workloads::rng::Rng;

/// The SIP node the bridge runs as in the tests (part of every msg id).
pub const NODE: &str = "sip-01";

/// `nats-server --version` of the binary the tests and benches run.
pub fn nats_server_version() -> String {
    let binary = nats_cdr_testsupport::binaries::find("nats-server").unwrap();
    std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The 1, 5 and 15 minute load averages (benches print them: the machine is shared).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// `GET path` on 127.0.0.1:`port`: the status code and the body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let response = nats_cdr_testsupport::nats::http_get(port, path)?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

/// The value of the first metric line starting with `name` (labels included, as in
/// `kam_cdr_bridge_batches_refused_total{reason="duplicate"}`) on /metrics of `port`.
pub fn scrape(port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics")?;
    body.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Polls `check` every 100 ms until it is true; panics after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
