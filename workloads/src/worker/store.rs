//! PostgreSQL: the schema (embedded migrations) and the one write the worker makes per batch.
//!
//! A batch is written in one transaction:
//! 1. `pg_advisory_xact_lock` on the hash of every distinct call id of the batch, in ascending
//!    key order, so that two workers holding records of one call serialise (the second sees the
//!    first's committed records) and never deadlock each other;
//! 2. the records, `INSERT ... SELECT FROM UNNEST(...) ON CONFLICT (msg_id) DO NOTHING`: a record
//!    already stored is a duplicate absorbed;
//! 3. the `cdr` rows of the calls that gained a record, recomputed from *all* their records by one
//!    aggregate query implementing [`contract::merge`](crate::contract::merge) (same rules, same
//!    tie-breaks) and, with rating on, rated in the same statement
//!    ([`rating::sql::RATING_CTES`](crate::worker::rating::sql::RATING_CTES)), so each call's row
//!    is written once: `INSERT ... ON CONFLICT (call_id) DO UPDATE`, only when something changed;
//! 4. with rating on, those calls' ledgers settled and their accounts' balances moved (see
//!    [`rating`](crate::worker::rating) for the model and the rules).
//!
//! A call whose records were all present already needs no recompute: whoever stored them
//! recomputed the row in the same transaction.

use std::collections::BTreeSet;
use std::sync::LazyLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use crate::contract::merge::{Disposition, MergedCdr, priority};
use crate::contract::record::AccRecord;
use crate::worker::rating::RatingConfig;
use crate::worker::rating::sql::{RATING_COLUMNS, RATING_CTES, RatingOutcome, settle_calls};

/// The embedded migrations of `workloads/migrations`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Failure of a database operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL does not parse.
    #[error("invalid database URL")]
    InvalidUrl(#[source] sqlx::Error),
    /// Applying the migrations failed.
    #[error("applying migrations failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// A query or the connection failed.
    #[error("database query failed")]
    Query(#[source] sqlx::Error),
    /// A stored row holds something the contract cannot represent.
    #[error("stored row is invalid: {0}")]
    BadRow(String),
}

impl StoreError {
    /// Short category for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidUrl(_) => "invalid_database_url",
            Self::Migrate(_) => "migrate",
            Self::BadRow(_) => "bad_row",
            Self::Query(_) if self.is_data_error() => "db_rejected",
            Self::Query(_) => "db_unavailable",
        }
    }

    /// Whether the database refused the *data* (a value it cannot store, a constraint): retrying
    /// the same records cannot succeed, so the batch is split to isolate them. Anything else
    /// (connection lost, server shutting down, pool timeout, deadlock, ...) is transient: the
    /// same records are retried after a back-off.
    pub fn is_data_error(&self) -> bool {
        let Self::Query(error) = self else {
            return false;
        };
        match error {
            sqlx::Error::Encode(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // 22 data exception (e.g. a NUL byte in text), 23 integrity constraint violation,
                // 54 program limit exceeded (e.g. an index row too large).
                ["22", "23", "54"]
                    .iter()
                    .any(|class| code.starts_with(class))
            }),
            _ => false,
        }
    }
}

/// One record to store: the parsed line, its id and where it came from.
#[derive(Debug, Clone)]
pub struct RecordRow {
    /// The record's `Nats-Msg-Id`.
    pub msg_id: String,
    /// The parsed line.
    pub record: AccRecord,
    /// The SIP node the line was read on (`cdr-source`).
    pub source_node: Option<String>,
    /// The stream sequence of the message that carried it.
    pub stream_seq: Option<u64>,
}

/// What writing a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Records newly stored.
    pub inserted: u64,
    /// Records that were already stored (or repeated within the batch).
    pub duplicates: u64,
    /// `cdr` rows recomputed.
    pub cdrs_updated: u64,
    /// What rating did (empty with rating off).
    pub rating: RatingOutcome,
}

/// The database of CDRs.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    rating: RatingConfig,
}

/// Takes the per-call locks, in ascending key order (see the module doc).
const LOCK_CALLS: &str = "\
SELECT pg_advisory_xact_lock(k)
  FROM (SELECT DISTINCT hashtextextended(c, 0) AS k FROM unnest($1::text[]) AS c ORDER BY k) AS s";

/// Stores records from parallel arrays; returns the call id of every record newly stored.
const INSERT_RECORDS: &str = "\
INSERT INTO cdr_record (msg_id, call_id, kind, priority, event_time, method, from_tag, to_tag,
                        sip_code, sip_reason, src_user, dst_user, extras, source_node, stream_seq)
SELECT m, c, k, p, t, me, ft, tt, sc, sr, su, du, e::jsonb, sn, sq
  FROM unnest($1::text[], $2::text[], $3::text[], $4::int2[], $5::timestamptz[], $6::text[],
              $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
              $13::text[], $14::text[], $15::int8[])
       AS u(m, c, k, p, t, me, ft, tt, sc, sr, su, du, e, sn, sq)
    ON CONFLICT (msg_id) DO NOTHING
RETURNING call_id";

/// The merged CDRs of calls `$1`, computed from all their records: the rules of
/// `contract::merge`, as its module doc states them in SQL. Its columns are [`CDR_COLUMNS`].
const MERGED_CDRS: &str = r#"
SELECT a.call_id, a.setup_time, a.answer_time, a.end_time,
       CASE WHEN a.disposition <> 'answered' THEN 0
            WHEN a.end_time >= a.answer_time
            THEN floor((extract(epoch FROM a.end_time) - extract(epoch FROM a.answer_time))
                       * 1000)::bigint
       END AS duration_ms,
       a.disposition, p.sip_code, p.sip_reason, p.from_tag, p.to_tag, p.src_user, p.dst_user,
       p.source_node, p.extras, a.record_count
  FROM (SELECT call_id,
               min(event_time) FILTER (WHERE kind IN ('answered_invite', 'failed_invite',
                                                      'cancelled_invite')) AS setup_time,
               min(event_time) FILTER (WHERE kind = 'answered_invite') AS answer_time,
               max(event_time) FILTER (WHERE kind = 'bye')             AS end_time,
               CASE WHEN bool_or(kind IN ('answered_invite', 'bye')) THEN 'answered'
                    WHEN bool_or(kind = 'cancelled_invite')           THEN 'cancelled'
                    WHEN bool_or(kind = 'failed_invite')              THEN 'failed'
                    ELSE 'unknown' END                                AS disposition,
               count(*)::int4                                         AS record_count
          FROM cdr_record
         WHERE call_id = ANY($1::text[])
         GROUP BY call_id) AS a
 CROSS JOIN LATERAL (
       SELECT r.* FROM cdr_record AS r
        WHERE r.call_id = a.call_id
        ORDER BY r.priority,
                 CASE WHEN r.priority = 1 THEN -extract(epoch FROM r.event_time)
                      ELSE extract(epoch FROM r.event_time) END,
                 r.msg_id COLLATE "C"
        LIMIT 1) AS p"#;

/// The columns of [`MERGED_CDRS`], in its order.
const CDR_COLUMNS: [&str; 15] = [
    "call_id",
    "setup_time",
    "answer_time",
    "end_time",
    "duration_ms",
    "disposition",
    "sip_code",
    "sip_reason",
    "from_tag",
    "to_tag",
    "src_user",
    "dst_user",
    "source_node",
    "extras",
    "record_count",
];

/// `INSERT INTO cdr ... ON CONFLICT DO UPDATE` of `columns` from the rows of `source` (which has
/// each of them under its name, unambiguously), updating a row only when a column changed;
/// `rated_at` (when among them) only when a rating column changed.
fn upsert_cdrs(source: &str, columns: &[&str]) -> String {
    let list = columns.join(", ");
    let set: Vec<String> = columns
        .iter()
        .filter(|column| **column != "call_id")
        .map(|column| match *column {
            "rated_at" => format!(
                "rated_at = CASE WHEN ({old}) IS DISTINCT FROM ({new}) THEN EXCLUDED.rated_at \
                 ELSE d.rated_at END",
                old = prefixed("d.", RATING_COLUMNS),
                new = prefixed("EXCLUDED.", RATING_COLUMNS),
            ),
            column => format!("{column} = EXCLUDED.{column}"),
        })
        .collect();
    let compared: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|column| !matches!(*column, "call_id" | "rated_at"))
        .collect();
    format!(
        "INSERT INTO cdr AS d ({list}, updated_at) SELECT {select}, now() FROM {source}
            ON CONFLICT (call_id) DO UPDATE SET {set}, updated_at = EXCLUDED.updated_at
         WHERE ({old}) IS DISTINCT FROM ({new})",
        select = list,
        set = set.join(", "),
        old = prefixed("d.", &compared),
        new = prefixed("EXCLUDED.", &compared),
    )
}

/// `columns` joined by commas, each prefixed with `prefix`.
fn prefixed(prefix: &str, columns: &[&str]) -> String {
    columns
        .iter()
        .map(|column| format!("{prefix}{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Recomputes the `cdr` rows of calls `$1` from all their records (rating off).
static RECOMPUTE_CDRS: LazyLock<String> =
    LazyLock::new(|| upsert_cdrs(&format!("({MERGED_CDRS}) AS m"), &CDR_COLUMNS));

/// Recomputes the `cdr` rows of calls `$1` and rates them in the same write (account key `$2`,
/// default country code `$3`, `''` for none): one row version per call. Returns, per row
/// written, its rating and whether the rating changed.
static RECOMPUTE_AND_RATE_CDRS: LazyLock<String> = LazyLock::new(|| {
    let mut columns: Vec<&str> = CDR_COLUMNS.to_vec();
    columns.extend_from_slice(RATING_COLUMNS);
    columns.push("rated_at");
    format!(
        "WITH m AS ({MERGED_CDRS}), {RATING_CTES},
         old AS (SELECT call_id, {old_rating} FROM cdr WHERE call_id = ANY($1::text[])),
         up AS ({upsert} RETURNING d.call_id, {new_rating})
         SELECT up.rating_status, up.unrated_reason,
                ({old_cols}) IS DISTINCT FROM ({up_cols}) AS rating_changed
           FROM up LEFT JOIN old USING (call_id)",
        old_rating = RATING_COLUMNS.join(", "),
        upsert = upsert_cdrs("m JOIN rated USING (call_id)", &columns),
        new_rating = prefixed("d.", RATING_COLUMNS),
        old_cols = prefixed("old.", RATING_COLUMNS),
        up_cols = prefixed("up.", RATING_COLUMNS),
    )
});

/// Columns of a `cdr` row as [`Store::load_cdr`] reads them.
macro_rules! select_cdr {
    () => {
        "SELECT call_id, setup_time, answer_time, end_time, duration_ms, disposition, sip_code, sip_reason,
                from_tag, to_tag, src_user, dst_user, extras::text AS extras, record_count
           FROM cdr"
    };
}

impl Store {
    /// A pool of at most `max_connections` to `url`. Connects lazily: a database that is down
    /// at start is not an error here, the first query waits for it (up to `acquire_timeout`).
    pub fn connect_lazy(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(StoreError::InvalidUrl)?;
        // JIT compilation is for long analytical queries: for the worker's batch statements (whose
        // estimated cost can pass the JIT threshold) it costs more than the whole statement. And
        // each batch's statements are planned for its call ids: the generic plan PostgreSQL
        // switches to after five executions of a prepared statement knows nothing of the arrays
        // and was measured 2 to 4 times slower for the rating statement.
        let options = options
            .application_name("cdr-worker")
            .options([("jit", "off"), ("plan_cache_mode", "force_custom_plan")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options);
        Ok(Self::from_pool(pool))
    }

    /// Wraps an existing pool (rating on, with the default settings).
    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            rating: RatingConfig::default(),
        }
    }

    /// The same store, rating with `rating` (or not, when it is disabled).
    pub fn with_rating(mut self, rating: RatingConfig) -> Self {
        self.rating = rating;
        self
    }

    /// How the store rates.
    pub fn rating(&self) -> &RatingConfig {
        &self.rating
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations (serialised across workers by sqlx's own lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await.map_err(StoreError::Migrate)
    }

    /// Writes `rows` in one transaction (see the module doc). Rows with the same msg id are
    /// stored once.
    pub async fn write(&self, rows: &[&RecordRow]) -> Result<WriteOutcome, StoreError> {
        let mut seen = BTreeSet::new();
        let distinct: Vec<&RecordRow> = rows
            .iter()
            .copied()
            .filter(|row| seen.insert(row.msg_id.as_str()))
            .collect();
        let repeated = (rows.len() - distinct.len()) as u64;
        if distinct.is_empty() {
            return Ok(WriteOutcome {
                duplicates: repeated,
                ..WriteOutcome::default()
            });
        }
        let mut tx = self.pool.begin().await.map_err(StoreError::Query)?;
        let outcome = write_in(&mut tx, &distinct, &self.rating).await?;
        tx.commit().await.map_err(StoreError::Query)?;
        Ok(WriteOutcome {
            duplicates: outcome.duplicates + repeated,
            ..outcome
        })
    }

    /// The stored CDR of `call_id`, as the contract's [`MergedCdr`].
    pub async fn load_cdr(&self, call_id: &str) -> Result<Option<MergedCdr>, StoreError> {
        let row = sqlx::query(concat!(select_cdr!(), " WHERE call_id = $1"))
            .bind(call_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::Query)?;
        row.map(|row| cdr_from_row(&row)).transpose()
    }

    /// Every stored CDR, ordered by call id.
    pub async fn load_all_cdrs(&self) -> Result<Vec<MergedCdr>, StoreError> {
        let rows = sqlx::query(concat!(select_cdr!(), " ORDER BY call_id"))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::Query)?;
        rows.iter().map(cdr_from_row).collect()
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(StoreError::Query)
    }
}

/// Steps 1 to 4 of the module doc, inside `tx`; `rows` have distinct msg ids.
async fn write_in(
    tx: &mut Transaction<'static, Postgres>,
    rows: &[&RecordRow],
    rating: &RatingConfig,
) -> Result<WriteOutcome, StoreError> {
    let call_ids: BTreeSet<&str> = rows.iter().map(|row| row.record.call_id.as_str()).collect();
    let call_ids: Vec<&str> = call_ids.into_iter().collect();
    sqlx::query(LOCK_CALLS)
        .bind(&call_ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::Query)?;

    let columns = Columns::of(rows)?;
    let inserted: Vec<String> = sqlx::query_scalar(INSERT_RECORDS)
        .bind(&columns.msg_id)
        .bind(&columns.call_id)
        .bind(&columns.kind)
        .bind(&columns.priority)
        .bind(&columns.time)
        .bind(&columns.method)
        .bind(&columns.from_tag)
        .bind(&columns.to_tag)
        .bind(&columns.sip_code)
        .bind(&columns.sip_reason)
        .bind(&columns.src_user)
        .bind(&columns.dst_user)
        .bind(&columns.extras)
        .bind(&columns.source_node)
        .bind(&columns.stream_seq)
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::Query)?;

    let changed: BTreeSet<String> = inserted.iter().cloned().collect();
    let changed: Vec<String> = changed.into_iter().collect();
    let mut outcome = RatingOutcome::default();
    let cdrs_updated = if changed.is_empty() {
        0
    } else if rating.enabled {
        let rows = sqlx::query(RECOMPUTE_AND_RATE_CDRS.as_str())
            .bind(&changed)
            .bind(&rating.account_key)
            .bind(rating.default_country_code.as_deref().unwrap_or(""))
            .fetch_all(&mut **tx)
            .await
            .map_err(StoreError::Query)?;
        outcome.count(&rows)?;
        outcome.moved = settle_calls(tx, &changed).await?;
        rows.len() as u64
    } else {
        sqlx::query(RECOMPUTE_CDRS.as_str())
            .bind(&changed)
            .execute(&mut **tx)
            .await
            .map_err(StoreError::Query)?
            .rows_affected()
    };
    let inserted = inserted.len() as u64;
    Ok(WriteOutcome {
        inserted,
        duplicates: rows.len() as u64 - inserted,
        cdrs_updated,
        rating: outcome,
    })
}

/// The batch as parallel arrays, one per column, for `UNNEST`.
struct Columns {
    msg_id: Vec<String>,
    call_id: Vec<String>,
    kind: Vec<&'static str>,
    priority: Vec<i16>,
    time: Vec<DateTime<Utc>>,
    method: Vec<Option<String>>,
    from_tag: Vec<Option<String>>,
    to_tag: Vec<Option<String>>,
    sip_code: Vec<Option<String>>,
    sip_reason: Vec<Option<String>>,
    src_user: Vec<Option<String>>,
    dst_user: Vec<Option<String>>,
    extras: Vec<String>,
    source_node: Vec<Option<String>>,
    stream_seq: Vec<Option<i64>>,
}

impl Columns {
    fn of(rows: &[&RecordRow]) -> Result<Self, StoreError> {
        let n = rows.len();
        let mut c = Self {
            msg_id: Vec::with_capacity(n),
            call_id: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            priority: Vec::with_capacity(n),
            time: Vec::with_capacity(n),
            method: Vec::with_capacity(n),
            from_tag: Vec::with_capacity(n),
            to_tag: Vec::with_capacity(n),
            sip_code: Vec::with_capacity(n),
            sip_reason: Vec::with_capacity(n),
            src_user: Vec::with_capacity(n),
            dst_user: Vec::with_capacity(n),
            extras: Vec::with_capacity(n),
            source_node: Vec::with_capacity(n),
            stream_seq: Vec::with_capacity(n),
        };
        for row in rows {
            let record = &row.record;
            let kind = record.kind();
            c.msg_id.push(row.msg_id.clone());
            c.call_id.push(record.call_id.clone());
            c.kind.push(kind.as_str());
            c.priority.push(i16::from(priority(kind)));
            c.time.push(record.time);
            c.method.push(record.method.clone());
            c.from_tag.push(record.from_tag.clone());
            c.to_tag.push(record.to_tag.clone());
            c.sip_code.push(record.sip_code.clone());
            c.sip_reason.push(record.sip_reason.clone());
            c.src_user.push(record.src_user().map(str::to_owned));
            c.dst_user.push(record.dst_user().map(str::to_owned));
            c.extras.push(
                serde_json::to_string(&record.extras)
                    .map_err(|e| StoreError::BadRow(format!("extras do not serialise: {e}")))?,
            );
            c.source_node.push(row.source_node.clone());
            c.stream_seq
                .push(row.stream_seq.and_then(|seq| i64::try_from(seq).ok()));
        }
        Ok(c)
    }
}

/// A `cdr` row as the contract's [`MergedCdr`].
fn cdr_from_row(row: &sqlx::postgres::PgRow) -> Result<MergedCdr, StoreError> {
    let get_text = |name: &str| -> Result<Option<String>, StoreError> {
        row.try_get::<Option<String>, _>(name)
            .map_err(StoreError::Query)
    };
    let disposition = match row
        .try_get::<String, _>("disposition")
        .map_err(StoreError::Query)?
        .as_str()
    {
        "answered" => Disposition::Answered,
        "cancelled" => Disposition::Cancelled,
        "failed" => Disposition::Failed,
        "unknown" => Disposition::Unknown,
        other => return Err(StoreError::BadRow(format!("disposition {other:?}"))),
    };
    let extras_text: String = row.try_get("extras").map_err(StoreError::Query)?;
    let extras: Map<String, Value> = serde_json::from_str(&extras_text)
        .map_err(|e| StoreError::BadRow(format!("extras: {e}")))?;
    let record_count: i32 = row.try_get("record_count").map_err(StoreError::Query)?;
    Ok(MergedCdr {
        call_id: row.try_get("call_id").map_err(StoreError::Query)?,
        setup_time: row.try_get("setup_time").map_err(StoreError::Query)?,
        answer_time: row.try_get("answer_time").map_err(StoreError::Query)?,
        end_time: row.try_get("end_time").map_err(StoreError::Query)?,
        duration_ms: row.try_get("duration_ms").map_err(StoreError::Query)?,
        disposition,
        sip_code: get_text("sip_code")?,
        sip_reason: get_text("sip_reason")?,
        from_tag: get_text("from_tag")?,
        to_tag: get_text("to_tag")?,
        src_user: get_text("src_user")?,
        dst_user: get_text("dst_user")?,
        extras,
        record_count: usize::try_from(record_count)
            .map_err(|_| StoreError::BadRow(format!("record_count {record_count}")))?,
    })
}
