//! Bridge throughput: acked lines/s of `kam-cdr-bridge` catching up on a file of ~450-byte
//! acc_json lines, beside the ceilings measured on the same server in the same run:
//! `nats bench js pub async` and `nats bench js pub atomic` (batches of 1000) with the same
//! message size, count and msg ids, and the fsync floor of the disk the server writes to
//! (450-byte records, one `fdatasync` each, and 1000 per `fdatasync`).
//!
//! Rows: an R1 stream with the server's default sync (flush every 2 min), in atomic batches and
//! line by line (`--batch-max 1`, what a stream without `allow_atomic` gets); R1 and an R3 stream
//! of a 3-node loopback cluster with `sync_interval: always` (what a managed cluster runs); and R1
//! `always` line by line.
//!
//! `cargo bench -p nats-cdr-workloads --bench bridge -- [LINES]` (default 100000; the
//! line-by-line row and the `nats bench async` ceilings under `always` use a tenth, at least
//! 5000). `BRIDGE_BENCH_ROWS` picks rows (`r1-default,r1-default-line-by-line,r1-always,r3-always,
//! r1-line-by-line`, all by default); `BRIDGE_BENCH_ARGS` adds bridge flags to every row. Prints a table; asserts nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nats_cdr_testsupport::{NatsOptions, NatsServer, binaries};
use support::acc::series_line;
use support::load_average;
use support::nats::{create_stream_with, message_count};
use support::proc::Proc;

/// Size of every line, and of nats bench's messages.
const LINE_BYTES: usize = 450;

/// Line `i`, padded to [`LINE_BYTES`].
fn line(i: usize) -> String {
    let bare = series_line(support::NODE, "bench", i, 0).len();
    let line = series_line(support::NODE, "bench", i, LINE_BYTES.saturating_sub(bare));
    debug_assert_eq!(line.len(), LINE_BYTES);
    line
}

struct Row {
    stream: &'static str,
    sync: &'static str,
    bridge_flags: &'static str,
    lines: usize,
    bridge_rate: f64,
    bench_async: f64,
    bench_atomic: f64,
    rss_kib: u64,
}

/// One scenario: a fresh server, the stream, the bridge over `lines` pre-written lines, then the
/// nats bench ceilings on the same server.
fn run(
    rt: &tokio::runtime::Runtime,
    nodes: usize,
    sync_always: bool,
    lines: usize,
    bridge_flags: &'static [&'static str],
) -> Row {
    let nats = NatsServer::start_with(NatsOptions {
        nodes,
        sync_always,
        ..NatsOptions::default()
    })
    .unwrap();
    let urls = nats.urls();
    let js = rt.block_on(create_stream_with(&urls, true, nodes));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cdr.jsonl");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..lines {
            writeln!(out, "{}", line(i)).unwrap();
        }
    }
    let extra = std::env::var("BRIDGE_BENCH_ARGS").unwrap_or_default();
    let mut args = vec!["--log-level", "warn"];
    args.extend_from_slice(bridge_flags);
    args.extend(extra.split_whitespace());
    let start = Instant::now();
    let mut bridge = Proc::bridge(
        &urls,
        &file,
        &dir.path().join("checkpoint.json"),
        &args,
        dir.path().join("bridge.log"),
    );
    let mut rss = 0;
    while rt.block_on(message_count(&js)) < lines as u64 {
        rss = rss.max(bridge.peak_rss_kib().unwrap_or(0));
        assert!(
            start.elapsed() < Duration::from_secs(900),
            "bridge too slow"
        );
        assert!(bridge.is_running(), "bridge exited: {}", bridge.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let bridge_secs = start.elapsed().as_secs_f64();
    rss = rss.max(bridge.peak_rss_kib().unwrap_or(0));
    assert_eq!(bridge.terminate(), Some(0), "{}", bridge.log_text());

    // The ceilings, with fewer messages where each costs a disk sync.
    let slow = if sync_always {
        (lines / 10).max(5000)
    } else {
        lines
    };
    let bench_async = nats_bench(&nats.url(), "async", nodes, slow, &[]);
    let bench_atomic = nats_bench(&nats.url(), "atomic", nodes, lines, &["--batch=1000"]);
    Row {
        stream: if nodes > 1 { "R3 (3 nodes)" } else { "R1" },
        sync: if sync_always {
            "always"
        } else {
            "default (2m)"
        },
        bridge_flags: if bridge_flags.is_empty() {
            "defaults"
        } else {
            "--batch-max 1"
        },
        lines,
        bridge_rate: lines as f64 / bridge_secs,
        bench_async,
        bench_atomic,
        rss_kib: rss,
    }
}

/// msgs/s of `nats bench js pub <mode>` on a fresh stream of `replicas`, messages of
/// [`LINE_BYTES`] with msg ids.
fn nats_bench(url: &str, mode: &str, replicas: usize, msgs: usize, extra: &[&str]) -> f64 {
    let stream = format!("bench{mode}");
    let subject = format!("bench.{mode}");
    let output = Command::new(binaries::find("nats").unwrap())
        .args(["bench", "js", "pub", mode, &subject, "--server", url])
        .args(["--create", "--storage", "file", "--dedup", "--no-progress"])
        .arg(format!("--stream={stream}"))
        .arg(format!("--replicas={replicas}"))
        .arg(format!("--msgs={msgs}"))
        .arg(format!("--size={LINE_BYTES}"))
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    text.lines()
        .find(|l| l.contains("stats:") && l.contains("msgs/sec"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "msgs/sec")?;
            words.get(at.checked_sub(1)?)?.replace(',', "").parse().ok()
        })
        .unwrap_or_else(|| panic!("cannot read nats bench output:\n{text}"))
}

/// Records of [`LINE_BYTES`] per second appended to a file in `dir` with one `fdatasync` per
/// `per_sync` records, for about `secs` seconds.
fn fsync_floor(dir: &Path, per_sync: usize, secs: f64) -> f64 {
    let path = dir.join(format!("fsync-floor-{per_sync}"));
    let mut file = std::fs::File::create(&path).unwrap();
    let record = vec![b'x'; LINE_BYTES];
    let start = Instant::now();
    let mut records = 0usize;
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..per_sync {
            file.write_all(&record).unwrap();
        }
        file.sync_data().unwrap();
        records += per_sync;
    }
    let rate = records as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path).unwrap();
    rate
}

fn main() {
    let lines: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(100_000);
    let version = support::nats_server_version();
    let load_before = load_average();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // The disk nats-server writes to: its scratch directory.
    let probe = NatsServer::start().unwrap();
    let floor_one = fsync_floor(probe.dir(), 1, 2.0);
    let floor_batch = fsync_floor(probe.dir(), 1000, 2.0);
    drop(probe);

    let wanted = std::env::var("BRIDGE_BENCH_ROWS").unwrap_or_default();
    let wanted = |row: &str| wanted.is_empty() || wanted.split(',').any(|w| w.trim() == row);
    let mut rows = Vec::new();
    if wanted("r1-default") {
        rows.push(run(&rt, 1, false, lines, &[]));
    }
    if wanted("r1-default-line-by-line") {
        rows.push(run(&rt, 1, false, lines, &["--batch-max", "1"]));
    }
    if wanted("r1-always") {
        rows.push(run(&rt, 1, true, lines, &[]));
    }
    if wanted("r3-always") {
        rows.push(run(&rt, 3, true, lines, &[]));
    }
    if wanted("r1-line-by-line") {
        let few = (lines / 10).max(5000);
        rows.push(run(&rt, 1, true, few, &["--batch-max", "1"]));
    }
    let extra = std::env::var("BRIDGE_BENCH_ARGS").unwrap_or_default();

    println!(
        "\nkam-cdr-bridge throughput: acked lines/s catching up on a file of {LINE_BYTES}-byte lines; \
         {version}; extra bridge flags {extra:?}; 2 cores shared; load average {load_before} before, {} after",
        load_average()
    );
    println!(
        "fsync floor of this disk ({LINE_BYTES}-byte records): {floor_one:.0}/s with one fdatasync each, \
         {floor_batch:.0}/s with 1000 per fdatasync"
    );
    println!(
        "| stream | sync_interval | bridge | lines | bridge lines/s | nats bench js pub async | ratio | \
         nats bench js pub atomic (1000) | ratio to the best | fsync floor 1000/sync | bridge VmHWM |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let best = row.bench_async.max(row.bench_atomic);
        println!(
            "| {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} | {} | {} KiB |",
            row.stream,
            row.sync,
            row.bridge_flags,
            row.lines,
            row.bridge_rate,
            row.bench_async,
            row.bridge_rate / row.bench_async,
            row.bench_atomic,
            row.bridge_rate / best,
            if row.sync == "always" {
                format!("{floor_batch:.0} ({:.2})", row.bridge_rate / floor_batch)
            } else {
                "-".to_owned()
            },
            row.rss_kib
        );
    }
}
