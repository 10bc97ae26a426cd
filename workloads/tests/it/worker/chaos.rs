//! The cdr-worker binary under failures: kill -9 mid-batch, PostgreSQL down, two workers with
//! redeliveries, workers killed on a message's last delivery. Each ends with every call stored
//! exactly once with the contract's merge.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use nats_cdr_testsupport::ports::free_port;
use nats_cdr_testsupport::{NatsServer, Postgres};
use nats_cdr_workloads::contract::merge::MergedCdr;

use crate::support::acc::{expected, scenario};
use crate::support::db::{assert_same, count_cdrs, lock_table, stored_cdrs as stored};
use crate::support::nats::{backlog, create_stream, dead_letters, publish, replay, wait_drained};
use crate::support::proc::Proc;
use crate::support::{Rng, http_get, scrape, wait_until};

/// A test's servers and stream, and a temp dir for the workers' logs.
struct Setup {
    nats: NatsServer,
    pg: Postgres,
    js: jetstream::Context,
    logs: tempfile::TempDir,
    spawned: usize,
}

async fn setup() -> Setup {
    let nats = NatsServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    let js = create_stream(&nats.url(), false).await;
    Setup {
        nats,
        pg,
        js,
        logs: tempfile::tempdir().unwrap(),
        spawned: 0,
    }
}

impl Setup {
    /// Starts the cdr-worker binary with quick fetches and back-off, and `extra`.
    fn spawn_worker(&mut self, extra: &[&str]) -> Proc {
        self.spawned += 1;
        let log = self
            .logs
            .path()
            .join(format!("worker-{}.log", self.spawned));
        let mut args = vec!["--fetch-expiry", "500ms", "--max-backoff", "2s"];
        args.extend_from_slice(extra);
        Proc::worker(&self.nats.url(), &self.pg.url(), &args, log)
    }
}

async fn wait_all_stored(url: &str, calls: usize, timeout: Duration) {
    wait_until(timeout, "every call stored", || async {
        count_cdrs(url).await == Some(calls as i64)
    })
    .await;
}

impl Setup {
    /// Waits until every call of `want` is stored and the consumer is drained, then asserts
    /// the stored CDRs are exactly `want`.
    async fn assert_settled(&self, want: &BTreeMap<String, MergedCdr>, timeout: Duration) {
        wait_all_stored(&self.pg.url(), want.len(), timeout).await;
        wait_drained(&self.js, Duration::from_secs(30)).await;
        assert_same(&stored(&self.pg.url()).await, want);
    }

    /// Rows of `cdr_record`, as psql prints the count.
    fn records(&self) -> String {
        self.pg
            .psql("postgres", "SELECT count(*) FROM cdr_record")
            .unwrap()
    }
}

#[tokio::test]
async fn kill_9_mid_batch_repeatedly_loses_and_doubles_nothing() {
    let mut s = setup().await;
    let js = s.js.clone();
    let lines = scenario("kill", 2000);
    let want = expected(&lines);
    let publisher = {
        let (js, lines) = (js.clone(), lines.clone());
        tokio::spawn(async move {
            for chunk in lines.chunks(200) {
                publish(&js, chunk).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    // Short ack wait so the killed workers' batches come back quickly; max_deliver above the
    // number of kills so the server never gives up on a message a killed worker held.
    let args = [
        "--batch-size",
        "50",
        "--ack-wait",
        "2s",
        "--max-deliver",
        "20",
    ];
    let mut rng = Rng::new(4242);
    for _ in 0..5 {
        let mut worker = s.spawn_worker(&args);
        tokio::time::sleep(Duration::from_millis(700 + rng.below(800) as u64)).await;
        worker.kill_9();
    }
    publisher.await.unwrap();
    let mut worker = s.spawn_worker(&args);
    s.assert_settled(&want, Duration::from_secs(60)).await;
    assert_eq!(
        s.records(),
        lines.len().to_string(),
        "each record stored once"
    );
    assert_eq!(worker.terminate(), Some(0));
}

#[tokio::test]
async fn postgres_down_the_worker_waits_then_catches_up() {
    let mut s = setup().await;
    let js = s.js.clone();
    let lines = scenario("pgdown", 600);
    let want = expected(&lines);
    let (first, second) = lines.split_at(lines.len() / 2);
    let port = free_port().unwrap();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut worker = s.spawn_worker(&[
        "--batch-size",
        "100",
        "--ack-wait",
        "3s",
        "--metrics-addr",
        &metrics_addr,
    ]);
    publish(&js, first).await;
    let first_calls = expected(first).len();
    wait_until(Duration::from_secs(30), "first half stored", || async {
        count_cdrs(&s.pg.url()).await >= Some(first_calls as i64 - 2)
    })
    .await;
    assert_eq!(http_get(port, "/readyz").map(|r| r.0), Some(200));

    s.pg.stop();
    publish(&js, second).await;
    wait_until(
        Duration::from_secs(20),
        "not ready while the database is down",
        || async { http_get(port, "/readyz").map(|r| r.0) == Some(503) },
    )
    .await;
    // Longer than the ack wait: the held batch must survive (progress acks), and no crash loop.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        worker.is_running(),
        "worker exited while the database was down"
    );
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));

    s.pg.restart().unwrap();
    s.assert_settled(&want, Duration::from_secs(45)).await;
    wait_until(Duration::from_secs(10), "ready again", || async {
        http_get(port, "/readyz").map(|r| r.0) == Some(200)
    })
    .await;
    assert!(scrape(port, "cdr_worker_errors_total").is_some());
    assert_eq!(worker.terminate(), Some(0));
}

#[tokio::test]
async fn two_workers_with_redeliveries_neither_deadlock_nor_lose_a_merge() {
    let mut s = setup().await;
    let js = s.js.clone();
    let lines = scenario("two", 1200);
    let want = expected(&lines);
    let ports = [free_port().unwrap(), free_port().unwrap()];
    let mut workers: Vec<_> = ports
        .iter()
        .map(|port| {
            let addr = format!("127.0.0.1:{port}");
            s.spawn_worker(&[
                "--batch-size",
                "100",
                "--concurrency",
                "2",
                "--ack-wait",
                "1s",
                "--max-deliver",
                "50",
                "--metrics-addr",
                &addr,
            ])
        })
        .collect();
    // Records of one call land in different batches of different workers.
    let mut shuffled = lines.clone();
    Rng::new(7).shuffle(&mut shuffled);
    let (first, second) = shuffled.split_at(shuffled.len() / 2);
    publish(&js, first).await;
    wait_until(Duration::from_secs(30), "some calls stored", || async {
        count_cdrs(&s.pg.url()).await.unwrap_or(0) > 0
    })
    .await;
    // Stall every writer for longer than the ack wait: in-flight batches are redelivered to the
    // other worker while the first still holds them.
    let blocker = lock_table(
        &s.pg.url_for("postgres"),
        "cdr_record",
        Duration::from_secs(3),
    );
    publish(&js, second).await;
    blocker.join().unwrap();
    s.assert_settled(&want, Duration::from_secs(60)).await;
    let duplicates: f64 = ports
        .iter()
        .map(|port| scrape(*port, "cdr_worker_duplicates_absorbed_total").unwrap_or(0.0))
        .sum();
    let committed: f64 = ports
        .iter()
        .map(|port| scrape(*port, "cdr_worker_committed_total").unwrap_or(0.0))
        .sum();
    assert!(committed >= lines.len() as f64, "{committed}");
    eprintln!("two workers: committed {committed}, duplicates absorbed {duplicates}");
    for worker in &mut workers {
        assert_eq!(worker.terminate(), Some(0));
    }
}

/// A worker killed while it holds a message on its last allowed delivery must not strand it.
///
/// With a server-side `max_deliver = 2` the server gives up on a message after its second
/// delivery, and when both holders were killed nobody ever stores or dead-letters it: a lost
/// CDR. The worker now creates the consumer with `max_deliver = -1` and enforces
/// `--max-deliver 2` itself, so the third delivery is dead-lettered (`cdr.dlq.max_deliver`,
/// original bytes) and terminated. Commits are stalled by a table lock so that every killed worker
/// holds its batches uncommitted; after the lock, every record is stored or dead-lettered,
/// nothing is pending, and replaying the dead letters completes the table exactly.
#[tokio::test]
async fn killed_on_the_last_delivery_nothing_is_stranded() {
    let mut s = setup().await;
    let js = s.js.clone();
    let args = [
        "--batch-size",
        "100",
        "--concurrency",
        "2",
        "--ack-wait",
        "1s",
        "--max-deliver",
        "2",
    ];
    // Migrations first, so the lock below has a table to lock.
    let mut worker = s.spawn_worker(&args);
    wait_until(Duration::from_secs(30), "schema", || async {
        count_cdrs(&s.pg.url()).await == Some(0)
    })
    .await;
    assert_eq!(worker.terminate(), Some(0));
    let stream = js.get_stream("AKIRA_CDR").await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer("cdr-worker").await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.config.max_deliver, -1, "server-side max_deliver");

    let lines = scenario("strand", 400);
    let want = expected(&lines);
    let blocker = lock_table(
        &s.pg.url_for("postgres"),
        "cdr_record",
        Duration::from_secs(9),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&js, &lines).await;
    for _ in 0..4 {
        let mut worker = s.spawn_worker(&args);
        wait_until(
            Duration::from_secs(10),
            "the worker holds messages",
            || async {
                backlog(&js)
                    .await
                    .is_some_and(|(_, ack_pending)| ack_pending > 0)
            },
        )
        .await;
        // Past the ack wait of the batches it holds: their next delivery goes to the next worker.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        worker.kill_9();
    }
    let mut worker = s.spawn_worker(&args);
    blocker.join().unwrap();
    wait_drained(&js, Duration::from_secs(30)).await;

    // Nothing stranded: every record is stored or dead-lettered, and some were dead-lettered.
    let letters = dead_letters(&js).await;
    let stored_ids =
        s.pg.psql("postgres", "SELECT msg_id FROM cdr_record")
            .unwrap();
    let stored_ids: std::collections::HashSet<&str> = stored_ids.lines().collect();
    let lettered: std::collections::HashSet<&str> =
        letters.iter().map(|l| l.original_msg_id.as_str()).collect();
    let stranded: Vec<String> = lines
        .iter()
        .map(|line| line.id())
        .filter(|id| !stored_ids.contains(id.as_str()) && !lettered.contains(id.as_str()))
        .collect();
    assert!(stranded.is_empty(), "stranded records: {stranded:?}");
    assert!(
        !letters.is_empty(),
        "no message exceeded max_deliver: the test did not exercise the limit"
    );
    assert!(
        letters.iter().all(|l| l.subject == "cdr.dlq.max_deliver"),
        "{:?}",
        letters.iter().map(|l| &l.subject).collect::<Vec<_>>()
    );
    eprintln!(
        "stranding: {} stored, {} dead-lettered as max_deliver",
        stored_ids.len(),
        letters.len()
    );

    // The dead letters are the original bytes: replaying them completes the table exactly.
    replay(&js, &letters).await;
    wait_all_stored(&s.pg.url(), want.len(), Duration::from_secs(30)).await;
    wait_drained(&js, Duration::from_secs(30)).await;
    assert_eq!(
        s.records(),
        lines.len().to_string(),
        "each record stored once"
    );
    assert_same(&stored(&s.pg.url()).await, &want);
    assert_eq!(worker.terminate(), Some(0));
}
