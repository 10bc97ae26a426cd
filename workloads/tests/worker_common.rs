//! Shared helpers of the cdr-worker integration tests (included with `#[path]`; also built as an
//! empty test binary of its own).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use nats_cdr_workloads::contract::headers::{CDR_SOURCE, NATS_MSG_ID};
use nats_cdr_workloads::contract::merge::{MergedCdr, merge};
use nats_cdr_workloads::contract::msg_id::msg_id;
use nats_cdr_workloads::contract::record::{AccRecord, parse_line};
use nats_cdr_workloads::contract::subjects::{CDR_RAW, DEFAULT_STREAM_NAME, STREAM_SUBJECTS};
use serde_json::json;

/// One raw line as the bridge would publish it.
#[derive(Debug, Clone)]
pub struct Line {
    pub node: String,
    pub bytes: Vec<u8>,
}

impl Line {
    pub fn id(&self) -> String {
        msg_id(&self.node, &self.bytes)
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
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

fn acc_line(
    call_id: &str,
    method: &str,
    code: &str,
    reason: &str,
    time: serde_json::Value,
    extra: serde_json::Value,
) -> Vec<u8> {
    let mut object = json!({
        "method": method,
        "from_tag": format!("ft-{call_id}"),
        "to_tag": format!("tt-{call_id}-{code}"),
        "callid": call_id,
        "sip_code": code,
        "sip_reason": reason,
        "time": time,
        "src_user": format!("src{}", call_id.len()),
        "dst_user": format!("dst-{call_id}"),
        "src_ip": "10.0.0.1",
    });
    if let (Some(map), Some(more)) = (object.as_object_mut(), extra.as_object()) {
        for (k, v) in more {
            map.insert(k.clone(), v.clone());
        }
    }
    serde_json::to_vec(&object).unwrap()
}

/// The lines of call number `n` (`prefix`-scoped call id), of a shape chosen by `n % 7`:
/// answered (INVITE 200 + BYE), failed 486 after a 407, cancelled 487, BYE-only, answered with
/// a syslog prefix and float times, unknown (ACK only), answered with two BYEs and equal times.
pub fn call_lines(prefix: &str, n: usize) -> Vec<Line> {
    let call = format!("{prefix}-call-{n}@example.net");
    let t0 = 1_700_000_000i64 + (n as i64) * 7;
    let node = if n.is_multiple_of(2) {
        "sip-01"
    } else {
        "sip-02"
    };
    let lines: Vec<Vec<u8>> = match n % 7 {
        0 => vec![
            acc_line(&call, "INVITE", "200", "OK", json!(t0), json!({})),
            acc_line(
                &call,
                "BYE",
                "200",
                "OK",
                json!(t0 + 65),
                json!({"cause": 16}),
            ),
        ],
        1 => vec![
            acc_line(
                &call,
                "INVITE",
                "407",
                "Proxy Authentication Required",
                json!(t0),
                json!({}),
            ),
            acc_line(
                &call,
                "INVITE",
                "486",
                "Busy Here",
                json!(t0 + 2),
                json!({"q": [1, 2]}),
            ),
        ],
        2 => vec![acc_line(
            &call,
            "INVITE",
            "487",
            "Request Terminated",
            json!(t0),
            json!({}),
        )],
        3 => vec![acc_line(
            &call,
            "BYE",
            "200",
            "OK",
            json!(t0 + 30),
            json!({}),
        )],
        4 => {
            let mut invite = b"Nov 22 10:00:00 sip-01 json_acc[812]: ".to_vec();
            invite.extend(acc_line(
                &call,
                "INVITE",
                "200",
                "OK",
                json!(t0 as f64 + 0.125),
                json!({}),
            ));
            vec![
                invite,
                acc_line(
                    &call,
                    "BYE",
                    "200",
                    "OK",
                    json!(t0 as f64 + 10.987_654),
                    json!({"nested": {"a": "b"}}),
                ),
            ]
        }
        5 => vec![acc_line(&call, "ACK", "", "", json!(t0), json!({}))],
        _ => vec![
            acc_line(&call, "INVITE", "200", "OK", json!(t0), json!({})),
            acc_line(
                &call,
                "BYE",
                "200",
                "OK",
                json!(t0 + 5),
                json!({"side": "caller"}),
            ),
            acc_line(
                &call,
                "BYE",
                "200",
                "OK",
                json!(t0 + 5),
                json!({"side": "callee"}),
            ),
        ],
    };
    lines
        .into_iter()
        .map(|bytes| Line {
            node: node.to_owned(),
            bytes,
        })
        .collect()
}

/// Lines of calls `0..calls`.
pub fn scenario(prefix: &str, calls: usize) -> Vec<Line> {
    (0..calls).flat_map(|n| call_lines(prefix, n)).collect()
}

/// The CDRs the contract's merge gives for `lines`, by call id.
pub fn expected(lines: &[Line]) -> BTreeMap<String, MergedCdr> {
    let records: Vec<(String, AccRecord)> = lines
        .iter()
        .map(|line| (line.id(), parse_line(&line.bytes).unwrap()))
        .collect();
    let mut calls: Vec<&str> = records.iter().map(|(_, r)| r.call_id.as_str()).collect();
    calls.sort();
    calls.dedup();
    calls
        .into_iter()
        .map(|call| (call.to_owned(), merge(call, &records).unwrap()))
        .collect()
}

/// The CDR stream, as the operator would create it.
pub async fn create_stream(js: &jetstream::Context) -> jetstream::stream::Stream {
    js.get_or_create_stream(jetstream::stream::Config {
        name: DEFAULT_STREAM_NAME.to_owned(),
        subjects: STREAM_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Publishes `lines` to `cdr.raw` the way the bridge does, awaiting every ack.
pub async fn publish(js: &jetstream::Context, lines: &[Line]) {
    publish_with(js, lines, true).await;
}

/// Publishes, with or without the `Nats-Msg-Id` header (without: a raw replay the stream
/// cannot deduplicate).
pub async fn publish_with(js: &jetstream::Context, lines: &[Line], with_id: bool) {
    for chunk in lines.chunks(256) {
        let mut acks = Vec::new();
        for line in chunk {
            let mut headers = HeaderMap::new();
            if with_id {
                headers.insert(NATS_MSG_ID, line.id().as_str());
            }
            headers.insert(CDR_SOURCE, line.node.as_str());
            acks.push(
                js.publish_with_headers(CDR_RAW, headers, line.bytes.clone().into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
}

/// Polls `check` every 100 ms until it is true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts the cdr-worker binary.
pub fn spawn_worker(nats_url: &str, database_url: &str, extra: &[&str]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cdr-worker"));
    if !extra.contains(&"--metrics-addr") {
        command.args(["--metrics-addr", "127.0.0.1:0"]);
    }
    command
        .args(["--nats-url", nats_url, "--log-format", "text"])
        .args(["--fetch-expiry-ms", "500", "--max-backoff-ms", "2000"])
        .args(extra)
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "info,nats_cdr_workloads=info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn cdr-worker")
}

/// Sends SIGTERM and waits for the exit status code.
pub fn terminate(child: &mut Child) -> Option<i32> {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "worker did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Consumer counters: (pending, ack pending).
pub async fn consumer_backlog(js: &jetstream::Context) -> (u64, usize) {
    let stream = js.get_stream(DEFAULT_STREAM_NAME).await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer("cdr-worker").await.unwrap();
    let info = consumer.info().await.unwrap();
    (info.num_pending, info.num_ack_pending)
}

/// Every stored CDR, via a fresh connection.
pub async fn stored(database_url: &str) -> BTreeMap<String, MergedCdr> {
    let pool = sqlx::PgPool::connect(database_url).await.unwrap();
    let store = nats_cdr_workloads::worker::Store::from_pool(pool.clone());
    let all = store.load_all_cdrs().await.unwrap();
    pool.close().await;
    all.into_iter().map(|c| (c.call_id.clone(), c)).collect()
}

/// Number of stored CDRs, or `None` while the table or the database is not there.
pub async fn count_cdrs(database_url: &str) -> Option<i64> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect(database_url)
        .await
        .ok()?;
    let count = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cdr")
        .fetch_one(&pool)
        .await
        .ok();
    pool.close().await;
    count
}

/// Asserts the stored CDRs are exactly `expected`, field by field.
pub fn assert_same(stored: &BTreeMap<String, MergedCdr>, expected: &BTreeMap<String, MergedCdr>) {
    let missing: Vec<&String> = expected
        .keys()
        .filter(|k| !stored.contains_key(*k))
        .collect();
    let extra: Vec<&String> = stored
        .keys()
        .filter(|k| !expected.contains_key(*k))
        .collect();
    assert!(missing.is_empty(), "missing calls: {missing:?}");
    assert!(extra.is_empty(), "unexpected calls: {extra:?}");
    for (call, want) in expected {
        assert_eq!(&stored[call], want, "CDR of {call}");
    }
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on 127.0.0.1:`port`: the status code and body, `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Some((status, body))
}

/// The value of the metric line starting with `name` on /metrics of `port`.
pub fn scrape(port: u16, name: &str) -> Option<f64> {
    let (_, body) = http_get(port, "/metrics")?;
    body.lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// One dead letter read back from the stream.
#[derive(Debug, Clone)]
pub struct Letter {
    pub subject: String,
    pub original_msg_id: String,
    pub source_node: Option<String>,
    pub payload: Vec<u8>,
}

/// Every message of the stream under `cdr.dlq.>`, read with plain stream gets.
pub async fn dead_letters(js: &jetstream::Context) -> Vec<Letter> {
    use nats_cdr_workloads::contract::subjects::DEAD_LETTER_PREFIX;
    use nats_cdr_workloads::worker::dead_letter::DLQ_ORIGINAL_MSG_ID;
    let mut stream = js.get_stream(DEFAULT_STREAM_NAME).await.unwrap();
    let state = stream.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue;
        };
        if !message
            .subject
            .as_str()
            .starts_with(&format!("{DEAD_LETTER_PREFIX}."))
        {
            continue;
        }
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|value| value.as_str().to_owned())
        };
        out.push(Letter {
            subject: message.subject.to_string(),
            original_msg_id: header(DLQ_ORIGINAL_MSG_ID).unwrap_or_default(),
            source_node: header(CDR_SOURCE),
            payload: message.payload.to_vec(),
        });
    }
    out
}

/// Replays dead letters the way an operator would: the original bytes back to `cdr.raw` with
/// their `cdr-source` and no `Nats-Msg-Id`, so the worker derives the original record id and the
/// store drops whatever it already has.
pub async fn replay(js: &jetstream::Context, letters: &[Letter]) {
    for letter in letters {
        let mut headers = HeaderMap::new();
        if let Some(node) = &letter.source_node {
            headers.insert(CDR_SOURCE, node.as_str());
        }
        js.publish_with_headers(CDR_RAW, headers, letter.payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}
