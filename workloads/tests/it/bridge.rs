//! kam-cdr-bridge against a real nats-server. The stream is created here, as the operator would,
//! and its content is checked with plain async-nats stream reads, not with the bridge's code.

use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use nats_cdr_observability::CancellationToken;
use nats_cdr_testsupport::ports::free_port;
use nats_cdr_testsupport::{NatsOptions, NatsServer};
use nats_cdr_workloads::bridge::checkpoint::FileId;
use nats_cdr_workloads::bridge::classify::{Outbound, classify};
use nats_cdr_workloads::bridge::tail::{FileMark, Line};
use nats_cdr_workloads::bridge::{self, BridgeConfig, batch};
use nats_cdr_workloads::contract::headers::{
    CDR_SOURCE, CORRELATION_ID, DLQ_DETAIL, DLQ_REASON, NATS_MSG_ID, TRACEPARENT,
};
use nats_cdr_workloads::contract::msg_id::msg_id;
use nats_cdr_workloads::contract::subjects::CDR_RAW;

use crate::support::NODE;
use crate::support::acc::{series, series_line};
use crate::support::nats::{Stored, create_stream_with, message_count, read_all, wait_for_count};
use crate::support::pipeline::append;
use crate::support::proc::Proc;
use crate::support::scrape;

/// Asserts that the raw messages are exactly `lines`, each once, with the contract's headers.
fn assert_exactly_once(stored: &[Stored], lines: &[String]) {
    let raw: Vec<&Stored> = stored.iter().filter(|m| m.subject == CDR_RAW).collect();
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for message in &raw {
        *per_id
            .entry(message.headers.get(NATS_MSG_ID).unwrap().as_str())
            .or_default() += 1;
    }
    for line in lines {
        let id = msg_id(NODE, line.as_bytes());
        assert_eq!(per_id.get(id.as_str()), Some(&1), "line {line} stored once");
    }
    assert_eq!(raw.len(), lines.len(), "no other raw messages");
}

/// A nats-server, the stream as the operator creates it, and a temp dir holding the tailed
/// file and the checkpoint.
struct Setup {
    nats: NatsServer,
    js: jetstream::Context,
    dir: tempfile::TempDir,
}

impl Setup {
    /// One node with the default test options, the stream allowing atomic batches.
    async fn start() -> Self {
        Self::start_with(NatsOptions::default(), true).await
    }

    async fn start_with(options: NatsOptions, allow_atomic: bool) -> Self {
        let replicas = options.nodes.max(1);
        let nats = NatsServer::start_with(options).unwrap();
        let js = create_stream_with(&nats.urls(), allow_atomic, replicas).await;
        let dir = tempfile::tempdir().unwrap();
        Self { nats, js, dir }
    }

    /// Asserts the checkpoint is at the end of the file: every line acked.
    fn assert_checkpoint_at_end(&self) {
        let checkpoint: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.dir.path().join("state/checkpoint.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            checkpoint["offset"].as_u64(),
            Some(std::fs::metadata(self.file()).unwrap().len())
        );
    }

    /// [`config`](Self::config) serving /metrics on a free port, and that port.
    fn config_with_metrics(&self) -> (BridgeConfig, u16) {
        let port = free_port().unwrap();
        let mut config = self.config();
        config.metrics_addr = Some((Ipv4Addr::LOCALHOST, port).into());
        (config, port)
    }

    /// The tailed file.
    fn file(&self) -> PathBuf {
        self.dir.path().join("cdr.jsonl")
    }

    /// The bridge settings of these tests: quick polls, checkpoints and retries.
    fn config(&self) -> BridgeConfig {
        config(&self.nats.urls(), self.dir.path())
    }
}

fn config(url: &str, dir: &Path) -> BridgeConfig {
    let mut config = BridgeConfig::new(
        dir.join("cdr.jsonl"),
        dir.join("state/checkpoint.json"),
        url.to_owned(),
        NODE.to_owned(),
    );
    config.poll_interval = Duration::from_millis(50);
    config.checkpoint_interval = Duration::from_millis(200);
    config.rotate_grace = Duration::from_millis(300);
    config.backoff_initial = Duration::from_millis(50);
    config.backoff_max = Duration::from_secs(1);
    config.ack_timeout = Duration::from_secs(2);
    config
}

/// The bridge running in this process; stops gracefully on [`Running::stop`].
struct Running {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), bridge::BridgeError>>,
}

impl Running {
    fn start(config: BridgeConfig) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bridge::run(config, shutdown.clone()));
        Self { shutdown, task }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), &mut self.task)
            .await
            .expect("bridge stops in time")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_each_line_once_with_headers_and_call_events() {
    let s = Setup::start().await;
    let (js, file) = (s.js.clone(), s.file());
    let watcher = async_nats::connect(s.nats.url()).await.unwrap();
    let mut events = watcher.subscribe("call.events.>").await.unwrap();
    watcher.flush().await.unwrap();
    let mut all = series(NODE, "basic", 0..30);
    let traced = r#"{"method":"INVITE","callid":"traced-1","sip_code":"200","time":1700000000,"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#.to_owned();
    all.push(traced.clone());
    append(&file, &all[..10]);
    let bridge = Running::start(s.config());
    append(&file, &all[10..]);
    wait_for_count(&js, all.len() as u64, Duration::from_secs(30)).await;

    let stored = read_all(&js).await;
    assert_exactly_once(&stored, &all);
    for message in &stored {
        assert_eq!(
            message.headers.get(CDR_SOURCE).map(String::as_str),
            Some(NODE)
        );
        let line = String::from_utf8(message.payload.clone()).unwrap();
        assert!(all.contains(&line), "payload is the line as read");
        let record = nats_cdr_workloads::contract::parse_line(&message.payload).unwrap();
        assert_eq!(
            message.headers.get(CORRELATION_ID),
            Some(&record.call_id),
            "correlation id is the call id"
        );
    }
    let traced_msg = stored
        .iter()
        .find(|m| m.payload == traced.as_bytes())
        .unwrap();
    assert_eq!(
        traced_msg.headers.get(TRACEPARENT).map(String::as_str),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );

    // Every line here has a call phase: 10 start, 10 end, 10 failed, and the traced start.
    let mut phases: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while phases.values().sum::<usize>() < all.len() && Instant::now() < deadline {
        if let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(1), events.next()).await {
            let body: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
            assert_eq!(body["node"], NODE);
            assert_eq!(
                body["phase"],
                event.subject.as_str().trim_start_matches("call.events.")
            );
            assert!(body["callid"].as_str().is_some());
            *phases.entry(event.subject.to_string()).or_default() += 1;
        }
    }
    assert_eq!(phases.get("call.events.start"), Some(&11), "{phases:?}");
    assert_eq!(phases.get("call.events.end"), Some(&10), "{phases:?}");
    assert_eq!(phases.get("call.events.failed"), Some(&10), "{phases:?}");
    bridge.stop().await;

    // The checkpoint is at the end of the file after a graceful stop.
    s.assert_checkpoint_at_end();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_the_newline_of_a_partial_line() {
    let s = Setup::start().await;
    let (js, file) = (s.js.clone(), s.file());
    let line = series_line(NODE, "partial", 0, 200);
    let (first, second) = line.split_at(line.len() / 2);
    std::fs::write(&file, first).unwrap();
    let bridge = Running::start(s.config());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(message_count(&js).await, 0, "half a line is not published");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    f.write_all(format!("{second}\n").as_bytes()).unwrap();
    wait_for_count(&js, 1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&read_all(&js).await, &[line]);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_a_file_that_does_not_exist_yet() {
    let s = Setup::start().await;
    let (js, file) = (s.js.clone(), s.file());
    let bridge = Running::start(s.config());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let all = series(NODE, "late", 0..20);
    append(&file, &all);
    wait_for_count(&js, 20, Duration::from_secs(20)).await;
    assert_exactly_once(&read_all(&js).await, &all);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_rename_rotation_and_copytruncate() {
    let s = Setup::start().await;
    let (js, file) = (s.js.clone(), s.file());
    let bridge = Running::start(s.config());

    // Rename-and-create, with the writer still appending to the old file after the rename.
    let mut expected = series(NODE, "rot", 0..100);
    append(&file, &expected);
    // The bridge must have the old file open before it is renamed away.
    wait_for_count(&js, 100, Duration::from_secs(30)).await;
    let mut old = std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .unwrap();
    std::fs::rename(&file, s.dir.path().join("cdr.jsonl.1")).unwrap();
    let late = series(NODE, "rot", 100..120);
    for line in &late {
        old.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
    drop(old);
    expected.extend(late);
    let fresh = series(NODE, "rot", 120..220);
    append(&file, &fresh);
    expected.extend(fresh);
    wait_for_count(&js, 220, Duration::from_secs(30)).await;

    // Copytruncate: copy, truncate in place, keep writing from offset 0.
    std::fs::copy(&file, s.dir.path().join("cdr.jsonl.2")).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&file)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = series(NODE, "rot", 220..320);
    append(&file, &after);
    expected.extend(after);
    wait_for_count(&js, 320, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&read_all(&js).await, &expected);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loses_nothing_while_nats_restarts() {
    let s = Setup::start().await;
    let file = s.file();
    let bridge = Running::start(s.config());
    let all = series(NODE, "restart", 0..3000);
    append(&file, &all[..1000]);
    wait_for_count(&s.js, 1, Duration::from_secs(20)).await;
    // Keep appending while the server goes away and comes back.
    let writer_file = file.clone();
    let rest = all[1000..].to_vec();
    let writer = tokio::task::spawn_blocking(move || {
        for chunk in rest.chunks(100) {
            append(&writer_file, chunk);
            std::thread::sleep(Duration::from_millis(30));
        }
    });
    let mut nats = s.nats;
    let nats = tokio::task::spawn_blocking(move || {
        nats.stop_node(0).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        nats.restart_node(0).unwrap();
        nats
    })
    .await
    .unwrap();
    writer.await.unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    wait_for_count(&js, 3000, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&read_all(&js).await, &all);
    bridge.stop().await;
}

impl Setup {
    /// The bridge binary on [`file`](Self::file), logging to `<dir>/<log>`.
    fn spawn_bridge_binary(&self, log: &str) -> Proc {
        let dir = self.dir.path();
        Proc::bridge(
            &self.nats.urls(),
            &self.file(),
            &dir.join("state/checkpoint.json"),
            &BINARY_ARGS,
            dir.join(log),
        )
    }
}

/// Flags of the bridge binary in these tests.
const BINARY_ARGS: [&str; 6] = [
    "--in-flight",
    "64",
    "--poll-interval",
    "50ms",
    "--checkpoint-interval",
    "100ms",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_and_restart_resumes_from_the_checkpoint() {
    let s = Setup::start().await;
    let js = s.js.clone();
    let all = series(NODE, "kill", 0..5000);
    append(&s.file(), &all);
    let mut child = s.spawn_bridge_binary("bridge-1.log");
    wait_for_count(&js, 800, Duration::from_secs(30)).await;
    child.kill_9();
    let at_kill = message_count(&js).await;
    let checkpoint: PathBuf = s.dir.path().join("state/checkpoint.json");
    assert!(
        checkpoint.exists(),
        "a checkpoint was written before the kill"
    );
    assert!(at_kill < 5000, "killed mid-stream ({at_kill} stored)");

    let mut child = s.spawn_bridge_binary("bridge-2.log");
    wait_for_count(&js, 5000, Duration::from_secs(40)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SIGTERM: the graceful path of the binary.
    assert_eq!(
        child.terminate(),
        Some(0),
        "bridge exits cleanly on SIGTERM"
    );
    assert_exactly_once(&read_all(&js).await, &all);
    let log = child.log_text();
    assert!(log.contains("tailing file"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_malformed_and_oversized_lines() {
    let s = Setup::start_with(
        NatsOptions {
            max_payload: Some(4096),
            ..NatsOptions::default()
        },
        true,
    )
    .await;
    let (js, file) = (s.js.clone(), s.file());
    let valid_before = series_line(NODE, "dlq", 0, 200);
    let valid_after = series_line(NODE, "dlq", 1, 200);
    let not_json = "Nov 22 10:00:00 sip-01 kamailio[1]: this is not a CDR".to_owned();
    let no_callid = r#"{"method":"INVITE","sip_code":"200","time":1700000000}"#.to_owned();
    let bad_time =
        r#"{"method":"INVITE","callid":"c-bad","sip_code":"200","time":"yesterday"}"#.to_owned();
    let huge = format!(
        r#"{{"method":"INVITE","callid":"c-huge","sip_code":"200","time":1700000000,"pad":"{}"}}"#,
        "y".repeat(10_000)
    );
    let all = vec![
        valid_before.clone(),
        not_json.clone(),
        no_callid.clone(),
        huge.clone(),
        bad_time.clone(),
        valid_after.clone(),
    ];
    append(&file, &all);
    let bridge = Running::start(s.config());
    wait_for_count(&js, 6, Duration::from_secs(20)).await;
    let stored = read_all(&js).await;
    assert_exactly_once(&stored, &[valid_before, valid_after]);

    let by_subject = |subject: &str| -> Vec<&Stored> {
        stored.iter().filter(|m| m.subject == subject).collect()
    };
    for (subject, reason, line) in [
        ("cdr.dlq.not_json", "not_json", &not_json),
        ("cdr.dlq.missing_callid", "missing_callid", &no_callid),
        ("cdr.dlq.bad_time", "bad_time", &bad_time),
    ] {
        let found = by_subject(subject);
        assert_eq!(found.len(), 1, "{subject}");
        assert_eq!(
            found[0].headers.get(DLQ_REASON).map(String::as_str),
            Some(reason)
        );
        assert!(!found[0].headers.get(DLQ_DETAIL).unwrap().is_empty());
        assert_eq!(found[0].payload, line.as_bytes(), "original bytes");
        assert_eq!(
            found[0].headers.get(NATS_MSG_ID),
            Some(&msg_id(NODE, line.as_bytes()))
        );
    }
    let oversized = by_subject("cdr.dlq.oversized");
    assert_eq!(oversized.len(), 1);
    let letter = oversized[0];
    assert_eq!(
        letter.headers.get(DLQ_REASON).map(String::as_str),
        Some("oversized")
    );
    assert_eq!(
        letter.headers.get("cdr-dlq-truncated").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        letter.headers.get("cdr-dlq-original-size"),
        Some(&huge.len().to_string())
    );
    assert!(letter.payload.len() > 1000 && letter.payload.len() < 4096);
    assert!(
        huge.as_bytes().starts_with(&letter.payload),
        "a prefix of the line"
    );
    bridge.stop().await;
}

/// The message the bridge publishes for `line`.
fn outbound(line: &str) -> Outbound {
    let line = Line {
        bytes: line.as_bytes().to_vec().into(),
        file: Arc::new(FileMark {
            id: FileId { dev: 0, ino: 0 },
            fingerprint_len: 0,
            fingerprint: String::new(),
        }),
        end_offset: 0,
        original_len: None,
    };
    classify(NODE, &line)
}

/// Publishes `line` the way the bridge does, one message with its `Nats-Msg-Id`.
async fn publish_line(js: &jetstream::Context, line: &str) {
    let message = outbound(line);
    let mut headers = async_nats::HeaderMap::new();
    for (name, value) in &message.headers {
        headers.insert(*name, value.as_str());
    }
    js.publish_with_headers(message.subject, headers, message.payload)
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_line_by_line_to_a_stream_without_atomic_publish() {
    // Today's operator-made streams do not allow atomic publish: the bridge notices (10174),
    // publishes line by line, and every line is stored once.
    let s = Setup::start_with(NatsOptions::default(), false).await;
    let all = series(NODE, "noatomic", 0..600);
    append(&s.file(), &all);
    let (config, port) = s.config_with_metrics();
    let bridge = Running::start(config);
    wait_for_count(&s.js, 600, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_exactly_once(&read_all(&s.js).await, &all);
    assert_eq!(scrape(port, "kam_cdr_bridge_atomic_batches"), Some(0.0));
    assert_eq!(scrape(port, "kam_cdr_bridge_batches_total"), Some(0.0));
    assert!(
        scrape(
            port,
            r#"kam_cdr_bridge_batches_refused_total{reason="disabled"}"#
        ) >= Some(1.0),
        "the refusal was seen"
    );
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_for_one_duplicate_line_loses_stalls_and_doubles_nothing() {
    // nats-server refuses a whole atomic batch (10201) when one Nats-Msg-Id of it is already
    // in the stream's duplicate window or twice in the batch, and does not say which line.
    let s = Setup::start().await;
    let all = series(NODE, "dup", 0..400);
    // Line 250 is already stored (an earlier run of the bridge published it)...
    publish_line(&s.js, &all[250]).await;
    // ...and the logger wrote line 100 twice, close enough to share a batch.
    let mut written = all.clone();
    written.insert(105, all[100].clone());
    append(&s.file(), &written);
    let (config, port) = s.config_with_metrics();
    let bridge = Running::start(config);
    wait_for_count(&s.js, 400, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&read_all(&s.js).await, &all);
    let refused = scrape(
        port,
        r#"kam_cdr_bridge_batches_refused_total{reason="duplicate"}"#,
    );
    assert!(
        refused >= Some(2.0),
        "both duplicates refused a batch: {refused:?}"
    );
    assert!(
        scrape(port, "kam_cdr_bridge_batches_total") >= Some(1.0),
        "the other lines still went in batches"
    );
    assert_eq!(
        scrape(port, "kam_cdr_bridge_duplicates_total"),
        Some(2.0),
        "the two duplicates were acked as such, one by one"
    );
    bridge.stop().await;
    // Not stalled: every line acked, the checkpoint is at the end of the file.
    s.assert_checkpoint_at_end();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_staging_a_batch_and_committing_it_stores_each_line_once() {
    let s = Setup::start().await;
    let all = series(NODE, "crash", 0..300);
    append(&s.file(), &all);
    // A bridge staged the first 200 lines as an atomic batch and died before the commit: its
    // connection closes, as on kill -9.
    {
        let client = async_nats::connect(s.nats.url()).await.unwrap();
        let staged: Vec<Outbound> = all[..200].iter().map(|line| outbound(line)).collect();
        batch::stage(&client, "crashed-bridge-batch-1", &staged)
            .await
            .unwrap();
        client.flush().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        message_count(&s.js).await,
        0,
        "a staged batch is not stored"
    );
    // Not by a restart of the server either (an R1 stream stages batches on disk).
    let mut nats = s.nats;
    let nats = tokio::task::spawn_blocking(move || {
        nats.restart_node(0).unwrap();
        nats
    })
    .await
    .unwrap();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(message_count(&js).await, 0, "nor after a server restart");
    // The next bridge has no checkpoint (nothing was acked) and reads everything again.
    let bridge = Running::start(config(&nats.url(), s.dir.path()));
    wait_for_count(&js, 300, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&read_all(&js).await, &all);
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_each_line_once_to_an_r3_stream_of_a_three_node_cluster() {
    let s = Setup::start_with(
        NatsOptions {
            nodes: 3,
            ..NatsOptions::default()
        },
        true,
    )
    .await;
    let all = series(NODE, "r3", 0..2000);
    append(&s.file(), &all[..500]);
    let (config, port) = s.config_with_metrics();
    let bridge = Running::start(config);
    append(&s.file(), &all[500..]);
    wait_for_count(&s.js, 2000, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exactly_once(&read_all(&s.js).await, &all);
    assert!(scrape(port, "kam_cdr_bridge_batches_total") >= Some(1.0));
    bridge.stop().await;
}
