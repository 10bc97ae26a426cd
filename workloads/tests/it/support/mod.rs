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
