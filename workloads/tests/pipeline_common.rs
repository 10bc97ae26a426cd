//! The whole data path as separate processes, for the pipeline tests and the pipeline bench
//! (included with `#[path]`; also built as an empty test binary of its own):
//! lines appended to a file -> `kam-cdr-bridge` -> nats-server (stream `AKIRA_CDR`) ->
//! `cdr-worker` -> PostgreSQL.
//!
//! [`Pipeline`] starts the servers, creates the stream as the operator would, and starts, kills
//! and restarts the bridge and workers as child processes logging to its temp dir (kept, and the
//! log tails printed, when a test fails). [`Workload`] generates a realistic mix of acc_json lines
//! and computes, with the contract alone (`parse_line`, `msg_id`, `merge`), what must end up in
//! the `cdr` table and in the dead-letter subjects; [`Pipeline::verify`] checks exactly that.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use nats_cdr_testsupport::{NatsServer, Postgres};
use nats_cdr_workloads::contract::merge::{MergedCdr, merge};
use nats_cdr_workloads::contract::msg_id::msg_id;
use nats_cdr_workloads::contract::record::{AccRecord, parse_line};
use nats_cdr_workloads::contract::subjects::{
    DEAD_LETTER_WILDCARD, DEFAULT_STREAM_NAME, STREAM_SUBJECTS,
};
use serde_json::json;

/// The SIP node name the bridge runs as (part of every msg id).
pub const NODE: &str = "sip-01";

/// A child process that is killed (SIGKILL) when dropped, so a failing test leaves nothing behind.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(name: String, mut command: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Self { name, child, log }
    }

    /// SIGKILL, as a crash or the OOM killer would.
    pub fn kill_9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Peak resident set size (`VmHWM`) in KiB, while the process runs.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_9();
        }
    }
}

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
    "--ack-wait-ms",
    "2000",
    "--max-deliver",
    "20",
    "--fetch-expiry-ms",
    "500",
    "--max-backoff-ms",
    "1000",
];

/// Bridge settings of the tests: short polls so faults resolve quickly.
pub const BRIDGE_ARGS: [&str; 6] = [
    "--poll-interval-ms",
    "50",
    "--checkpoint-interval-ms",
    "200",
    "--rotate-grace-ms",
    "500",
];

impl Pipeline {
    /// Starts nats-server and PostgreSQL and creates the stream as the operator would: subjects
    /// `cdr.>`, file storage, 2 minutes duplicate window. Starts neither bridge nor worker.
    pub async fn start() -> Self {
        let nats = NatsServer::start().unwrap();
        let pg = Postgres::start().unwrap();
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        js.create_stream(jetstream::stream::Config {
            name: DEFAULT_STREAM_NAME.to_owned(),
            subjects: STREAM_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_kam-cdr-bridge"));
        command
            .arg("--file")
            .arg(&self.file)
            .arg("--checkpoint")
            .arg(self.dir().join("checkpoint.json"))
            .args(["--nats-url", &self.nats.url(), "--node-name", NODE])
            .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "text"])
            .args(extra)
            .env("RUST_LOG", "info");
        self.bridge = Some(Proc::spawn("kam-cdr-bridge".into(), command, log));
    }

    /// Starts a `cdr-worker` with `extra` and the [`WORKER_ARGS`] it does not set; returns its
    /// index.
    pub fn start_worker(&mut self, extra: &[&str]) -> usize {
        let log = self.log_path("worker");
        let mut command = Command::new(env!("CARGO_BIN_EXE_cdr-worker"));
        command
            .args(["--nats-url", &self.nats.url()])
            .args(["--metrics-addr", "127.0.0.1:0", "--log-format", "text"])
            .args(
                WORKER_ARGS
                    .chunks(2)
                    .filter(|pair| !extra.contains(&pair[0]))
                    .flatten(),
            )
            .args(extra)
            .env("DATABASE_URL", self.pg.url())
            .env("RUST_LOG", "info");
        self.workers
            .push(Proc::spawn("cdr-worker".into(), command, log));
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
            if matches!(worker.child.try_wait(), Ok(None)) {
                assert_eq!(worker.terminate(), Some(0), "worker exit code");
            }
        }
    }

    /// Number of messages in the stream (raw lines and dead letters).
    pub async fn stream_messages(&self) -> u64 {
        let mut stream = self.js.get_stream(DEFAULT_STREAM_NAME).await.unwrap();
        stream.info().await.unwrap().state.messages
    }

    /// Waits until the bridge has published `lines` lines (raw or dead-lettered): nothing is left
    /// unread in the file.
    pub async fn wait_published(&self, lines: usize, timeout: Duration) {
        wait_until(timeout, "the bridge published every line", || async {
            self.stream_messages().await >= lines as u64
        })
        .await;
    }

    /// The consumer's (pending, ack pending).
    pub async fn backlog(&self) -> Option<(u64, usize)> {
        let stream = self.js.get_stream(DEFAULT_STREAM_NAME).await.ok()?;
        let mut consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer("cdr-worker").await.ok()?;
        let info = consumer.info().await.ok()?;
        Some((info.num_pending, info.num_ack_pending))
    }

    /// Deliveries the consumer made so far, redeliveries included.
    pub async fn deliveries(&self) -> u64 {
        let stream = self.js.get_stream(DEFAULT_STREAM_NAME).await.unwrap();
        let mut consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer("cdr-worker").await.unwrap();
        consumer.info().await.unwrap().delivered.consumer_sequence
    }

    /// Asserts the consumer delivered some message more than once (the fault was exercised).
    pub async fn assert_redelivered(&self) {
        let (records, stream) = (
            count(&self.pg.url(), "SELECT count(*) FROM cdr_record").await,
            self.js.get_stream(DEFAULT_STREAM_NAME).await.unwrap(),
        );
        let mut consumer: jetstream::consumer::PullConsumer =
            stream.get_consumer("cdr-worker").await.unwrap();
        let delivered = consumer.info().await.unwrap().delivered.consumer_sequence;
        let records = records.unwrap_or_default() as u64;
        assert!(
            delivered > records,
            "{delivered} deliveries of {records} records: no redelivery, the fault was not exercised"
        );
        eprintln!("pipeline: {} redeliveries", delivered - records);
    }

    /// Blocks every write to `table` for `how_long` from a `psql` session (commits stall, as on
    /// an overloaded database); the handle finishes when the lock is released.
    pub fn stall(&self, table: &str, how_long: Duration) -> std::thread::JoinHandle<()> {
        let url = self.pg.url();
        let sql = format!(
            "BEGIN; LOCK TABLE {table} IN EXCLUSIVE MODE; SELECT pg_sleep({}); COMMIT;",
            how_long.as_secs_f64()
        );
        std::thread::spawn(move || {
            let output = Command::new("psql")
                .args(["-X", "-q", "-d", &url, "-c", &sql])
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}",
                String::from_utf8_lossy(&output.stderr)
            );
        })
    }

    /// Every dead letter in the stream: (subject, payload), in stream order.
    pub async fn dead_letters(&self) -> Vec<(String, Vec<u8>)> {
        let stream = self.js.get_stream(DEFAULT_STREAM_NAME).await.unwrap();
        let mut consumer = stream
            .create_consumer(jetstream::consumer::pull::Config {
                filter_subject: DEAD_LETTER_WILDCARD.to_owned(),
                ack_policy: jetstream::consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .unwrap();
        let total = consumer.info().await.unwrap().num_pending as usize;
        let mut out = Vec::with_capacity(total);
        while out.len() < total {
            let mut batch = consumer
                .batch()
                .max_messages(total - out.len())
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .unwrap();
            while let Some(message) = batch.next().await {
                let message = message.unwrap();
                out.push((message.subject.to_string(), message.payload.to_vec()));
            }
        }
        out
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
                        && self.backlog().await == Some((0, 0))
                }
            },
        )
        .await;
        eprintln!(
            "pipeline: {} calls from {} valid lines settled {:?} after the last line; {} deliveries",
            want.len(),
            workload.valid_ids().len(),
            start.elapsed(),
            self.deliveries().await
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
        for letter in self.dead_letters().await {
            *letters.entry(letter).or_default() += 1;
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
                let text = std::fs::read_to_string(&proc.log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("--- {} ({})", proc.name, proc.log.display());
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
    }
}

/// Appends `lines` (each followed by `\n`) to `path` in one write, as a logger would.
pub fn append(path: &Path, lines: &[Vec<u8>]) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut buffer = Vec::new();
    for line in lines {
        buffer.extend_from_slice(line);
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

/// Polls `check` every 100 ms until it is true, or panics after `timeout`.
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

/// One `SELECT count(*)`, or `None` while the database or table is not there.
pub async fn count(url: &str, sql: &'static str) -> Option<i64> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .ok()?;
    let n = sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(&pool)
        .await
        .ok();
    pool.close().await;
    n
}

/// Every stored CDR by call id.
pub async fn stored_cdrs(url: &str) -> BTreeMap<String, MergedCdr> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let store = nats_cdr_workloads::worker::Store::from_pool(pool.clone());
    let all = store.load_all_cdrs().await.unwrap();
    pool.close().await;
    all.into_iter().map(|c| (c.call_id.clone(), c)).collect()
}

/// Asserts the stored CDRs are exactly `want`, field by field.
pub fn assert_same(stored: &BTreeMap<String, MergedCdr>, want: &BTreeMap<String, MergedCdr>) {
    let missing: Vec<&String> = want.keys().filter(|k| !stored.contains_key(*k)).collect();
    let extra: Vec<&String> = stored.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(missing.is_empty(), "missing calls: {missing:?}");
    assert!(extra.is_empty(), "unexpected calls: {extra:?}");
    for (call, cdr) in want {
        assert_eq!(&stored[call], cdr, "CDR of {call}");
    }
}

/// Small deterministic PRNG (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
}

/// A generated acc_json log: its lines in file order.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    pub lines: Vec<Vec<u8>>,
}

/// One acc_json object as Kamailio's acc_json writes it.
fn acc(call: &str, method: &str, code: &str, reason: &str, time: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "method": method,
        "from_tag": format!("ft-{call}"),
        "to_tag": if code == "200" { format!("tt-{call}") } else { String::new() },
        "callid": call,
        "sip_code": code,
        "sip_reason": reason,
        "time": time,
        "src_user": "4930123456",
        "dst_user": format!("49301{:05}", call.len() * 7),
        "src_ip": "192.0.2.10",
    }))
    .unwrap()
}

fn syslog(json: Vec<u8>) -> Vec<u8> {
    let mut line = format!("Nov 22 10:00:00 {NODE} json_acc[812]: ").into_bytes();
    line.extend(json);
    line
}

impl Workload {
    /// `calls` calls of prefix `prefix`, in the shapes of a real log (answered INVITE + BYE,
    /// 486, 487, BYE only, syslog-prefixed with float times, string times), the BYE of a call
    /// a few calls after its INVITE; after every `bad_every`-th call (0: never) one malformed
    /// line (not JSON, missing callid, bad time, cut JSON, syslog prefix over garbage).
    pub fn mix(prefix: &str, calls: usize, bad_every: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut keyed: Vec<(u64, Vec<u8>)> = Vec::new();
        for n in 0..calls {
            let call = format!("{prefix}-{n}-{:x}@192.0.2.10", rng.next_u64() >> 40);
            let t0 = 1_763_800_000i64 + n as i64;
            let at = (n as u64) * 10;
            let bye_at = at + 10 * (1 + rng.below(4)) + 1;
            let talk = 1 + rng.below(600) as i64;
            match n % 6 {
                0 => {
                    keyed.push((at, acc(&call, "INVITE", "200", "OK", json!(t0))));
                    keyed.push((bye_at, acc(&call, "BYE", "200", "OK", json!(t0 + talk))));
                }
                1 => keyed.push((at, acc(&call, "INVITE", "486", "Busy Here", json!(t0)))),
                2 => keyed.push((
                    at,
                    acc(&call, "INVITE", "487", "Request Terminated", json!(t0)),
                )),
                3 => keyed.push((at, acc(&call, "BYE", "200", "OK", json!(t0)))),
                4 => {
                    let start = t0 as f64 + 0.25;
                    keyed.push((at, syslog(acc(&call, "INVITE", "200", "OK", json!(start)))));
                    keyed.push((
                        bye_at,
                        syslog(acc(
                            &call,
                            "BYE",
                            "200",
                            "OK",
                            json!(start + talk as f64 + 0.5),
                        )),
                    ));
                }
                _ => {
                    let fmt = |t: i64| {
                        chrono::DateTime::from_timestamp(t, 0)
                            .unwrap()
                            .format("%Y-%m-%d %H:%M:%S")
                            .to_string()
                    };
                    keyed.push((at, acc(&call, "INVITE", "200", "OK", json!(fmt(t0)))));
                    keyed.push((
                        bye_at,
                        acc(&call, "BYE", "200", "OK", json!(fmt(t0 + talk))),
                    ));
                }
            }
            if bad_every > 0 && n % bad_every == bad_every - 1 {
                let bad = match (n / bad_every) % 5 {
                    0 => format!("{prefix} {n} this is not json").into_bytes(),
                    1 => format!(
                        r#"{{"method":"INVITE","sip_code":"200","time":{t0},"n":"{prefix}-{n}"}}"#
                    )
                    .into_bytes(),
                    2 => {
                        format!(r#"{{"method":"BYE","callid":"{call}","time":"yesterday at {n}"}}"#)
                            .into_bytes()
                    }
                    3 => format!(r#"{{"method":"INVITE","callid":"{prefix}-cut-{n}","sip_co"#)
                        .into_bytes(),
                    _ => syslog(format!("garbage {prefix} {n}").into_bytes()),
                };
                assert!(
                    parse_line(&bad).is_err(),
                    "{}",
                    String::from_utf8_lossy(&bad)
                );
                keyed.push((at + 5, bad));
            }
        }
        keyed.sort_by_key(|(at, _)| *at);
        Self {
            lines: keyed.into_iter().map(|(_, line)| line).collect(),
        }
    }

    /// The valid lines' records, keyed by their msg id.
    fn records(&self) -> Vec<(String, AccRecord)> {
        self.lines
            .iter()
            .filter_map(|line| Some((msg_id(NODE, line), parse_line(line).ok()?)))
            .collect()
    }

    /// Msg ids of the valid lines, deduplicated.
    pub fn valid_ids(&self) -> std::collections::BTreeSet<String> {
        self.records().into_iter().map(|(id, _)| id).collect()
    }

    /// The malformed lines with their dead-letter reason.
    pub fn bad_lines(&self) -> Vec<(&'static str, Vec<u8>)> {
        self.lines
            .iter()
            .filter_map(|line| parse_line(line).err().map(|e| (e.reason(), line.clone())))
            .collect()
    }

    /// The CDRs the contract's merge gives for the valid lines, by call id.
    pub fn expected_cdrs(&self) -> BTreeMap<String, MergedCdr> {
        let records = self.records();
        let mut calls: Vec<&str> = records.iter().map(|(_, r)| r.call_id.as_str()).collect();
        calls.sort_unstable();
        calls.dedup();
        calls
            .into_iter()
            .map(|call| (call.to_owned(), merge(call, &records).unwrap()))
            .collect()
    }
}
