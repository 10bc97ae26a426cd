#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Bridge throughput, as a ratio of `nats bench js pub async` on the same server in the same run.
//!
//! `cargo bench -p nats-cdr-workloads --bench bridge -- [LINES]` (default 200000 lines of about
//! 400 bytes). Prints a table; asserts nothing. Runs once with `sync_interval: always` (what a
//! managed cluster runs) and once with the server default (flush every 2 min).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nats_cdr_testsupport::{NatsOptions, NatsServer, binaries};
use nats_cdr_workloads::contract::subjects::{DEFAULT_STREAM_NAME, STREAM_SUBJECTS};

const LINE_BYTES: usize = 400;

fn line(i: usize) -> String {
    let head = format!(
        r#"{{"method":"INVITE","from_tag":"f{i}","to_tag":"t{i}","callid":"bench-{i}@10.0.0.1","sip_code":"200","sip_reason":"OK","time":{},"src_user":"alice","dst_user":"bob","pad":""#,
        1_700_000_000 + i
    );
    let pad = LINE_BYTES.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

fn stream_messages(rt: &tokio::runtime::Runtime, js: &async_nats::jetstream::Context) -> u64 {
    rt.block_on(async {
        let mut stream = js.get_stream(DEFAULT_STREAM_NAME).await.unwrap();
        stream.info().await.unwrap().state.messages
    })
}

/// Peak RSS (VmHWM) of a process, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Row {
    sync: &'static str,
    bridge_rate: f64,
    bench_rate: f64,
    rss_kib: u64,
}

fn run(rt: &tokio::runtime::Runtime, lines: usize, sync_always: bool) -> Row {
    let nats = NatsServer::start_with(NatsOptions {
        sync_always,
        ..NatsOptions::default()
    })
    .unwrap();
    let url = nats.url();
    let js = rt.block_on(async {
        let js = async_nats::jetstream::new(async_nats::connect(&url).await.unwrap());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: DEFAULT_STREAM_NAME.to_owned(),
            subjects: STREAM_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
            storage: async_nats::jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();
        js
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cdr.jsonl");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..lines {
            writeln!(out, "{}", line(i)).unwrap();
        }
    }

    // The bridge, from a file of `lines` pre-written lines, until the stream holds them all.
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kam-cdr-bridge"))
        .args(["--node-name", "bench", "--nats-url", &url])
        .args(["--metrics-addr", "127.0.0.1:0", "--log-level", "warn"])
        .arg("--file")
        .arg(&file)
        .arg("--checkpoint")
        .arg(dir.path().join("checkpoint.json"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut rss = 0;
    while stream_messages(rt, &js) < lines as u64 {
        rss = rss.max(vm_hwm_kib(child.id()).unwrap_or(0));
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "bridge too slow"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let bridge_secs = start.elapsed().as_secs_f64();
    rss = rss.max(vm_hwm_kib(child.id()).unwrap_or(0));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();

    // nats bench: async JetStream publish, same size and count, message ids like the bridge.
    let nats_cli = binaries::find("nats").unwrap();
    let output = Command::new(nats_cli)
        .args([
            "bench",
            "js",
            "pub",
            "async",
            "benchsubject",
            "--server",
            &url,
        ])
        .args(["--create", "--storage", "file", "--dedup", "--no-progress"])
        .arg(format!("--msgs={lines}"))
        .arg(format!("--size={LINE_BYTES}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    let bench_rate = text
        .lines()
        .find(|l| l.contains("msgs/sec"))
        .and_then(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "msgs/sec")?;
            words.get(at.checked_sub(1)?)?.replace(',', "").parse().ok()
        })
        .unwrap_or_else(|| panic!("cannot read nats bench output:\n{text}"));
    Row {
        sync: if sync_always {
            "always"
        } else {
            "default (2m)"
        },
        bridge_rate: lines as f64 / bridge_secs,
        bench_rate,
        rss_kib: rss,
    }
}

fn main() {
    let lines: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows: Vec<Row> = [true, false]
        .into_iter()
        .map(|sync| run(&rt, lines, sync))
        .collect();
    println!("\nkam-cdr-bridge throughput, {lines} lines of {LINE_BYTES} bytes, 1 nats-server");
    println!(
        "| sync_interval | bridge lines/s (acked) | nats bench js pub async msgs/s | ratio | bridge VmHWM |"
    );
    println!("|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {} KiB |",
            row.sync,
            row.bridge_rate,
            row.bench_rate,
            row.bridge_rate / row.bench_rate,
            row.rss_kib
        );
    }
}
