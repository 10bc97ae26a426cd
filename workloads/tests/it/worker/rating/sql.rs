//! The worker's billing SQL against the pure Rust rules, on a real PostgreSQL: the rating and
//! ledger statements give, for any order, repetition and chunking of the records and with
//! concurrent writers, the ratings `worker::rating::rate` computes, ledgers that sum to them and
//! exact balances; the tariff guards; and the migration that gives existing CDRs their times.

use std::time::Duration;

use super::{assert_billing, billing_lines, dec, tariffs};
use crate::support::Rng;
use crate::support::acc::{self, Line, expected, scenario};
use crate::support::db::{assert_same, stored_cdrs};
use nats_cdr_testsupport::Postgres;
use nats_cdr_workloads::contract::record::parse_line;
use nats_cdr_workloads::worker::rating::RatingConfig;
use nats_cdr_workloads::worker::rating::sql::insert_tariffs;
use nats_cdr_workloads::worker::{RecordRow, Store};
use rust_decimal::Decimal;

fn row(line: &Line) -> RecordRow {
    RecordRow {
        msg_id: line.id(),
        record: parse_line(&line.bytes).unwrap(),
        source_node: Some(line.node.clone()),
        stream_seq: None,
    }
}

async fn fresh_store(pg: &Postgres, name: &str, config: &RatingConfig) -> (Store, String) {
    pg.create_database(name).unwrap();
    let url = pg.url_for(name);
    let store = Store::connect_lazy(&url, 8, Duration::from_secs(10))
        .unwrap()
        .with_rating(config.clone());
    store.migrate().await.unwrap();
    insert_tariffs(store.pool(), &tariffs()).await.unwrap();
    (store, url)
}

#[tokio::test]
async fn sql_rating_matches_the_rust_rules_in_any_order_and_chunking() {
    let pg = Postgres::start().unwrap();
    let lines = billing_lines("r", 400, 5, 0);
    for seed in 1..=3u64 {
        let config = RatingConfig {
            default_country_code: (seed != 2).then(|| "49".to_owned()),
            ..RatingConfig::default()
        };
        let (store, url) = fresh_store(&pg, &format!("rating{seed}"), &config).await;
        let mut rng = Rng::new(seed * 104_729);
        let mut rows: Vec<RecordRow> = Vec::new();
        for line in &lines {
            for _ in 0..1 + rng.below(3) {
                rows.push(row(line));
            }
        }
        rng.shuffle(&mut rows);
        let mut net = Decimal::ZERO;
        let mut exhausted = 0;
        let mut rest: &[RecordRow] = &rows;
        while !rest.is_empty() {
            let take = (1 + rng.below(40)).min(rest.len());
            let (chunk, tail) = rest.split_at(take);
            rest = tail;
            let refs: Vec<&RecordRow> = chunk.iter().collect();
            let outcome = store.write(&refs).await.unwrap();
            for moved in outcome.rating.moved.values() {
                net += moved.debited - moved.credited;
            }
            exhausted += outcome.rating.exhausted();
        }
        assert_same(&stored_cdrs(&url).await, &expected(&lines));
        let (charged, unrated) = assert_billing(&url, &lines, &tariffs(), &config).await;
        assert!(
            charged > 50 && unrated > 50,
            "{charged} charged, {unrated} unrated"
        );
        // The metrics' money is the ledger's; bob (prepaid, 0.5) ran dry once.
        let pool = store.pool();
        let (total, bob_exhausted): (Decimal, bool) = sqlx::query_as(
            "SELECT (SELECT sum(amount) FROM ledger_entry),
                    (SELECT exhausted FROM account WHERE id = 'bob')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!(net, total);
        assert!(bob_exhausted);
        assert_eq!(
            exhausted, 1,
            "bob crosses zero once (no credit brings him back)"
        );

        // Replaying everything books nothing.
        let refs: Vec<&RecordRow> = rows.iter().collect();
        let again = store.write(&refs).await.unwrap();
        assert_eq!((again.inserted, again.rating.moved.len()), (0, 0));
        assert_billing(&url, &lines, &tariffs(), &config).await;
    }
}

#[tokio::test]
async fn concurrent_writers_debit_every_call_once() {
    let pg = Postgres::start().unwrap();
    let config = RatingConfig::default();
    let (store, url) = fresh_store(&pg, "concurrent", &config).await;
    let lines = billing_lines("c", 300, 9, 0);
    let mut tasks = Vec::new();
    for writer in 0..4u64 {
        let store = store.clone();
        let mut rows: Vec<RecordRow> = lines.iter().map(row).collect();
        Rng::new(writer + 1).shuffle(&mut rows);
        tasks.push(tokio::spawn(async move {
            for chunk in rows.chunks(7) {
                let refs: Vec<&RecordRow> = chunk.iter().collect();
                store.write(&refs).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_same(&stored_cdrs(&url).await, &expected(&lines));
    assert_billing(&url, &lines, &tariffs(), &config).await;
}

#[tokio::test]
async fn rating_off_leaves_the_rating_columns_empty() {
    let pg = Postgres::start().unwrap();
    let config = RatingConfig {
        enabled: false,
        ..RatingConfig::default()
    };
    let (store, url) = fresh_store(&pg, "off", &config).await;
    let lines = billing_lines("o", 50, 3, 0);
    let rows: Vec<RecordRow> = lines.iter().map(row).collect();
    let outcome = store.write(&rows.iter().collect::<Vec<_>>()).await.unwrap();
    assert_eq!(outcome.rating, Default::default());
    assert_same(&stored_cdrs(&url).await, &expected(&lines));
    let rated = pg
        .psql(
            "off",
            "SELECT count(*) FROM cdr WHERE rating_status IS NOT NULL",
        )
        .unwrap();
    let entries = pg.psql("off", "SELECT count(*) FROM ledger_entry").unwrap();
    assert_eq!((rated.as_str(), entries.as_str()), ("0", "0"));
}

#[tokio::test]
async fn tariff_guards_refuse_in_place_price_edits_and_currency_changes() {
    let pg = Postgres::start().unwrap();
    let (_store, _url) = fresh_store(&pg, "guards", &RatingConfig::default()).await;
    let refused = |sql: &str| {
        let error = pg.psql("guards", sql).unwrap_err().to_string();
        assert!(error.contains("cannot be changed"), "{sql}: {error}");
    };
    refused("UPDATE rate SET price_per_minute = 0.03 WHERE plan_id = 'std' AND prefix = '49'");
    refused("UPDATE rate SET valid_from = now() WHERE plan_id = 'std' AND prefix = '49'");
    refused("UPDATE rate_plan SET currency = 'USD' WHERE id = 'std'");
    refused("UPDATE account SET currency = 'USD' WHERE id = 'alice'");
    // An account with ledger entries cannot go; one without can.
    pg.psql(
        "guards",
        "INSERT INTO ledger_entry (call_id, seq, account_id, currency, amount)
              VALUES ('c', 1, 'alice', 'EUR', 1)",
    )
    .unwrap();
    for sql in [
        "DELETE FROM account WHERE id = 'alice'",
        "UPDATE account SET id = 'alicia' WHERE id = 'alice'",
    ] {
        let error = pg.psql("guards", sql).unwrap_err().to_string();
        assert!(error.contains("has ledger entries"), "{sql}: {error}");
    }
    pg.psql("guards", "DELETE FROM account WHERE id = 'dave'")
        .unwrap();
    // Ending a rate, describing it, topping up a balance are fine; the flag follows the balance.
    pg.psql(
        "guards",
        "UPDATE rate SET valid_to = valid_from + interval '1 year', description = 'ends'
          WHERE plan_id = 'std' AND prefix = '49'",
    )
    .unwrap();
    pg.psql("guards", "UPDATE account SET balance = -1 WHERE id = 'bob'")
        .unwrap();
    assert_eq!(
        pg.psql("guards", "SELECT exhausted FROM account WHERE id = 'bob'")
            .unwrap(),
        "t"
    );
    pg.psql(
        "guards",
        "UPDATE account SET balance = balance + 10 WHERE id = 'bob'",
    )
    .unwrap();
    assert_eq!(
        pg.psql("guards", "SELECT exhausted FROM account WHERE id = 'bob'")
            .unwrap(),
        "f"
    );
}

#[tokio::test]
async fn a_late_bye_is_priced_at_the_rate_in_force_at_the_answer_after_a_tariff_edit() {
    let pg = Postgres::start().unwrap();
    let config = RatingConfig::default();
    let (store, _url) = fresh_store(&pg, "edit", &config).await;
    let invite = |call: &str, t: i64| acc::Line {
        node: "sip-01".into(),
        bytes: serde_json::to_vec(&serde_json::json!({"method": "INVITE", "callid": call,
            "sip_code": 200, "time": t, "src_user": "alice", "dst_user": "+4989 1"}))
        .unwrap(),
    };
    let bye = |call: &str, t: i64| acc::Line {
        node: "sip-01".into(),
        bytes: serde_json::to_vec(&serde_json::json!({"method": "BYE", "callid": call,
            "time": t, "src_user": "alice", "dst_user": "+4989 1"}))
        .unwrap(),
    };
    let edit = super::T0 + 1_000;
    let write = |lines: Vec<acc::Line>| {
        let store = store.clone();
        async move {
            let rows: Vec<RecordRow> = lines.iter().map(row).collect();
            store.write(&rows.iter().collect::<Vec<_>>()).await.unwrap()
        }
    };
    // Before the edit: `early` answered and hung up, `late` answered, its BYE not here yet.
    write(vec![
        invite("early", edit - 100),
        bye("early", edit - 40),
        invite("late", edit - 10),
    ])
    .await;
    // The billing team raises Germany from `edit` on: end the row, add its successor.
    pg.psql(
        "edit",
        &format!(
            "BEGIN;
             UPDATE rate SET valid_to = to_timestamp({edit}) WHERE plan_id = 'std' AND prefix = '49';
             INSERT INTO rate (plan_id, prefix, valid_from, price_per_minute, initial_increment,
                               subsequent_increment)
                  VALUES ('std', '49', to_timestamp({edit}), 0.05, 60, 60);
             COMMIT;"
        ),
    )
    .unwrap();
    write(vec![
        bye("late", edit + 50),
        invite("after", edit + 5),
        bye("after", edit + 65),
    ])
    .await;
    let charges = pg
        .psql(
            "edit",
            "SELECT string_agg(call_id || '=' || charge, ',' ORDER BY call_id) FROM cdr",
        )
        .unwrap();
    // `late` was answered before the edit: the old price, although its BYE came after it.
    assert_eq!(charges, "after=0.0500,early=0.0200,late=0.0200");
    let balance = pg
        .psql("edit", "SELECT balance FROM account WHERE id = 'alice'")
        .unwrap();
    assert_eq!(dec(&balance), dec("100") - dec("0.09"));
}

/// The migration of `setup_time` and `duration_ms`: CDRs stored by the previous schema get the
/// times the merge gives them now, from their records.
#[tokio::test]
async fn existing_cdrs_get_their_times_from_their_records() {
    let pg = Postgres::start().unwrap();
    pg.create_database("legacy").unwrap();
    let url = pg.url_for("legacy");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    // The first migration alone, as the previous worker left the database.
    let dir = tempfile::tempdir().unwrap();
    let first = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "sql"))
        .min()
        .unwrap();
    std::fs::copy(&first, dir.path().join(first.file_name().unwrap())).unwrap();
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    // Records and rows as the previous worker stored them (its merge had no setup time and no
    // duration for unanswered calls).
    let lines = scenario("legacy", 70);
    for line in &lines {
        let record = parse_line(&line.bytes).unwrap();
        let kind = record.kind();
        sqlx::query(
            "INSERT INTO cdr_record (msg_id, call_id, kind, priority, event_time, method,
                                     from_tag, to_tag, sip_code, sip_reason, src_user, dst_user,
                                     extras, source_node)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13::jsonb, $14)",
        )
        .bind(line.id())
        .bind(&record.call_id)
        .bind(kind.as_str())
        .bind(i16::from(nats_cdr_workloads::contract::merge::priority(
            kind,
        )))
        .bind(record.time)
        .bind(&record.method)
        .bind(&record.from_tag)
        .bind(&record.to_tag)
        .bind(&record.sip_code)
        .bind(&record.sip_reason)
        .bind(record.src_user())
        .bind(record.dst_user())
        .bind(serde_json::to_string(&record.extras).unwrap())
        .bind(&line.node)
        .execute(&pool)
        .await
        .unwrap();
    }
    let want = expected(&lines);
    for cdr in want.values() {
        sqlx::query(
            "INSERT INTO cdr (call_id, start_time, end_time, duration_ms, disposition, sip_code,
                              sip_reason, from_tag, to_tag, src_user, dst_user, extras,
                              record_count)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13)",
        )
        .bind(&cdr.call_id)
        .bind(cdr.answer_time)
        .bind(cdr.end_time)
        .bind(cdr.duration_ms.filter(|_| cdr.answer_time.is_some()))
        .bind(cdr.disposition.as_str())
        .bind(&cdr.sip_code)
        .bind(&cdr.sip_reason)
        .bind(&cdr.from_tag)
        .bind(&cdr.to_tag)
        .bind(&cdr.src_user)
        .bind(&cdr.dst_user)
        .bind(serde_json::to_string(&cdr.extras).unwrap())
        .bind(i32::try_from(cdr.record_count).unwrap())
        .execute(&pool)
        .await
        .unwrap();
    }
    let before = pg
        .psql(
            "legacy",
            "SELECT count(*) FROM cdr WHERE duration_ms IS NULL",
        )
        .unwrap();
    assert_ne!(before, "0", "the legacy rows lack durations");

    let store = Store::from_pool(pool.clone());
    store.migrate().await.unwrap();
    assert_same(&stored_cdrs(&url).await, &want);
    let failed_with_setup = pg
        .psql(
            "legacy",
            "SELECT count(*) FROM cdr WHERE disposition IN ('failed', 'cancelled')
                AND setup_time IS NOT NULL AND duration_ms = 0",
        )
        .unwrap();
    assert_ne!(failed_with_setup, "0");
    // Pre-rating rows are not rated (no debit for history).
    let rated = pg
        .psql(
            "legacy",
            "SELECT count(*) FROM cdr WHERE rating_status IS NOT NULL",
        )
        .unwrap();
    assert_eq!(rated, "0");
    let indexes = pg
        .psql(
            "legacy",
            "SELECT string_agg(indexdef, ' | ' ORDER BY indexname) FROM pg_indexes
              WHERE indexname IN ('cdr_setup_time_idx', 'cdr_answer_time_idx', 'cdr_end_time_idx')",
        )
        .unwrap();
    for column in ["(answer_time)", "(end_time)", "(setup_time)"] {
        assert!(indexes.contains(column), "no index on {column}: {indexes}");
    }
    pool.close().await;
}
