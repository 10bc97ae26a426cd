//! The worker's SQL merge against the contract's `merge`, on a real PostgreSQL: every record set
//! (answered, failed 486, cancelled 487, BYE-only, duplicated, out of order, ties, concurrent
//! writers) gives the row the contract computes.

use std::time::Duration;

use nats_cdr_testsupport::Postgres;
use nats_cdr_workloads::contract::record::parse_line;
use nats_cdr_workloads::worker::{RecordRow, Store};
use serde_json::json;

use crate::support::Rng;
use crate::support::acc::{Line, expected, scenario};
use crate::support::db::{assert_same, stored_cdrs};

fn row(line: &Line) -> RecordRow {
    RecordRow {
        msg_id: line.id(),
        record: parse_line(&line.bytes).unwrap(),
        source_node: Some(line.node.clone()),
        stream_seq: None,
    }
}

fn raw(node: &str, value: serde_json::Value) -> Line {
    Line {
        node: node.to_owned(),
        bytes: serde_json::to_vec(&value).unwrap(),
    }
}

/// Record sets where only the tie-breaks decide.
fn tricky_lines() -> Vec<Line> {
    let mut lines = Vec::new();
    // Two final failures at the same instant: the msg id (bytewise) decides.
    for (code, reason) in [
        ("486", "Busy Here"),
        ("603", "Decline"),
        ("404", "Not Found"),
    ] {
        lines.push(raw(
            "sip-01",
            json!({"method": "INVITE", "callid": "tie-fail", "sip_code": code,
                   "sip_reason": reason, "time": 1_700_000_100, "src_user": code}),
        ));
    }
    // BYE before the answer: no duration. Re-INVITE 200 later: start is the earliest.
    lines.push(raw(
        "sip-02",
        json!({"method": "BYE", "callid": "early-bye", "time": 1_700_000_000}),
    ));
    lines.push(raw(
        "sip-02",
        json!({"method": "INVITE", "callid": "early-bye", "sip_code": 200, "time": 1_700_000_050}),
    ));
    lines.push(raw("sip-02", json!({"method": "INVITE", "callid": "early-bye", "sip_code": 200, "time": 1_700_000_090, "x": 1.5})));
    // Provisional and odd codes only: unknown; primary by time then id.
    lines.push(raw("sip-01", json!({"method": "INVITE", "callid": "prov", "sip_code": "180", "time": "2023-11-14 22:13:20"})));
    lines.push(raw("sip-01", json!({"method": "OPTIONS", "callid": "prov", "sip_code": "200", "time": "2023-11-14T22:13:20Z"})));
    // Sub-millisecond duration rounding down, equal BYEs, numbers and unicode in extras.
    lines.push(raw("sip-01", json!({"method": "INVITE", "callid": "round", "sip_code": 200, "time": 1_700_000_000.000_9, "src_user": "ünï", "n": 12_345_678_901_234_i64})));
    lines.push(raw(
        "sip-01",
        json!({"method": "bye", "callid": "round", "time": 1_700_000_001.000_8}),
    ));
    lines.push(raw(
        "sip-02",
        json!({"method": "BYE", "callid": "round", "time": 1_700_000_001.000_8, "dst_user": ""}),
    ));
    // Cancelled beats failed; answered beats both.
    lines.push(raw(
        "sip-01",
        json!({"method": "INVITE", "callid": "cxl", "sip_code": 487, "time": 1_700_000_000}),
    ));
    lines.push(raw(
        "sip-01",
        json!({"method": "INVITE", "callid": "cxl", "sip_code": 480, "time": 1_700_000_009}),
    ));
    lines.push(raw(
        "sip-01",
        json!({"method": "INVITE", "callid": "mix", "sip_code": 487, "time": 1_700_000_000}),
    ));
    lines.push(raw(
        "sip-01",
        json!({"method": "BYE", "callid": "mix", "time": 1_700_000_020}),
    ));
    lines
}

async fn fresh_store(pg: &Postgres, name: &str) -> (Store, String) {
    pg.create_database(name).unwrap();
    let url = pg.url_for(name);
    let store = Store::connect_lazy(&url, 8, Duration::from_secs(10)).unwrap();
    store.migrate().await.unwrap();
    (store, url)
}

#[tokio::test]
async fn sql_merge_matches_contract_merge_in_any_order_and_chunking() {
    let pg = Postgres::start().unwrap();
    let mut all = scenario("m", 70);
    all.extend(tricky_lines());
    let want = expected(&all);
    for seed in 1..=4u64 {
        let (store, url) = fresh_store(&pg, &format!("merge{seed}")).await;
        let mut rng = Rng::new(seed * 7919);
        // Every record at least once, some up to three times, shuffled, in random chunks.
        let mut rows: Vec<RecordRow> = Vec::new();
        for line in &all {
            for _ in 0..1 + rng.below(3) {
                rows.push(row(line));
            }
        }
        rng.shuffle(&mut rows);
        let mut inserted = 0;
        let mut duplicates = 0;
        let mut rest: &[RecordRow] = &rows;
        while !rest.is_empty() {
            let take = (1 + rng.below(40)).min(rest.len());
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            let refs: Vec<&RecordRow> = chunk.iter().collect();
            let outcome = store.write(&refs).await.unwrap();
            inserted += outcome.inserted;
            duplicates += outcome.duplicates;
        }
        assert_eq!(
            inserted,
            all.len() as u64,
            "each distinct record stored once"
        );
        assert_eq!(inserted + duplicates, rows.len() as u64);
        assert_same(&stored_cdrs(&url).await, &want);
        // Replaying everything changes nothing.
        let refs: Vec<&RecordRow> = rows.iter().collect();
        let again = store.write(&refs).await.unwrap();
        assert_eq!((again.inserted, again.cdrs_updated), (0, 0));
        assert_same(&stored_cdrs(&url).await, &want);
    }
}

#[tokio::test]
async fn concurrent_writers_of_the_same_calls_lose_no_record() {
    let pg = Postgres::start().unwrap();
    let (store, url) = fresh_store(&pg, "concurrent").await;
    let all = scenario("c", 60);
    let want = expected(&all);
    let mut tasks = Vec::new();
    for writer in 0..4u64 {
        let store = store.clone();
        let mut rows: Vec<RecordRow> = all.iter().map(row).collect();
        let mut rng = Rng::new(writer + 1);
        rng.shuffle(&mut rows);
        tasks.push(tokio::spawn(async move {
            for chunk in rows.chunks(5) {
                let refs: Vec<&RecordRow> = chunk.iter().collect();
                store.write(&refs).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_same(&stored_cdrs(&url).await, &want);
}

#[tokio::test]
async fn refused_data_and_unreachable_database_are_told_apart() {
    let pg = Postgres::start().unwrap();
    let (store, _url) = fresh_store(&pg, "refuse").await;
    let nul = raw(
        "sip-01",
        json!({"method": "BYE", "callid": "nul", "sip_reason": "a\u{0}b", "time": 1}),
    );
    let error = store.write(&[&row(&nul)]).await.unwrap_err();
    assert!(error.is_data_error(), "{error:?}");
    assert_eq!(error.reason(), "db_rejected");

    let dead = Store::connect_lazy(
        "postgres://postgres@127.0.0.1:1/none",
        1,
        Duration::from_secs(1),
    )
    .unwrap();
    let good = raw(
        "sip-01",
        json!({"method": "BYE", "callid": "ok", "time": 1}),
    );
    let error = dead.write(&[&row(&good)]).await.unwrap_err();
    assert!(!error.is_data_error(), "{error:?}");
    assert_eq!(error.reason(), "db_unavailable");
}
