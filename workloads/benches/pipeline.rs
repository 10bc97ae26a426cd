//! End-to-end latency of the data path: from a line appended to the acc_json file to its record
//! committed in PostgreSQL, at steady rates; and the peak RSS of the bridge and the worker.
//!
//! Every component is a real process (the pipeline test harness): nats-server with
//! `sync_interval: always` (every ack on disk, what a managed cluster runs) and a stream allowing
//! atomic batches, PostgreSQL, `kam-cdr-bridge` and one `cdr-worker`, both with their shipped
//! defaults (bridge woken by inotify, 200 ms poll as the fallback, batches of up to 1000 lines;
//! worker batch 500 x concurrency 2). The floor printed beside the figures is the latency of one
//! write + `fdatasync` on the server's disk, measured in the same run.
//!
//! Method: a writer thread appends, every 10 ms, the lines due at the target rate (answered
//! calls, INVITE + BYE), each carrying its append time as an extra field `bench_t` (Unix
//! microseconds, taken just before the write). PostgreSQL runs with `track_commit_timestamp = on`
//! (set with `ALTER SYSTEM`, then a restart), so each record's exact commit time is
//! `pg_xact_commit_timestamp(xmin)` of its `cdr_record` row: latency = commit time - append time,
//! both read from the same host clock. Nothing is added to the schema. A phase that cannot keep
//! up reports its achieved append and commit rates and how long the backlog took to drain.
//!
//! `cargo bench -p nats-cdr-workloads --bench pipeline` (env `PIPELINE_BENCH_SECS`, default 10;
//! `PIPELINE_BENCH_RATES`, default `1000,10000`; `PIPELINE_BENCH_BRIDGE_ARGS`, extra bridge flags).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use support::db::count;
use support::load_average;
use support::pipeline::{Pipeline, append};

/// Worker flags equal to its shipped defaults (the harness would otherwise use test settings).
const WORKER_DEFAULTS: [&str; 10] = [
    "--batch-size",
    "500",
    "--ack-wait",
    "30s",
    "--max-deliver",
    "5",
    "--fetch-expiry",
    "5s",
    "--max-backoff",
    "30s",
];

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// The two lines of answered call `n` of phase `tag`, stamped with `t`.
fn call(tag: &str, n: u64, t: i64) -> [Vec<u8>; 2] {
    let call = format!("{tag}-{n}@192.0.2.10");
    let line = |method: &str, time: i64| {
        serde_json::to_vec(&json!({
            "method": method, "from_tag": format!("f{n}"), "to_tag": format!("t{n}"),
            "callid": call, "sip_code": "200", "sip_reason": "OK", "time": time,
            "src_user": format!("49{n:010}"), "dst_user": format!("49{:010}", n + 1),
            "src_ip": "192.0.2.10", "bench_t": t,
        }))
        .unwrap()
    };
    let start = 1_763_800_000 + n as i64;
    [line("INVITE", start), line("BYE", start + 60)]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

struct Phase {
    rate: u64,
    published_at_end: u64,
    /// Append -> stored in the stream (the bridge's part), ms, sorted.
    stored_ms: Vec<f64>,
    committed_at_end: u64,
    appended: u64,
    append_secs: f64,
    drain_secs: Option<f64>,
    latencies_ms: Vec<f64>,
}

async fn run_phase(p: &Pipeline, tag: &str, rate: u64, secs: u64) -> Phase {
    let file = p.file.clone();
    let tag_owned = tag.to_owned();
    let stream_before = p.stream_messages().await;
    // Appends on a thread of its own, paced by the clock (not by sleeps adding up).
    let writer = std::thread::spawn(move || {
        let tick = Duration::from_millis(10);
        let start = Instant::now();
        let total_lines = rate * secs;
        let mut written = 0u64;
        let mut n = 0u64;
        while written < total_lines {
            let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total_lines);
            if due > written {
                let t = now_micros();
                let mut lines = Vec::with_capacity((due - written) as usize + 1);
                while written < due {
                    lines.extend(call(&tag_owned, n, t));
                    n += 1;
                    written += 2;
                }
                append(&file, &lines);
            }
            std::thread::sleep(tick);
        }
        (written, start.elapsed().as_secs_f64())
    });
    let (appended, append_secs) = writer.join().unwrap();
    let done = Instant::now();
    let url = p.pg.url();
    let count_sql = format!("SELECT count(*) FROM cdr_record WHERE call_id LIKE '{tag}-%'");
    // Where the backlog sits when the writer stops: not yet published (bridge), or published
    // but not yet committed (worker).
    let published_at_end = p.stream_messages().await.saturating_sub(stream_before);
    let stored_ms = stored_latencies_ms(p, stream_before, appended).await;
    let committed_at_end = count(&url, &count_sql).await.unwrap_or(0) as u64;
    let mut drain_secs = None;
    while done.elapsed() < Duration::from_secs(120) {
        if count(&url, &count_sql).await.unwrap_or(0) as u64 >= appended {
            drain_secs = Some(done.elapsed().as_secs_f64());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out =
        p.pg.psql(
            "postgres",
            &format!(
                "SELECT (extract(epoch FROM pg_xact_commit_timestamp(xmin)) * 1000000)::bigint \
                 - (extras->>'bench_t')::bigint FROM cdr_record WHERE call_id LIKE '{tag}-%'"
            ),
        )
        .unwrap();
    let mut latencies_ms: Vec<f64> = out
        .lines()
        .filter_map(|l| l.trim().parse::<i64>().ok())
        .map(|us| us as f64 / 1000.0)
        .collect();
    latencies_ms.sort_by(f64::total_cmp);
    Phase {
        rate,
        published_at_end,
        stored_ms,
        committed_at_end,
        appended,
        append_secs,
        drain_secs,
        latencies_ms,
    }
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("PIPELINE_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let rates: Vec<u64> = std::env::var("PIPELINE_BENCH_RATES")
        .unwrap_or_else(|_| "1000,10000".to_owned())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();

    let mut p = Pipeline::start().await;
    p.pg.psql("postgres", "ALTER SYSTEM SET track_commit_timestamp = on")
        .unwrap();
    p.pg.restart().unwrap();
    assert_eq!(
        p.pg.psql("postgres", "SHOW track_commit_timestamp")
            .unwrap(),
        "on"
    );
    // PIPELINE_BENCH_BRIDGE_ARGS: extra bridge flags, e.g. `--poll-interval 20ms`.
    let bridge_args = std::env::var("PIPELINE_BENCH_BRIDGE_ARGS").unwrap_or_default();
    let bridge_args: Vec<&str> = bridge_args.split_whitespace().collect();
    p.start_bridge_with(&bridge_args);
    p.start_worker(&WORKER_DEFAULTS);
    // Warm up: schema migrated, consumer bound, first batch through.
    run_phase(&p, "warmup", 200, 2).await;

    let floor = fsync_latencies_ms(p.nats.dir(), 500);
    let version = support::nats_server_version();
    let load_before = load_average();
    let mut rows = Vec::new();
    for &rate in &rates {
        let phase = run_phase(&p, &format!("r{rate}"), rate, secs).await;
        let bridge_rss = p.bridge.as_ref().and_then(|b| b.peak_rss_kib());
        let worker_rss = p.workers.last().and_then(|w| w.peak_rss_kib());
        rows.push((phase, bridge_rss, worker_rss));
    }

    println!(
        "\npipeline: file -> kam-cdr-bridge -> {version} (R1 file stream, sync_interval: always, allow_atomic) \
         -> cdr-worker -> PostgreSQL; bridge and worker defaults, extra bridge flags {bridge_args:?}; \
         {secs} s per rate; latency = pg_xact_commit_timestamp - append time; load average {load_before} before, {} after",
        load_average()
    );
    println!(
        "floor: one 450-byte write + fdatasync on the server's disk: p50 {:.2} ms, p99 {:.2} ms",
        percentile(&floor, 50.0),
        percentile(&floor, 99.0)
    );
    println!(
        "| target lines/s | appended/s | end to end/s | published / committed when the writer stopped | \
         append -> stored p50 / p99 ms | p50 ms | p90 ms | p99 ms (goal) | max ms | backlog drained (goal 5 s) | bridge VmHWM (goal 32 MiB) | worker VmHWM (goal 64 MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (phase, bridge_rss, worker_rss) in rows {
        let l = &phase.latencies_ms;
        let total_secs = phase.append_secs + phase.drain_secs.unwrap_or(f64::NAN);
        let goal = if phase.rate <= 1000 { 50 } else { 250 };
        let kib =
            |v: Option<u64>| v.map_or("?".to_owned(), |v| format!("{:.1} MiB", v as f64 / 1024.0));
        println!(
            "| {} | {:.0} | {:.0} | {} / {} of {} | {:.1} / {:.1} | {:.1} | {:.1} | {:.1} ({goal}) | {:.1} | {} | {} | {} |",
            phase.rate,
            phase.appended as f64 / phase.append_secs,
            phase.appended as f64 / total_secs,
            phase.published_at_end,
            phase.committed_at_end,
            phase.appended,
            percentile(&phase.stored_ms, 50.0),
            percentile(&phase.stored_ms, 99.0),
            percentile(l, 50.0),
            percentile(l, 90.0),
            percentile(l, 99.0),
            l.last().copied().unwrap_or(f64::NAN),
            phase
                .drain_secs
                .map_or("NOT (timeout 120 s)".to_owned(), |s| format!("{s:.2} s")),
            kib(bridge_rss),
            kib(worker_rss),
        );
    }
    p.stop_all();
}

/// Latencies in ms of `n` appends of one 450-byte record, each followed by `fdatasync`, to a file
/// in `dir`; sorted.
fn fsync_latencies_ms(dir: &std::path::Path, n: usize) -> Vec<f64> {
    use std::io::Write;
    let path = dir.join("fsync-latency");
    let mut file = std::fs::File::create(&path).unwrap();
    let record = [b'x'; 450];
    let mut out: Vec<f64> = (0..n)
        .map(|_| {
            let start = Instant::now();
            file.write_all(&record).unwrap();
            file.sync_data().unwrap();
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    drop(file);
    std::fs::remove_file(&path).unwrap();
    out.sort_by(f64::total_cmp);
    out
}

/// Append -> stored latencies (ms, sorted) of the `count` raw lines stored after stream sequence
/// `after`: the server's receive time of each message minus the `bench_t` in its line.
async fn stored_latencies_ms(p: &Pipeline, after: u64, count: u64) -> Vec<f64> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use futures::StreamExt;
    let stream = p.js.get_stream("AKIRA_CDR").await.unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            filter_subject: "cdr.raw".to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: after + 1,
            },
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::with_capacity(count as usize);
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.len() as u64) < count && Instant::now() < deadline {
        let mut batch = consumer
            .batch()
            .max_messages(1000)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .unwrap();
        let mut got = 0;
        while let Some(Ok(message)) = batch.next().await {
            got += 1;
            let Ok(info) = message.info() else { continue };
            let stored_us = (info.published.unix_timestamp_nanos() / 1000) as i64;
            let line: serde_json::Value = match serde_json::from_slice(&message.payload) {
                Ok(line) => line,
                Err(_) => continue,
            };
            if let Some(t) = line["bench_t"].as_i64() {
                out.push((stored_us - t) as f64 / 1000.0);
            }
        }
        if got == 0 {
            break;
        }
    }
    out.sort_by(f64::total_cmp);
    out
}
