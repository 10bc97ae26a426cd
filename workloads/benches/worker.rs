//! cdr-worker throughput: CDR records/s committed by the worker binary with rating off and with
//! rating on (every call rated and its account debited through the ledger), each as a ratio of
//! a plain `COPY` of the same rows into the same table (a fresh copy of the schema) in the same
//! run, and rating on as a ratio of rating off; the worker's peak RSS. Starts its own
//! nats-server (`sync_interval: always`) and PostgreSQL; both workers drain the same stream
//! through their own durable consumer into their own database.
//!
//! `cargo bench -p nats-cdr-workloads --bench worker` (env `WORKER_BENCH_RECORDS`, default 50000;
//! `WORKER_BENCH_ACCOUNTS`, callers and accounts, default 1000; `WORKER_BENCH_PREFIXES`, rates of
//! the plan, default 500)
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
use nats_cdr_workloads::worker::rating::sql::insert_tariffs;
use nats_cdr_workloads::worker::rating::{Account, Rate, RatePlan, Tariffs};
use rust_decimal::Decimal;
use sqlx::Connection;

const NODE: &str = "sip-bench";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// An answered call per two records (INVITE 200, BYE 60 s later), from `accounts` callers to
/// German numbers.
fn lines(records: usize, accounts: usize) -> Vec<Vec<u8>> {
    (0..records)
        .map(|i| {
            let call = i / 2;
            let t = 1_700_000_000 + call as i64;
            let caller = format!("1{:09}", call % accounts.max(1));
            let callee = format!("+49 {}", 301_000_000 + (call * 7919) % 698_000_000);
            let line = if i % 2 == 0 {
                serde_json::json!({"method": "INVITE", "from_tag": format!("f{call}"), "to_tag": format!("t{call}"),
                    "callid": format!("bench-{call}@10.0.0.1"), "sip_code": "200", "sip_reason": "OK",
                    "time": t, "src_user": caller, "dst_user": callee, "src_ip": "10.0.0.1"})
            } else {
                serde_json::json!({"method": "BYE", "from_tag": format!("f{call}"), "to_tag": format!("t{call}"),
                    "callid": format!("bench-{call}@10.0.0.1"), "sip_code": "200", "sip_reason": "OK",
                    "time": t + 60, "src_user": caller, "dst_user": callee, "src_ip": "10.0.0.1"})
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
    let records = env_or("WORKER_BENCH_RECORDS", 50_000);
    let accounts = env_or("WORKER_BENCH_ACCOUNTS", 1_000);
    let prefixes = env_or("WORKER_BENCH_PREFIXES", 500);
    let batch_size = std::env::var("WORKER_BENCH_BATCH").unwrap_or_else(|_| "500".into());
    let concurrency = std::env::var("WORKER_BENCH_CONCURRENCY").unwrap_or_else(|_| "2".into());
    let nats = NatsServer::start_with(NatsOptions {
        sync_always: true,
        ..NatsOptions::default()
    })
    .unwrap();
    let pg = Postgres::start().unwrap();
    let lines = lines(records, accounts);

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

    // The workers drain the backlog, each through its own durable into its own database.
    let off = drain(&pg, &nats, "off", records, &batch_size, &concurrency, None).await;
    let on_tariffs = tariffs(accounts, prefixes);
    let on = drain(
        &pg,
        &nats,
        "on",
        records,
        &batch_size,
        &concurrency,
        Some(&on_tariffs),
    )
    .await;
    let rated = pg
        .psql(
            "worker_on",
            "SELECT count(*) FILTER (WHERE rating_status = 'rated') || ' rated, ' || count(*) || ' CDRs, ledger ' || (SELECT count(*) FROM ledger_entry) || ' entries, ' || (SELECT sum(amount) FROM ledger_entry) || ' EUR' FROM cdr",
        )
        .unwrap();

    let copy_rate = records as f64 / copy_secs;
    println!();
    println!(
        "cdr-worker benchmark: {records} records ({} answered calls from {accounts} accounts), batch {batch_size}, concurrency {concurrency}, {prefixes} rates in the plan, nats sync_interval: always, PostgreSQL defaults (fsync on)",
        records / 2
    );
    println!("| measure | COPY | worker, rating off | worker, rating on |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| seconds (worker: spawn to all committed) | {copy_secs:.2} | {:.2} | {:.2} |",
        off.total, on.total
    );
    println!(
        "| records/s (spawn..end) | {copy_rate:.0} | {:.0} | {:.0} |",
        records as f64 / off.total,
        records as f64 / on.total
    );
    println!(
        "| records/s (first..last commit) | {copy_rate:.0} | {:.0} | {:.0} |",
        records as f64 / off.steady,
        records as f64 / on.steady
    );
    println!(
        "| ratio to COPY (spawn..end) | 1 | {:.3} | {:.3} |",
        copy_secs / off.total,
        copy_secs / on.total
    );
    println!(
        "| ratio to COPY (first..last) | 1 | {:.3} | {:.3} |",
        copy_secs / off.steady,
        copy_secs / on.steady
    );
    println!(
        "| peak RSS (VmHWM) | | {:.1} MiB | {:.1} MiB |",
        off.hwm_kib as f64 / 1024.0,
        on.hwm_kib as f64 / 1024.0
    );
    println!("| cdr rows | | {} | {} |", off.cdrs, on.cdrs);
    println!("| worker exit | | {} | {} |", off.exit, on.exit);
    println!();
    println!(
        "rating on / rating off (target >= 0.8): {:.3} spawn..end, {:.3} first..last commit",
        off.total / on.total,
        off.steady / on.steady
    );
    println!("publish to stream (not part of any ratio): {publish_secs:.2} s; rating on: {rated}");
}

/// What one worker run measured.
struct Drained {
    total: f64,
    steady: f64,
    hwm_kib: u64,
    cdrs: String,
    exit: std::process::ExitStatus,
}

/// One rate plan (EUR) with a catch-all and `prefixes` German prefixes, 30/6 with a connection
/// fee; `accounts` postpaid accounts on it, named like the bench's callers.
fn tariffs(accounts: usize, prefixes: usize) -> Tariffs {
    let mut tariffs = Tariffs::default();
    tariffs.plans.insert(
        "std".into(),
        RatePlan {
            id: "std".into(),
            currency: "EUR".into(),
        },
    );
    let rate = |prefix: String, micros: i64| Rate {
        plan_id: "std".into(),
        prefix,
        valid_from: chrono::DateTime::from_timestamp(1_600_000_000, 0).unwrap(),
        valid_to: None,
        price_per_minute: Decimal::new(micros, 6),
        connection_fee: Decimal::new(150, 4),
        setup_fee: Decimal::ZERO,
        initial_increment: 30,
        subsequent_increment: 6,
        min_billable: 0,
    };
    tariffs.rates.push(rate(String::new(), 250_000));
    for n in 0..prefixes {
        tariffs.rates.push(rate(
            format!("49{}", 30 + n * 7 % 969),
            10_000 + n as i64 * 37,
        ));
    }
    for n in 0..accounts {
        let id = format!("1{n:09}");
        tariffs.accounts.insert(
            id.clone(),
            Account {
                id,
                currency: "EUR".into(),
                rate_plan_id: Some("std".into()),
                balance: Decimal::new(1_000, 0),
                prepaid: false,
            },
        );
    }
    tariffs
}

/// Runs a worker (rating on with `tariffs`, off without) through durable `bench-<name>` into
/// database `worker_<name>` until every record is stored; stops it with SIGTERM.
async fn drain(
    pg: &Postgres,
    nats: &NatsServer,
    name: &str,
    records: usize,
    batch_size: &str,
    concurrency: &str,
    tariffs: Option<&Tariffs>,
) -> Drained {
    let database = format!("worker_{name}");
    pg.create_database(&database).unwrap();
    let worker_url = pg.url_for(&database);
    // Schema and tariffs first, so that the timing is the worker's alone.
    let store = Store::connect_lazy(&worker_url, 2, Duration::from_secs(10)).unwrap();
    store.migrate().await.unwrap();
    if let Some(tariffs) = tariffs {
        // (Analyses the tariff tables, as a billing team's load should.)
        insert_tariffs(store.pool(), tariffs).await.unwrap();
    }
    store.pool().close().await;
    let rating = if tariffs.is_some() { "true" } else { "false" };
    let durable = format!("bench-{name}");
    let mut worker = Command::new(env!("CARGO_BIN_EXE_cdr-worker"))
        .args([
            "--nats-url",
            &nats.url(),
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            "text",
        ])
        .args(["--batch-size", batch_size, "--concurrency", concurrency])
        .args(["--durable", &durable, "--rating", rating])
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
            spawned.elapsed() < Duration::from_secs(900),
            "worker too slow: {n}/{records}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = spawned.elapsed().as_secs_f64();
    let steady = (total - first_at.unwrap_or_default().as_secs_f64()).max(1e-9);
    hwm = hwm.max(vm_hwm_kb(pid).unwrap_or(0));
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let exit = worker.wait().unwrap();
    let cdrs = pg.psql(&database, "SELECT count(*) FROM cdr").unwrap();
    Drained {
        total,
        steady,
        hwm_kib: hwm,
        cdrs,
        exit,
    }
}
