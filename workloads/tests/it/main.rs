//! The workloads' integration tests, one binary with a module per topic, against real servers
//! (nats-server, PostgreSQL) started per test by `nats_cdr_testsupport`:
//! - [`bridge`]: kam-cdr-bridge alone, in process and as a binary;
//! - [`worker`]: cdr-worker in process, as a binary under faults, and its SQL merge;
//! - [`pipeline`]: the whole data path as processes, under faults.
//!
//! The fixtures they share are in [`support`].
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod bridge;
mod pipeline;
mod support;
mod worker;
