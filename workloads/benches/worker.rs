//! cdr-worker throughput: CDR records/s committed by the worker binary, as a ratio of a plain
//! `COPY` of the same rows into the same table (a fresh copy of the schema) in the same run, and
//! the worker's peak RSS. Starts its own nats-server (`sync_interval: always`) and PostgreSQL.
//!
//! `cargo bench -p nats-cdr-workloads --bench worker` (env `WORKER_BENCH_RECORDS`, default 50000)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use nats_cdr_testsupport::{NatsOptions, NatsServer, Postgres};
use nats_cdr_workloads::contract::headers::{CDR_SOURCE, NATS_MSG_ID};
use nats_cdr_workloads::contract::merge::priority;
use nats_cdr_workloads::contract::msg_id::msg_id;
use nats_cdr_workloads::contract::record::parse_line;
use nats_cdr_workloads::contract::subjects::{CDR_RAW, DEFAULT_STREAM_NAME, STREAM_SUBJECTS};
use nats_cdr_workloads::worker::Store;
use sqlx::Connection;

const NODE: &str = "sip-bench";

fn lines(records: usize) -> Vec<Vec<u8>> {
    (0..records)
        .map(|i| {
            let call = i / 2;
            let t = 1_700_000_000 + call as i64;
            let line = if i % 2 == 0 {
                serde_json::json!({"method": "INVITE", "from_tag": format!("f{call}"), "to_tag": format!("t{call}"),
                    "callid": format!("bench-{call}@10.0.0.1"), "sip_code": "200", "sip_reason": "OK",
                    "time": t, "src_user": format!("1{call:09}"), "dst_user": format!("2{call:09}"), "src_ip": "10.0.0.1"})
            } else {
                serde_json::json!({"method": "BYE", "from_tag": format!("f{call}"), "to_tag": format!("t{call}"),
                    "callid": format!("bench-{call}@10.0.0.1"), "sip_code": "200", "sip_reason": "OK",
                    "time": t + 60, "src_user": format!("1{call:09}"), "dst_user": format!("2{call:09}"), "src_ip": "10.0.0.1"})
            };
            serde_json::to_vec(&line).unwrap()
        })
        .collect()
}

/// COPY text-format escaping.
fn esc(value: Option<&str>) -> String {
    match value {
        None => "\\N".to_owned(),
        Some(v) => v
            .replace('\\', "\\\\")
            .replace('\t', "\\t")
            .replace('\n', "\\n")
            .replace('\r', "\\r"),
    }
}

fn copy_text(lines: &[Vec<u8>]) -> Vec<u8> {
    let mut out = String::new();
    for (seq, line) in lines.iter().enumerate() {
        let r = parse_line(line).unwrap();
        let kind = r.kind();
        let extras = serde_json::to_string(&r.extras).unwrap();
        let fields = [
            esc(Some(&msg_id(NODE, line))),
            esc(Some(&r.call_id)),
            esc(Some(kind.as_str())),
            priority(kind).to_string(),
            r.time.to_rfc3339(),
            esc(r.method.as_deref()),
            esc(r.from_tag.as_deref()),
            esc(r.to_tag.as_deref()),
            esc(r.sip_code.as_deref()),
            esc(r.sip_reason.as_deref()),
            esc(r.src_user()),
            esc(r.dst_user()),
            esc(Some(&extras)),
            esc(Some(NODE)),
            (seq + 1).to_string(),
        ];
        out.push_str(&fields.join("\t"));
        out.push('\n');
    }
    out.into_bytes()
}

fn vm_hwm_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn count(url: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM cdr_record")
        .fetch_one(&mut conn)
        .await
        .unwrap_or(0);
    let _ = conn.close().await;
    n
}

#[tokio::main]
async fn main() {
    let records: usize = std::env::var("WORKER_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let batch_size = std::env::var("WORKER_BENCH_BATCH").unwrap_or_else(|_| "500".into());
    let concurrency = std::env::var("WORKER_BENCH_CONCURRENCY").unwrap_or_else(|_| "2".into());
    let nats = NatsServer::start_with(NatsOptions {
        sync_always: true,
        ..NatsOptions::default()
    })
    .unwrap();
    let pg = Postgres::start().unwrap();
    let lines = lines(records);

    // Baseline: COPY of the same rows into the same table, fresh schema.
    pg.create_database("copy").unwrap();
    let copy_url = pg.url_for("copy");
    let store = Store::connect_lazy(&copy_url, 2, Duration::from_secs(10)).unwrap();
    store.migrate().await.unwrap();
    let data = copy_text(&lines);
    let mut conn = sqlx::PgConnection::connect(&copy_url).await.unwrap();
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY cdr_record (msg_id, call_id, kind, priority, event_time, method, from_tag, to_tag, sip_code, sip_reason, src_user, dst_user, extras, source_node, stream_seq) FROM STDIN")
        .await
        .unwrap();
    for chunk in data.chunks(1 << 20) {
        copy.send(chunk).await.unwrap();
    }
    let copied = copy.finish().await.unwrap();
    let copy_secs = started.elapsed().as_secs_f64();
    assert_eq!(copied as usize, records);

    // Load the stream.
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.get_or_create_stream(jetstream::stream::Config {
        name: DEFAULT_STREAM_NAME.to_owned(),
        subjects: STREAM_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap();
    let started = Instant::now();
    for chunk in lines.chunks(1000) {
        let mut acks = Vec::new();
        for line in chunk {
            let mut headers = HeaderMap::new();
            headers.insert(NATS_MSG_ID, msg_id(NODE, line).as_str());
            headers.insert(CDR_SOURCE, NODE);
            acks.push(
                js.publish_with_headers(CDR_RAW, headers, line.clone().into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    let publish_secs = started.elapsed().as_secs_f64();

    // The worker drains the backlog.
    pg.create_database("worker").unwrap();
    let worker_url = pg.url_for("worker");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_cdr-worker"))
        .args([
            "--nats-url",
            &nats.url(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ])
        .args(["--batch-size", &batch_size, "--concurrency", &concurrency])
        .env("DATABASE_URL", &worker_url)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = worker.id();
    let spawned = Instant::now();
    let mut first_at = None;
    let mut hwm = 0;
    loop {
        hwm = hwm.max(vm_hwm_kb(pid).unwrap_or(0));
        let n = count(&worker_url).await;
        if n > 0 && first_at.is_none() {
            first_at = Some(spawned.elapsed());
        }
        if n as usize >= records {
            break;
        }
        assert!(
            spawned.elapsed() < Duration::from_secs(600),
            "worker too slow: {n}/{records}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = spawned.elapsed().as_secs_f64();
    let steady = total - first_at.unwrap_or_default().as_secs_f64();
    hwm = hwm.max(vm_hwm_kb(pid).unwrap_or(0));
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = worker.wait().unwrap();
    let cdrs = pg.psql("worker", "SELECT count(*) FROM cdr").unwrap();

    let copy_rate = records as f64 / copy_secs;
    let worker_rate = records as f64 / total;
    let steady_rate = records as f64 / steady.max(1e-9);
    println!();
    println!(
        "cdr-worker benchmark: {records} records ({} calls), batch {batch_size}, concurrency {concurrency}, nats sync_interval: always, PostgreSQL defaults (fsync on)",
        records / 2
    );
    println!("| measure | value |");
    println!("| --- | --- |");
    println!("| COPY into cdr_record | {copy_secs:.2} s, {copy_rate:.0} rows/s |");
    println!("| publish to stream (not part of the ratio) | {publish_secs:.2} s |");
    println!("| worker, spawn to all committed | {total:.2} s, {worker_rate:.0} records/s |");
    println!("| worker, first to last commit | {steady:.2} s, {steady_rate:.0} records/s |");
    println!(
        "| ratio worker/COPY (spawn..end) | {:.3} |",
        worker_rate / copy_rate
    );
    println!(
        "| ratio worker/COPY (first..last) | {:.3} |",
        steady_rate / copy_rate
    );
    println!(
        "| worker peak RSS (VmHWM) | {:.1} MiB |",
        hwm as f64 / 1024.0
    );
    println!("| cdr rows | {cdrs} |");
    println!("| worker exit | {status} |");
}
