//! PostgreSQL as the tests look at it: counts, the stored CDRs, and commits held up on purpose.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use nats_cdr_workloads::contract::merge::MergedCdr;

/// One `SELECT count(*)`, or `None` while the database or the table is not there.
pub async fn count(url: &str, sql: &str) -> Option<i64> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect(url)
        .await
        .ok()?;
    let n = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&pool)
        .await
        .ok();
    pool.close().await;
    n
}

/// Number of stored CDRs, or `None` while the table or the database is not there.
pub async fn count_cdrs(url: &str) -> Option<i64> {
    count(url, "SELECT count(*) FROM cdr").await
}

/// Every stored CDR by call id, read through a fresh connection.
pub async fn stored_cdrs(url: &str) -> BTreeMap<String, MergedCdr> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let store = nats_cdr_workloads::worker::Store::from_pool(pool.clone());
    let all = store.load_all_cdrs().await.unwrap();
    pool.close().await;
    all.into_iter().map(|c| (c.call_id.clone(), c)).collect()
}

/// Asserts the stored CDRs are exactly `want`, field by field.
pub fn assert_same(stored: &BTreeMap<String, MergedCdr>, want: &BTreeMap<String, MergedCdr>) {
    let missing: Vec<&String> = want.keys().filter(|k| !stored.contains_key(*k)).collect();
    let extra: Vec<&String> = stored.keys().filter(|k| !want.contains_key(*k)).collect();
    assert!(missing.is_empty(), "missing calls: {missing:?}");
    assert!(extra.is_empty(), "unexpected calls: {extra:?}");
    for (call, cdr) in want {
        assert_eq!(&stored[call], cdr, "CDR of {call}");
    }
}

/// Holds an exclusive lock on `table` for `how_long` from a `psql` session, so every commit
/// that writes it stalls (as on an overloaded database); the handle finishes when the lock is
/// released, and asserts psql succeeded.
pub fn lock_table(url: &str, table: &str, how_long: Duration) -> std::thread::JoinHandle<()> {
    let url = url.to_owned();
    let sql = format!(
        "BEGIN; LOCK TABLE {table} IN EXCLUSIVE MODE; SELECT pg_sleep({}); COMMIT;",
        how_long.as_secs_f64()
    );
    std::thread::spawn(move || {
        let output = Command::new("psql")
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
