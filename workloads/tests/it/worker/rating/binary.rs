//! The cdr-worker binary rating and debiting under failures, on real nats-server and
//! PostgreSQL: killed with -9 mid-batch (some kills while a batch waits for its account locks,
//! after its records and CDRs are written), two workers with forced redeliveries, and a tariff
//! edited mid-run. Each ends with every CDR rated as the pure Rust rules rate it, every call's
//! ledger summing to its charge, and every balance exactly right.

use std::time::Duration;

use async_nats::jetstream;
use nats_cdr_testsupport::ports::free_port;
use nats_cdr_testsupport::{NatsServer, Postgres};
use nats_cdr_workloads::worker::Store;
use nats_cdr_workloads::worker::rating::RatingConfig;
use nats_cdr_workloads::worker::rating::sql::{insert_tariffs, load_ratings, load_tariffs};

use super::{T0, assert_billing, billing_lines, dec, tariffs};
use crate::support::acc::expected;
use crate::support::db::{assert_same, count_cdrs, stored_cdrs as stored};
use crate::support::nats::{backlog, create_stream, publish};
use crate::support::proc::Proc;
use crate::support::{Rng, scrape, wait_until};

/// cdr-worker as a child process, its log in a directory of the test run.
fn spawn_worker(nats_url: &str, database_url: &str, extra: &[&str]) -> Proc {
    let dir = nats_cdr_testsupport::scratch::new_dir("worker-rating").unwrap();
    Proc::worker(nats_url, database_url, extra, dir.join("worker.log"))
}

fn terminate(worker: &mut Proc) -> Option<i32> {
    worker.terminate()
}
use rust_decimal::Decimal;

/// nats-server with the stream, PostgreSQL migrated with the test tariffs.
async fn setup() -> (NatsServer, Postgres, jetstream::Context) {
    let nats = NatsServer::start().unwrap();
    let pg = Postgres::start().unwrap();
    let js = create_stream(&nats.url(), false).await;
    let store = Store::connect_lazy(&pg.url(), 2, Duration::from_secs(10)).unwrap();
    store.migrate().await.unwrap();
    insert_tariffs(store.pool(), &tariffs()).await.unwrap();
    store.pool().close().await;
    (nats, pg, js)
}

async fn wait_settled(js: &jetstream::Context, url: &str, calls: usize) {
    wait_until(Duration::from_secs(90), "every call stored", || async {
        count_cdrs(url).await == Some(calls as i64)
    })
    .await;
    wait_until(Duration::from_secs(30), "consumer drained", || async {
        backlog(js).await == Some((0, 0))
    })
    .await;
}

/// Blocks every debit (the account rows) for `how_long` from a psql session.
fn stall_accounts(url: String, how_long: Duration) -> std::thread::JoinHandle<()> {
    let sql = format!(
        "BEGIN; LOCK TABLE account IN EXCLUSIVE MODE; SELECT pg_sleep({}); COMMIT;",
        how_long.as_secs_f64()
    );
    std::thread::spawn(move || {
        let output = std::process::Command::new("psql")
            .args(["-X", "-q", "-d", &url, "-c", &sql])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    })
}

#[tokio::test]
async fn kill_9_mid_batch_leaves_every_balance_exact() {
    let (nats, pg, js) = setup().await;
    let lines = billing_lines("kill", 1500, 21, 0);
    let config = RatingConfig {
        default_country_code: Some("49".to_owned()),
        ..RatingConfig::default()
    };
    let publisher = {
        let (js, lines) = (js.clone(), lines.clone());
        tokio::spawn(async move {
            // Over the whole kill loop, so that every worker has batches to die holding.
            for chunk in lines.chunks(100) {
                publish(&js, chunk).await;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        })
    };
    let args = [
        "--batch-size",
        "50",
        "--ack-wait",
        "2s",
        "--max-deliver",
        "30",
        "--default-country-code",
        "49",
    ];
    let mut rng = Rng::new(77);
    for round in 0..6 {
        // Every other round, debits are stalled before the worker starts: it fetches full
        // batches from the backlog, writes their records and CDRs, waits for the account locks,
        // and dies there.
        let stall = (round % 2 == 1).then(|| stall_accounts(pg.url(), Duration::from_millis(2500)));
        if stall.is_some() {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        let mut worker = spawn_worker(&nats.url(), &pg.url(), &args);
        let held = if stall.is_some() {
            wait_until(
                Duration::from_secs(10),
                "the worker holds batches",
                || async { backlog(&js).await.is_some_and(|b| b.1 >= 50) },
            )
            .await;
            backlog(&js).await.map_or(0, |b| b.1)
        } else {
            tokio::time::sleep(Duration::from_millis(800 + rng.below(700) as u64)).await;
            0
        };
        worker.kill_9();
        if let Some(stall) = stall {
            stall.join().unwrap();
            eprintln!("kill -9: round {round} killed holding {held} messages, debits stalled");
        }
    }
    publisher.await.unwrap();
    let mut worker = spawn_worker(&nats.url(), &pg.url(), &args);
    wait_settled(&js, &pg.url(), expected(&lines).len()).await;
    assert_same(&stored(&pg.url()).await, &expected(&lines));
    let (charged, unrated) = assert_billing(&pg.url(), &lines, &tariffs(), &config).await;
    let stream = js.get_stream("AKIRA_CDR").await.unwrap();
    let mut consumer: jetstream::consumer::PullConsumer =
        stream.get_consumer("cdr-worker").await.unwrap();
    let delivered = consumer.info().await.unwrap().delivered.consumer_sequence;
    assert!(
        delivered >= lines.len() as u64 + 100,
        "{delivered} deliveries of {} records: the kills redelivered too little",
        lines.len()
    );
    eprintln!(
        "kill -9: {charged} calls charged, {unrated} unrated, {} redeliveries, balances exact",
        delivered - lines.len() as u64
    );
    assert_eq!(terminate(&mut worker), Some(0));
}

#[tokio::test]
async fn two_workers_with_forced_redeliveries_debit_each_call_once() {
    let (nats, pg, js) = setup().await;
    let lines = billing_lines("two", 1200, 22, 0);
    let config = RatingConfig::default();
    let ports = [free_port().unwrap(), free_port().unwrap()];
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
                    "--ack-wait",
                    "1s",
                    "--max-deliver",
                    "50",
                    "--metrics-addr",
                    &addr,
                ],
            )
        })
        .collect();
    // A call's records land in different batches of different workers.
    let mut shuffled = lines.clone();
    Rng::new(8).shuffle(&mut shuffled);
    let (first, second) = shuffled.split_at(shuffled.len() / 2);
    publish(&js, first).await;
    wait_until(Duration::from_secs(30), "some calls stored", || async {
        count_cdrs(&pg.url()).await.unwrap_or(0) > 0
    })
    .await;
    // Debits stall for three ack waits: batches holding written records and CDRs are redelivered
    // to the other worker, which must wait for the same calls and then find nothing to book.
    let stall = stall_accounts(pg.url(), Duration::from_secs(3));
    publish(&js, second).await;
    stall.join().unwrap();
    wait_settled(&js, &pg.url(), expected(&lines).len()).await;
    assert_same(&stored(&pg.url()).await, &expected(&lines));
    let (charged, _) = assert_billing(&pg.url(), &lines, &tariffs(), &config).await;

    let sum = |name: &str| -> f64 {
        ports
            .iter()
            .map(|port| scrape(*port, name).unwrap_or(0.0))
            .sum()
    };
    let committed = sum("cdr_worker_committed_total");
    assert!(
        committed > lines.len() as f64,
        "{committed} commits of {} records: no redelivery, the fault was not exercised",
        lines.len()
    );
    // The money counters agree with the ledger (they are floats: to the cent).
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let ledger_eur: Decimal = sqlx::query_scalar(
        "SELECT coalesce(sum(amount), 0) FROM ledger_entry WHERE currency = 'EUR'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    let net = sum(r#"cdr_worker_money_debited_total{currency="EUR"}"#)
        - sum(r#"cdr_worker_money_credited_total{currency="EUR"}"#);
    let ledger_eur: f64 = ledger_eur.to_string().parse().unwrap();
    assert!((net - ledger_eur).abs() < 0.005, "{net} vs {ledger_eur}");
    assert!(sum("cdr_worker_cdrs_rated_total") >= charged as f64);
    assert!(sum(r#"cdr_worker_cdrs_unrated_total{reason="unknown_account"}"#) > 0.0);
    // bob (prepaid, 0.5) runs dry; an adjustment may lift him above zero and a debit sink him
    // again, so at least once.
    assert!(sum("cdr_worker_prepaid_exhausted_total") >= 1.0);
    eprintln!("two workers: {committed} commits, {charged} calls charged once");
    for worker in &mut workers {
        assert_eq!(terminate(worker), Some(0));
    }
}

#[tokio::test]
async fn a_tariff_edited_mid_run_prices_only_the_calls_after_it() {
    let (nats, pg, js) = setup().await;
    let config = RatingConfig::default();
    // Calls from T0 on, one every 3 s. The edit raises German mobiles (`4917`) from `edit` on:
    // the 400th call.
    let edit = T0 + 1_200;
    let before = billing_lines("edit-a", 400, 31, 0);
    let after = billing_lines("edit-b", 400, 32, 1_200);
    // The BYEs of some calls answered before the edit arrive only after it.
    let (early, late): (Vec<_>, Vec<_>) =
        before.iter().cloned().enumerate().partition(|(i, line)| {
            !(i % 5 == 0 && String::from_utf8_lossy(&line.bytes).contains("\"BYE\""))
        });
    let early: Vec<_> = early.into_iter().map(|(_, line)| line).collect();
    let late: Vec<_> = late.into_iter().map(|(_, line)| line).collect();
    assert!(!late.is_empty());
    let mut worker = spawn_worker(&nats.url(), &pg.url(), &["--batch-size", "50"]);
    publish(&js, &early).await;
    let early_calls = expected(&early).len();
    wait_settled(&js, &pg.url(), early_calls).await;

    // The edit, as the billing team makes it, while the worker runs.
    let sql = format!(
        "BEGIN;
         UPDATE rate SET valid_to = to_timestamp({edit})
          WHERE plan_id = 'std' AND prefix = '4917' AND valid_to IS NULL;
         INSERT INTO rate (plan_id, prefix, valid_from, price_per_minute, connection_fee,
                           setup_fee, initial_increment, subsequent_increment)
              VALUES ('std', '4917', to_timestamp({edit}), 0.12, 0.06, 0.02, 30, 6);
         COMMIT;"
    );
    pg.psql("postgres", &sql).unwrap();
    let mut all = late.clone();
    all.extend(after.iter().cloned());
    Rng::new(5).shuffle(&mut all);
    publish(&js, &all).await;
    let lines: Vec<_> = before.iter().chain(after.iter()).cloned().collect();
    wait_settled(&js, &pg.url(), expected(&lines).len()).await;

    // The rules over the tariffs as they stand now: every call priced by the rate in force at
    // its answer (setup, when unanswered), whenever its records came.
    let pool = sqlx::PgPool::connect(&pg.url()).await.unwrap();
    let mut now = load_tariffs(&pool).await.unwrap();
    now.accounts = tariffs().accounts;
    assert_billing(&pg.url(), &lines, &now, &config).await;
    // And concretely: mobile calls before the edit at the old row, after it at the new one, the
    // late BYEs included.
    let ratings = load_ratings(&pool).await.unwrap();
    let old_row = super::at(T0 - 86_400);
    let new_row = super::at(edit);
    let mut seen = (0, 0, 0);
    for (call, rating) in &ratings {
        let Some(charge) = rating.charge() else {
            continue;
        };
        if charge.rate_prefix != "4917" {
            continue;
        }
        let is_before = call.starts_with("edit-a");
        let late_bye = late
            .iter()
            .any(|line| String::from_utf8_lossy(&line.bytes).contains(&format!("\"{call}\"")));
        let want = if is_before { old_row } else { new_row };
        assert_eq!(charge.rate_valid_from, want, "{call}");
        match (is_before, late_bye) {
            (true, true) => seen.0 += 1,
            (true, false) => seen.1 += 1,
            (false, _) => seen.2 += 1,
        }
    }
    assert!(
        seen.0 > 0 && seen.1 > 0 && seen.2 > 0,
        "(late BYE before, before, after) = {seen:?}"
    );
    let raised: Decimal = sqlx::query_scalar(
        "SELECT coalesce(sum(charge), 0) FROM cdr WHERE rate_valid_from = to_timestamp($1)",
    )
    .bind(edit as f64)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(raised > dec("0"));
    pool.close().await;
    assert_eq!(terminate(&mut worker), Some(0));
}
