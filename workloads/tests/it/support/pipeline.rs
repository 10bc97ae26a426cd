//! The whole data path as separate processes, for the pipeline tests and the pipeline bench:
//! lines appended to a file -> `kam-cdr-bridge` -> nats-server (stream `AKIRA_CDR`) ->
//! `cdr-worker` -> PostgreSQL.
//!
//! [`Pipeline`] starts the servers, creates the stream as the operator would, and starts, kills
//! and restarts the bridge and workers as child processes logging to its temp dir (kept, and the
//! log tails printed, when a test fails). [`Pipeline::verify`] checks that the table and the
//! dead-letter subjects hold exactly what a [`Workload`] says they must.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use nats_cdr_testsupport::{NatsOptions, NatsServer, Postgres};

use super::db::{assert_same, count, lock_table, stored_cdrs};
use super::nats::{backlog, create_stream_with, dead_letters, deliveries, message_count};
use super::proc::Proc;
use super::wait_until;
use super::workload::Workload;

/// nats-server, PostgreSQL, the stream, and the bridge and workers as child processes.
pub struct Pipeline {
    pub nats: NatsServer,
    pub pg: Postgres,
    pub js: jetstream::Context,
    pub dir: Option<tempfile::TempDir>,
    pub file: PathBuf,
    pub bridge: Option<Proc>,
    pub workers: Vec<Proc>,
    spawned: usize,
}

/// Worker settings every pipeline worker gets (before the test's own): short waits so faults
/// resolve quickly, and a delivery limit well above the number of kills a test makes.
pub const WORKER_ARGS: [&str; 10] = [
    "--batch-size",
    "100",
    "--ack-wait",
    "2s",
    "--max-deliver",
    "20",
    "--fetch-expiry",
    "500ms",
    "--max-backoff",
    "1s",
];

/// Bridge settings of the tests: short polls so faults resolve quickly.
pub const BRIDGE_ARGS: [&str; 6] = [
    "--poll-interval",
    "50ms",
    "--checkpoint-interval",
    "200ms",
    "--rotate-grace",
    "500ms",
];

impl Pipeline {
    /// Starts nats-server (`sync_interval: always`) and PostgreSQL and creates the stream as the
    /// operator would, allowing atomic batches. Starts neither bridge nor worker.
    pub async fn start() -> Self {
        Self::start_with(NatsOptions::default(), true).await
    }

    /// [`start`](Self::start) with these server options, the stream allowing atomic batches or
    /// not.
    pub async fn start_with(options: NatsOptions, allow_atomic: bool) -> Self {
        let options_nodes = options.nodes.max(1);
        let nats = NatsServer::start_with(options).unwrap();
        let pg = Postgres::start().unwrap();
        let js = create_stream_with(&nats.urls(), allow_atomic, options_nodes).await;
        let dir = tempfile::Builder::new()
            .prefix("pipeline-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("log")).unwrap();
        let file = dir.path().join("acc").join("cdr.jsonl");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        Self {
            nats,
            pg,
            js,
            file,
            dir: Some(dir),
            bridge: None,
            workers: Vec::new(),
            spawned: 0,
        }
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn log_path(&mut self, name: &str) -> PathBuf {
        self.spawned += 1;
        self.dir()
            .join("log")
            .join(format!("{:02}-{name}.log", self.spawned))
    }

    /// Starts `kam-cdr-bridge` on [`Self::file`] (its checkpoint survives restarts), with
    /// [`BRIDGE_ARGS`].
    pub fn start_bridge(&mut self) {
        self.start_bridge_with(&BRIDGE_ARGS);
    }

    /// Starts `kam-cdr-bridge` on [`Self::file`] with `extra` (nothing extra: its defaults).
    pub fn start_bridge_with(&mut self, extra: &[&str]) {
        assert!(self.bridge.is_none(), "a bridge is running");
        let log = self.log_path("bridge");
        let checkpoint = self.dir().join("checkpoint.json");
        self.bridge = Some(Proc::bridge(
            &self.nats.urls(),
            &self.file,
            &checkpoint,
            extra,
            log,
        ));
    }

    /// Starts a `cdr-worker` with `extra` and the [`WORKER_ARGS`] it does not set; returns its
    /// index.
    pub fn start_worker(&mut self, extra: &[&str]) -> usize {
        let log = self.log_path("worker");
        let args: Vec<&str> = WORKER_ARGS
            .chunks(2)
            .filter(|pair| !extra.contains(&pair[0]))
            .flatten()
            .chain(extra)
            .copied()
            .collect();
        self.workers
            .push(Proc::worker(&self.nats.urls(), &self.pg.url(), &args, log));
        self.workers.len() - 1
    }

    /// Kills worker `i` with SIGKILL.
    pub fn kill_worker(&mut self, i: usize) {
        self.workers[i].kill_9();
    }

    /// Stops the bridge and every live worker with SIGTERM; each must exit 0.
    pub fn stop_all(&mut self) {
        if let Some(mut bridge) = self.bridge.take() {
            assert_eq!(bridge.terminate(), Some(0), "bridge exit code");
        }
        for worker in &mut self.workers {
            if worker.is_running() {
                assert_eq!(worker.terminate(), Some(0), "worker exit code");
            }
        }
    }

    /// Number of messages in the stream (raw lines and dead letters).
    pub async fn stream_messages(&self) -> u64 {
        message_count(&self.js).await
    }

    /// Waits until the bridge has published `lines` lines (raw or dead-lettered): nothing is left
    /// unread in the file.
    pub async fn wait_published(&self, lines: usize, timeout: Duration) {
        wait_until(timeout, "the bridge published every line", || async {
            self.stream_messages().await >= lines as u64
        })
        .await;
    }

    /// Asserts the consumer delivered some message more than once (the fault was exercised).
    pub async fn assert_redelivered(&self) {
        let records = count(&self.pg.url(), "SELECT count(*) FROM cdr_record").await;
        let delivered = deliveries(&self.js).await;
        let records = records.unwrap_or_default() as u64;
        assert!(
            delivered > records,
            "{delivered} deliveries of {records} records: no redelivery, the fault was not exercised"
        );
        eprintln!("pipeline: {} redeliveries", delivered - records);
    }

    /// Blocks every write to `table` for `how_long` (commits stall, as on an overloaded
    /// database); the handle finishes when the lock is released.
    pub fn stall(&self, table: &str, how_long: Duration) -> std::thread::JoinHandle<()> {
        lock_table(&self.pg.url(), table, how_long)
    }

    /// Waits until the table, the consumer and the dead letters have settled on `workload`,
    /// then asserts: every valid call stored exactly once with the contract's merged values,
    /// each valid line stored once as a record, every bad line dead-lettered once under
    /// `cdr.dlq.<its reason>` with its original bytes, and nothing else dead-lettered.
    pub async fn verify(&self, workload: &Workload, timeout: Duration) {
        let want = workload.expected_cdrs();
        let url = self.pg.url();
        let start = Instant::now();
        wait_until(
            timeout,
            "every call stored and the consumer drained",
            || {
                let url = url.clone();
                let calls = want.len() as i64;
                async move {
                    count(&url, "SELECT count(*) FROM cdr").await == Some(calls)
                        && backlog(&self.js).await == Some((0, 0))
                }
            },
        )
        .await;
        eprintln!(
            "pipeline: {} calls from {} valid lines settled {:?} after the last line; {} deliveries",
            want.len(),
            workload.valid_ids().len(),
            start.elapsed(),
            deliveries(&self.js).await
        );
        let stored = stored_cdrs(&url).await;
        assert_same(&stored, &want);
        let records = count(&url, "SELECT count(*) FROM cdr_record").await;
        assert_eq!(
            records,
            Some(workload.valid_ids().len() as i64),
            "each valid line stored once as a record"
        );

        let mut want_letters: HashMap<(String, Vec<u8>), usize> = HashMap::new();
        for (reason, line) in workload.bad_lines() {
            *want_letters
                .entry((format!("cdr.dlq.{reason}"), line))
                .or_default() += 1;
        }
        let mut letters: HashMap<(String, Vec<u8>), usize> = HashMap::new();
        for letter in dead_letters(&self.js).await {
            *letters.entry((letter.subject, letter.payload)).or_default() += 1;
        }
        for (letter, n) in &want_letters {
            assert_eq!(
                letters.get(letter),
                Some(n),
                "dead letter {} {:?}",
                letter.0,
                String::from_utf8_lossy(&letter.1)
            );
        }
        let unexpected: Vec<_> = letters
            .keys()
            .filter(|k| !want_letters.contains_key(*k))
            .map(|(s, p)| (s.clone(), String::from_utf8_lossy(p).into_owned()))
            .collect();
        assert!(
            unexpected.is_empty(),
            "unexpected dead letters: {unexpected:?}"
        );
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.keep();
            eprintln!("pipeline failed; logs kept in {}", path.display());
            for proc in self.bridge.iter().chain(&self.workers) {
                proc.print_log_tail(15);
            }
        }
    }
}

/// Appends `lines` (each followed by `\n`) to `path` in one write, as a logger would.
pub fn append(path: &Path, lines: &[impl AsRef<[u8]>]) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut buffer = Vec::new();
    for line in lines {
        buffer.extend_from_slice(line.as_ref());
        buffer.push(b'\n');
    }
    file.write_all(&buffer).unwrap();
}

/// Appends `lines` to `path` from a thread, `chunk` lines every `pause`.
pub fn append_paced(
    path: &Path,
    lines: Vec<Vec<u8>>,
    chunk: usize,
    pause: Duration,
) -> std::thread::JoinHandle<()> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        for part in lines.chunks(chunk) {
            append(&path, part);
            std::thread::sleep(pause);
        }
    })
}
