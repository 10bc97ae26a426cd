//! The cdr-worker binary under failures: kill -9 mid-batch, PostgreSQL down, two workers with
//! redeliveries, workers killed on a message's last delivery. Each ends with every call stored
//! exactly once with the contract's merge.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "worker_common.rs"]
mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::{
    Rng, assert_same, consumer_backlog, count_cdrs, create_stream, dead_letters, expected,
    free_port, http_get, publish, replay, scenario, scrape, spawn_worker, stored, terminate,
    wait_until,
};
use nats_cdr_testsupport::{NatsServer, Postgres};

async fn setup() -> (NatsServer, Postgres, jetstream::Context) {
    let nats = NatsServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    create_stream(&js).await;
    (nats, pg, js)
}

async fn wait_all_stored(url: &str, calls: usize, timeout: Duration) {
    wait_until(timeout, "every call stored", || async {
        count_cdrs(url).await == Some(calls as i64)
    })
    .await;
}

async fn wait_drained(js: &jetstream::Context) {
    wait_until(Duration::from_secs(30), "consumer drained", || async {
        consumer_backlog(js).await == (0, 0)
    })
    .await;
}

#[tokio::test]
async fn kill_9_mid_batch_repeatedly_loses_and_doubles_nothing() {
    let (nats, pg, js) = setup().await;
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
        "--ack-wait-ms",
        "2000",
        "--max-deliver",
        "20",
    ];
    let mut rng = Rng::new(4242);
    for _ in 0..5 {
        let mut worker = spawn_worker(&nats.url(), &pg.url(), &args);
        tokio::time::sleep(Duration::from_millis(700 + rng.below(800) as u64)).await;
        worker.kill().unwrap(); // SIGKILL
        worker.wait().unwrap();
    }
    publisher.await.unwrap();
    let mut worker = spawn_worker(&nats.url(), &pg.url(), &args);
    wait_all_stored(&pg.url(), want.len(), Duration::from_secs(60)).await;
    wait_drained(&js).await;
    assert_same(&stored(&pg.url()).await, &want);
    let records = pg
        .psql("postgres", "SELECT count(*) FROM cdr_record")
        .unwrap();
    assert_eq!(records, lines.len().to_string(), "each record stored once");
    assert_eq!(terminate(&mut worker), Some(0));
}

#[tokio::test]
async fn postgres_down_the_worker_waits_then_catches_up() {
    let (nats, mut pg, js) = setup().await;
    let lines = scenario("pgdown", 600);
    let want = expected(&lines);
    let (first, second) = lines.split_at(lines.len() / 2);
    let port = free_port();
    let metrics_addr = format!("127.0.0.1:{port}");
    let mut worker = spawn_worker(
        &nats.url(),
        &pg.url(),
        &[
            "--batch-size",
            "100",
            "--ack-wait-ms",
            "3000",
            "--metrics-addr",
            &metrics_addr,
        ],
    );
    publish(&js, first).await;
    let first_calls = expected(first).len();
    wait_until(Duration::from_secs(30), "first half stored", || async {
        count_cdrs(&pg.url()).await >= Some(first_calls as i64 - 2)
    })
    .await;
    assert_eq!(http_get(port, "/readyz").map(|r| r.0), Some(200));

    pg.stop();
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
        worker.try_wait().unwrap().is_none(),
        "worker exited while the database was down"
    );
    assert_eq!(http_get(port, "/healthz").map(|r| r.0), Some(200));

    pg.restart().unwrap();
    wait_all_stored(&pg.url(), want.len(), Duration::from_secs(45)).await;
    wait_drained(&js).await;
    assert_same(&stored(&pg.url()).await, &want);
    wait_until(Duration::from_secs(10), "ready again", || async {
        http_get(port, "/readyz").map(|r| r.0) == Some(200)
    })
    .await;
    assert!(scrape(port, "cdr_worker_errors_total").is_some());
    assert_eq!(terminate(&mut worker), Some(0));
}

#[tokio::test]
async fn two_workers_with_redeliveries_neither_deadlock_nor_lose_a_merge() {
    let (nats, pg, js) = setup().await;
    let lines = scenario("two", 1200);
    let want = expected(&lines);
    let ports = [free_port(), free_port()];
    let mut workers: Vec<_> = ports
        .iter()
        .map(|port| {
            let addr = format!("127.0.0.1:{port}");
            spawn_worker(
                &nats.url(),
                &pg.url(),
                &[
                    "--batch-size",
                    "100",
                    "--concurrency",
                    "2",
                    "--ack-wait-ms",
                    "1000",
                    "--max-deliver",
                    "50",
                    "--metrics-addr",
                    &addr,
                ],
            )
        })
        .collect();
    // Records of one call land in different batches of different workers.
    let mut shuffled = lines.clone();
    Rng::new(7).shuffle(&mut shuffled);
    let (first, second) = shuffled.split_at(shuffled.len() / 2);
    publish(&js, first).await;
    wait_until(Duration::from_secs(30), "some calls stored", || async {
        count_cdrs(&pg.url()).await.unwrap_or(0) > 0
    })
    .await;
    // Stall every writer for longer than the ack wait: in-flight batches are redelivered to the
    // other worker while the first still holds them.
    let blocker = {
        let url = pg.url_for("postgres");
        std::thread::spawn(move || {
            std::process::Command::new("psql")
                .args(["-X", "-q", "-d", &url, "-c"])
                .arg("BEGIN; LOCK TABLE cdr_record IN EXCLUSIVE MODE; SELECT pg_sleep(3); COMMIT;")
                .output()
                .unwrap()
        })
    };
    publish(&js, second).await;
    let output = blocker.join().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_all_stored(&pg.url(), want.len(), Duration::from_secs(60)).await;
    wait_drained(&js).await;
    assert_same(&stored(&pg.url()).await, &want);
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
        assert_eq!(terminate(worker), Some(0));
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
    let (nats, pg, js) = setup().await;
    let args = [
        "--batch-size",
        "100",
        "--concurrency",
        "2",
        "--ack-wait-ms",
        "1000",
        "--max-deliver",
        "2",
    ];
    // Migrations first, so the lock below has a table to lock.
    let mut worker = spawn_worker(&nats.url(), &pg.url(), &args);
    wait_until(Duration::from_secs(30), "schema", || async {
        count_cdrs(&pg.url()).await == Some(0)
    })
    .await;
    assert_eq!(terminate(&mut worker), Some(0));
    let stream = js.get_stream("AKIRA_CDR").await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer("cdr-worker").await.unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(info.config.max_deliver, -1, "server-side max_deliver");

    let lines = scenario("strand", 400);
    let want = expected(&lines);
    let blocker = {
        let url = pg.url_for("postgres");
        std::thread::spawn(move || {
            std::process::Command::new("psql")
                .args(["-X", "-q", "-d", &url, "-c"])
                .arg("BEGIN; LOCK TABLE cdr_record IN EXCLUSIVE MODE; SELECT pg_sleep(9); COMMIT;")
                .output()
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&js, &lines).await;
    for _ in 0..4 {
        let mut worker = spawn_worker(&nats.url(), &pg.url(), &args);
        wait_until(
            Duration::from_secs(10),
            "the worker holds messages",
            || async { consumer_backlog(&js).await.1 > 0 },
        )
        .await;
        // Past the ack wait of the batches it holds: their next delivery goes to the next worker.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        worker.kill().unwrap(); // SIGKILL
        worker.wait().unwrap();
    }
    let mut worker = spawn_worker(&nats.url(), &pg.url(), &args);
    let output = blocker.join().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_drained(&js).await;

    // Nothing stranded: every record is stored or dead-lettered, and some were dead-lettered.
    let letters = dead_letters(&js).await;
    let stored_ids = pg
        .psql("postgres", "SELECT msg_id FROM cdr_record")
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
    wait_all_stored(&pg.url(), want.len(), Duration::from_secs(30)).await;
    wait_drained(&js).await;
    let records = pg
        .psql("postgres", "SELECT count(*) FROM cdr_record")
        .unwrap();
    assert_eq!(records, lines.len().to_string(), "each record stored once");
    assert_same(&stored(&pg.url()).await, &want);
    assert_eq!(terminate(&mut worker), Some(0));
}
