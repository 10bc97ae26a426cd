//! cdr-worker in process against real nats-server and PostgreSQL: the happy path, replays, and
//! poison messages.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use nats_cdr_observability::{CancellationToken, Readiness};
use nats_cdr_testsupport::{NatsServer, Postgres};
use nats_cdr_workloads::contract::headers::{CDR_SOURCE, DLQ_DETAIL, DLQ_REASON};
use nats_cdr_workloads::contract::subjects::DEFAULT_STREAM_NAME;
use nats_cdr_workloads::worker::dead_letter::DLQ_ORIGINAL_MSG_ID;
use nats_cdr_workloads::worker::{self, Metrics, WorkerConfig};
use tokio::task::JoinHandle;

use crate::support::acc::{Line, expected, scenario};
use crate::support::db::{assert_same, stored_cdrs as stored};
use crate::support::nats::{create_stream, message_count, publish, publish_with, wait_drained};
use crate::support::{Rng, wait_until};

struct Running {
    metrics: Metrics,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), worker::WorkerError>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("worker stops")
            .unwrap()
            .expect("worker returns Ok");
    }
}

fn config(nats: &NatsServer, database_url: &str) -> WorkerConfig {
    let mut config = WorkerConfig::new(nats.url(), database_url);
    config.batch_size = 100;
    config.concurrency = 2;
    config.fetch_expiry = Duration::from_millis(500);
    config.max_backoff = Duration::from_secs(2);
    config.pending_refresh = Duration::from_millis(500);
    config
}

fn start(config: WorkerConfig) -> Running {
    let metrics = Metrics::default();
    let readiness = Arc::new(Readiness::new("starting"));
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(worker::run(
        config,
        metrics.clone(),
        readiness.clone(),
        shutdown.clone(),
    ));
    Running {
        metrics,
        readiness,
        shutdown,
        task,
    }
}

async fn setup() -> (NatsServer, Postgres, jetstream::Context) {
    let nats = NatsServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    let js = create_stream(&nats.url(), false).await;
    (nats, pg, js)
}

async fn wait_committed(running: &Running, count: u64) {
    let metrics = running.metrics.clone();
    wait_until(Duration::from_secs(40), "messages committed", move || {
        let committed = metrics.committed.get();
        async move { committed >= count }
    })
    .await;
}

#[tokio::test]
async fn happy_path_every_cdr_is_the_contract_merge() {
    let (nats, pg, js) = setup().await;
    let lines = scenario("happy", 210);
    let (before, after) = lines.split_at(lines.len() / 2);
    publish(&js, before).await;
    let running = start(config(&nats, &pg.url()));
    publish(&js, after).await;
    wait_committed(&running, lines.len() as u64).await;
    assert_same(&stored(&pg.url()).await, &expected(&lines));
    wait_drained(&js, Duration::from_secs(20)).await;
    assert_eq!(running.metrics.duplicates.get(), 0);
    assert_eq!(running.metrics.records_inserted.get(), lines.len() as u64);
    assert!(running.readiness.not_ready_reason().is_none());
    // Idle now: the pending gauges come from consumer info.
    let metrics = running.metrics.clone();
    wait_until(Duration::from_secs(5), "gauges", move || {
        let (p, a) = (
            metrics.consumer_pending.get(),
            metrics.consumer_ack_pending.get(),
        );
        async move { p == 0 && a == 0 }
    })
    .await;
    running.stop().await;
    let records = pg
        .psql("postgres", "SELECT count(*) FROM cdr_record")
        .unwrap();
    assert_eq!(records, lines.len().to_string());
}

#[tokio::test]
async fn replays_in_any_order_leave_the_table_unchanged_and_are_counted() {
    let (nats, pg, js) = setup().await;
    let lines = scenario("dup", 105);
    publish(&js, &lines).await;
    let running = start(config(&nats, &pg.url()));
    wait_committed(&running, lines.len() as u64).await;
    let want = expected(&lines);
    assert_same(&stored(&pg.url()).await, &want);
    let snapshot_sql = "SELECT md5(string_agg(t::text, '|' ORDER BY call_id)) FROM cdr AS t";
    let snapshot = pg.psql("postgres", snapshot_sql).unwrap();

    // The same lines again with their ids: the stream's duplicate window drops them.
    let stream_before = message_count(&js).await;
    publish(&js, &lines).await;
    let stream_after = message_count(&js).await;
    assert_eq!(
        stream_before, stream_after,
        "re-publishes inside the window are dropped"
    );

    // Raw replays (new stream sequences, no Nats-Msg-Id), shuffled, some twice: the worker
    // derives the same ids and absorbs them.
    let mut replay: Vec<Line> = lines.iter().chain(lines.iter().take(40)).cloned().collect();
    Rng::new(99).shuffle(&mut replay);
    publish_with(&js, &replay, false).await;
    wait_committed(&running, (lines.len() + replay.len()) as u64).await;
    assert_eq!(running.metrics.duplicates.get(), replay.len() as u64);
    assert_eq!(running.metrics.records_inserted.get(), lines.len() as u64);
    assert_same(&stored(&pg.url()).await, &want);
    assert_eq!(
        pg.psql("postgres", snapshot_sql).unwrap(),
        snapshot,
        "rows not even rewritten"
    );
    wait_drained(&js, Duration::from_secs(20)).await;
    running.stop().await;
}

#[tokio::test]
async fn poison_is_dead_lettered_and_never_blocks_its_batch() {
    let (nats, pg, js) = setup().await;
    let good = scenario("poison", 35);
    let not_json = Line {
        node: "sip-01".into(),
        bytes: b"Nov 22 10:00:00 sip-01 garbage without json".to_vec(),
    };
    let no_callid = Line {
        node: "sip-02".into(),
        bytes: br#"{"method":"INVITE","sip_code":"200","time":1700000000}"#.to_vec(),
    };
    // Parses, but PostgreSQL refuses a NUL in text: bisected out, retried, then dead-lettered.
    let refused = Line {
        node: "sip-01".into(),
        bytes: br#"{"method":"BYE","callid":"nul-call","sip_reason":"a\u0000b","time":1700000000}"#
            .to_vec(),
    };
    let mut lines = good.clone();
    lines.insert(3, not_json.clone());
    lines.insert(20, refused.clone());
    lines.insert(40, no_callid.clone());
    publish(&js, &lines).await;
    let mut config = config(&nats, &pg.url());
    config.max_deliver = 2;
    let running = start(config);
    wait_committed(&running, good.len() as u64).await;
    assert_same(&stored(&pg.url()).await, &expected(&good));

    let metrics = running.metrics.clone();
    wait_until(Duration::from_secs(20), "three dead letters", move || {
        let n = ["not_json", "missing_callid", "db_rejected"].map(|r| metrics.dead_letters_of(r));
        async move { n == [1, 1, 1] }
    })
    .await;
    let stream = js.get_stream(DEFAULT_STREAM_NAME).await.unwrap();
    for (line, reason) in [
        (&not_json, "not_json"),
        (&no_callid, "missing_callid"),
        (&refused, "db_rejected"),
    ] {
        let letter = stream
            .get_last_raw_message_by_subject(&format!("cdr.dlq.{reason}"))
            .await
            .unwrap();
        assert_eq!(
            letter.payload.as_ref(),
            line.bytes.as_slice(),
            "original bytes of {reason}"
        );
        assert_eq!(letter.headers.get(DLQ_REASON).unwrap().as_str(), reason);
        assert!(!letter.headers.get(DLQ_DETAIL).unwrap().as_str().is_empty());
        assert_eq!(
            letter.headers.get(DLQ_ORIGINAL_MSG_ID).unwrap().as_str(),
            line.id()
        );
        assert_eq!(letter.headers.get(CDR_SOURCE).unwrap().as_str(), line.node);
    }
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM cdr WHERE call_id = 'nul-call'"
        )
        .unwrap(),
        "0"
    );
    wait_drained(&js, Duration::from_secs(20)).await;
    running.stop().await;
}
