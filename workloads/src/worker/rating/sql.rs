//! The rules of [`rate`](super::rate) and [`settle`](super::settle) in SQL, run by the store in
//! the transaction of a batch, under the calls' advisory locks:
//! 1. [`RATING_CTES`] rate the merged CDRs (`m`) of the calls; the store writes each call's
//!    merged and rated row in one upsert (one row version per call);
//! 2. [`LOCK_ACCOUNTS`] locks every account the settlement may touch, in id order (two workers
//!    settling calls of the same accounts wait for each other instead of deadlocking);
//! 3. [`SETTLE`] books, per call, the difference between its target and its ledger entries, and
//!    moves the balances by it; it returns the money moved per currency for the metrics.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use sqlx::postgres::{PgPool, PgRow};
use sqlx::{Postgres, Row, Transaction};

use super::{Account, Charge, LedgerEntry, Rate, RatePlan, Rating, Tariffs, UnratedReason};
use crate::worker::store::StoreError;

/// The rating columns of `cdr` that [`RATING_CTES`] compute (besides `rated_at`).
pub const RATING_COLUMNS: &[&str] = &[
    "rating_status",
    "unrated_reason",
    "account_id",
    "rate_plan_id",
    "rate_prefix",
    "rate_valid_from",
    "billable_seconds",
    "charge",
    "currency",
];

/// Common table expressions rating the merged CDRs of CTE `m` (account key `$2`, default
/// country code `$3`, `''` for none); the last, `rated`, has `call_id`, the
/// [`RATING_COLUMNS`] and `rated_at`.
pub const RATING_CTES: &str = r#"
c AS (
  SELECT m.call_id, m.disposition, m.duration_ms,
         CASE WHEN m.disposition = 'answered' THEN m.answer_time ELSE m.setup_time END AS at,
         CASE WHEN jsonb_typeof(m.extras -> $2::text) = 'string' AND (m.extras ->> $2::text) <> ''
              THEN m.extras ->> $2::text END AS caller,
         regexp_replace(m.dst_user, '[ .()-]', '', 'g') AS digits
    FROM m
), e AS (
  SELECT c.*,
         CASE WHEN c.digits LIKE '+%'  THEN substr(c.digits, 2)
              WHEN c.digits LIKE '00%' THEN substr(c.digits, 3)
              WHEN c.digits LIKE '0%'  THEN CASE WHEN $3::text <> '' THEN $3::text || substr(c.digits, 2) END
              ELSE c.digits END AS number
    FROM c
), v AS MATERIALIZED (
  -- Materialised: the number is computed once per call, not once per use.
  SELECT e.call_id, e.disposition, e.duration_ms, e.at, e.caller,
         CASE WHEN e.number ~ '^[1-9][0-9]{0,14}$' THEN e.number END AS number
    FROM e
), r AS (
  SELECT v.*, a.id AS account_id, a.currency AS account_currency,
         p.id AS plan_id, p.currency AS plan_currency
    FROM v
    LEFT JOIN account AS a ON a.id = v.caller
    LEFT JOIN rate_plan AS p ON p.id = a.rate_plan_id
), t AS (
  SELECT r.*, x.prefix, x.valid_from, x.price_per_minute, x.connection_fee, x.setup_fee,
         x.initial_increment, x.subsequent_increment, x.min_billable,
         (r.duration_ms + 999) / 1000 AS seconds
    FROM r
    LEFT JOIN LATERAL (
          -- Each prefix of the number, longest first, is one probe of the rate's primary key
          -- (plan, prefix, valid_from) for the latest row valid at the rating time: a plan the
          -- statistics cannot turn into a scan of the whole tariff per call.
          SELECT q.* FROM generate_series(length(r.number), 0, -1) AS k
           CROSS JOIN LATERAL (
                 SELECT * FROM rate AS q
                  WHERE q.plan_id = r.plan_id AND q.prefix = left(r.number, k)
                    AND q.valid_from <= r.at AND (q.valid_to IS NULL OR r.at < q.valid_to)
                  ORDER BY q.valid_from DESC
                  LIMIT 1) AS q
           WHERE r.number IS NOT NULL AND r.disposition <> 'unknown' AND r.duration_ms IS NOT NULL
           ORDER BY k DESC
           LIMIT 1) AS x ON true
), b AS (
  SELECT t.*,
         CASE WHEN t.disposition <> 'answered' THEN 0::bigint
              ELSE greatest(
                     CASE WHEN t.seconds = 0 THEN 0
                          WHEN t.seconds <= t.initial_increment THEN t.initial_increment
                          ELSE t.initial_increment
                               + ((t.seconds - t.initial_increment + t.subsequent_increment - 1)
                                  / t.subsequent_increment) * t.subsequent_increment
                     END,
                     t.min_billable)
         END AS billable
    FROM t
), o AS (
  SELECT b.*,
         CASE WHEN b.disposition = 'unknown'             THEN 'unknown_disposition'
              WHEN b.duration_ms IS NULL OR b.at IS NULL THEN 'incomplete'
              WHEN b.caller IS NULL                      THEN 'no_caller'
              WHEN b.account_id IS NULL                  THEN 'unknown_account'
              WHEN b.plan_id IS NULL                     THEN 'no_plan'
              WHEN b.plan_currency <> b.account_currency THEN 'currency_mismatch'
              WHEN b.number IS NULL                      THEN 'bad_destination'
              WHEN b.prefix IS NULL                      THEN 'no_rate'
              WHEN b.billable > 2147483647               THEN 'out_of_range'
         END AS reason
    FROM b
), rated AS (
  SELECT o.call_id,
         CASE WHEN o.reason IS NULL THEN 'rated' ELSE 'unrated' END AS rating_status,
         o.reason AS unrated_reason,
         o.caller AS account_id,
         CASE WHEN o.reason IS NULL THEN o.plan_id END AS rate_plan_id,
         CASE WHEN o.reason IS NULL THEN o.prefix END AS rate_prefix,
         CASE WHEN o.reason IS NULL THEN o.valid_from END AS rate_valid_from,
         CASE WHEN o.reason IS NULL THEN o.billable::int4 END AS billable_seconds,
         CASE WHEN o.reason IS NOT NULL THEN NULL
              WHEN o.disposition <> 'answered' THEN o.setup_fee
              ELSE o.connection_fee
                   + div(o.price_per_minute * 1000000 * o.billable + 3000, 6000) * 0.0001
         END::numeric(20,4) AS charge,
         CASE WHEN o.reason IS NULL THEN o.plan_currency END AS currency,
         now() AS rated_at
    FROM o
)"#;

/// Locks, in id order, every account that calls `$1` are charged to or have entries on.
pub const LOCK_ACCOUNTS: &str = "\
SELECT a.id FROM account AS a
 WHERE a.id IN (SELECT d.account_id FROM cdr AS d
                 WHERE d.call_id = ANY($1::text[]) AND d.rating_status = 'rated'
                UNION
                SELECT l.account_id FROM unnest($1::text[]) AS c (call_id)
                 CROSS JOIN LATERAL (SELECT e.account_id FROM ledger_entry AS e
                                      WHERE e.call_id = c.call_id) AS l)
 ORDER BY a.id COLLATE \"C\"
   FOR UPDATE";

/// Books the differences between the targets of calls `$1` and their ledger entries, moves the
/// balances by them, and returns per currency: money debited, money credited (both >= 0), and
/// prepaid accounts that reached zero.
pub const SETTLE: &str = r#"
WITH entries AS MATERIALIZED (
  -- The calls' entries, read once, by one primary-key probe per call (whatever the statistics
  -- of a ledger that grows by a row per call say).
  SELECT l.call_id, l.seq, l.account_id, l.currency, l.amount
    FROM unnest($1::text[]) AS c (call_id)
   CROSS JOIN LATERAL (SELECT * FROM ledger_entry AS e WHERE e.call_id = c.call_id) AS l
), target AS (
  SELECT call_id, account_id, currency, charge AS amount FROM cdr
   WHERE call_id = ANY($1::text[]) AND rating_status = 'rated' AND charge <> 0
), booked AS (
  SELECT call_id, account_id, currency, sum(amount) AS amount FROM entries
   GROUP BY call_id, account_id, currency
), last AS (
  SELECT call_id, max(seq) AS seq FROM entries GROUP BY call_id
), delta AS (
  SELECT call_id, account_id, currency,
         coalesce(t.amount, 0) - coalesce(k.amount, 0) AS amount
    FROM target AS t FULL JOIN booked AS k USING (call_id, account_id, currency)
   WHERE coalesce(t.amount, 0) <> coalesce(k.amount, 0)
), ins AS (
  INSERT INTO ledger_entry (call_id, seq, account_id, currency, amount)
  SELECT d.call_id,
         coalesce(l.seq, 0) + row_number() OVER (PARTITION BY d.call_id
                                                 ORDER BY d.amount, d.account_id COLLATE "C",
                                                          d.currency COLLATE "C"),
         d.account_id, d.currency, d.amount
    FROM delta AS d LEFT JOIN last AS l USING (call_id)
  RETURNING account_id, currency, amount
), per_account AS (
  SELECT account_id, sum(amount) AS amount FROM ins GROUP BY account_id
), moved AS (
  UPDATE account AS a SET balance = a.balance - p.amount, updated_at = now()
    FROM per_account AS p
   WHERE a.id = p.account_id
  RETURNING a.currency, a.prepaid, a.balance + p.amount AS before, a.balance AS after
), money AS (
  SELECT currency,
         coalesce(sum(amount) FILTER (WHERE amount > 0), 0) AS debited,
         coalesce(-sum(amount) FILTER (WHERE amount < 0), 0) AS credited
    FROM ins GROUP BY currency
), exhausted AS (
  SELECT currency, count(*) AS accounts FROM moved
   WHERE prepaid AND before > 0 AND after <= 0
   GROUP BY currency
)
SELECT coalesce(m.currency, x.currency) AS currency,
       coalesce(m.debited, 0) AS debited, coalesce(m.credited, 0) AS credited,
       coalesce(x.accounts, 0) AS exhausted
  FROM money AS m FULL JOIN exhausted AS x USING (currency)"#;

/// Money moved in one currency by a settlement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moved {
    /// Sum of the debits booked (>= 0).
    pub debited: Decimal,
    /// Sum of the credits booked, as a positive amount (>= 0).
    pub credited: Decimal,
    /// Prepaid accounts whose balance crossed to zero or below.
    pub exhausted: u64,
}

/// What rating a batch did, for the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RatingOutcome {
    /// CDRs whose rating changed to rated (or to another charge).
    pub rated: u64,
    /// CDRs whose rating changed to unrated, by reason.
    pub unrated: BTreeMap<UnratedReason, u64>,
    /// Money moved, by currency.
    pub moved: BTreeMap<String, Moved>,
}

impl RatingOutcome {
    /// Debited money by currency as floats, for counters only.
    pub fn debited_f64(&self) -> impl Iterator<Item = (&str, f64, f64)> {
        self.moved.iter().map(|(currency, moved)| {
            (
                currency.as_str(),
                moved.debited.to_f64().unwrap_or(0.0),
                moved.credited.to_f64().unwrap_or(0.0),
            )
        })
    }

    /// Prepaid accounts that reached zero.
    pub fn exhausted(&self) -> u64 {
        self.moved.values().map(|moved| moved.exhausted).sum()
    }
}

impl RatingOutcome {
    /// Counts the rows the rating upsert returned (`rating_status`, `unrated_reason`,
    /// `rating_changed`): the CDRs whose rating changed.
    pub fn count(&mut self, rows: &[PgRow]) -> Result<(), StoreError> {
        for row in rows {
            let changed: bool = row.try_get("rating_changed").map_err(StoreError::Query)?;
            if !changed {
                continue;
            }
            let reason: Option<String> =
                row.try_get("unrated_reason").map_err(StoreError::Query)?;
            match reason.as_deref().map(UnratedReason::from_name) {
                None => self.rated += 1,
                Some(Some(reason)) => *self.unrated.entry(reason).or_default() += 1,
                Some(None) => {
                    return Err(StoreError::BadRow(format!("unrated reason {reason:?}")));
                }
            }
        }
        Ok(())
    }
}

/// Settles calls `call_ids` inside `tx`, after their rows are rated (steps 2 and 3 of the module
/// doc); returns the money moved by currency.
pub async fn settle_calls(
    tx: &mut Transaction<'static, Postgres>,
    call_ids: &[String],
) -> Result<BTreeMap<String, Moved>, StoreError> {
    sqlx::query(LOCK_ACCOUNTS)
        .bind(call_ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::Query)?;
    let rows = sqlx::query(SETTLE)
        .bind(call_ids)
        .fetch_all(&mut **tx)
        .await
        .map_err(StoreError::Query)?;
    let mut moved = BTreeMap::new();
    for row in &rows {
        let get = |name: &str| -> Result<Decimal, StoreError> {
            row.try_get(name).map_err(StoreError::Query)
        };
        let currency: String = row.try_get("currency").map_err(StoreError::Query)?;
        let exhausted: i64 = row.try_get("exhausted").map_err(StoreError::Query)?;
        moved.insert(
            currency,
            Moved {
                debited: get("debited")?,
                credited: get("credited")?,
                exhausted: u64::try_from(exhausted).unwrap_or(0),
            },
        );
    }
    Ok(moved)
}

/// The rating stored on every `cdr` row that has one (`rating_status` set), by call id.
pub async fn load_ratings(pool: &PgPool) -> Result<BTreeMap<String, Rating>, StoreError> {
    let rows = sqlx::query(
        "SELECT call_id, rating_status, unrated_reason, account_id, rate_plan_id, rate_prefix,
                rate_valid_from, billable_seconds, charge, currency
           FROM cdr WHERE rating_status IS NOT NULL",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    let mut ratings = BTreeMap::new();
    for row in &rows {
        let get_text = |name: &str| -> Result<Option<String>, StoreError> {
            row.try_get(name).map_err(StoreError::Query)
        };
        let call_id: String = row.try_get("call_id").map_err(StoreError::Query)?;
        let rating = match get_text("unrated_reason")? {
            Some(reason) => Rating::Unrated {
                reason: UnratedReason::from_name(&reason)
                    .ok_or_else(|| StoreError::BadRow(format!("unrated reason {reason:?}")))?,
                account_id: get_text("account_id")?,
            },
            None => {
                let need = |name: &str| -> Result<String, StoreError> {
                    get_text(name)?
                        .ok_or_else(|| StoreError::BadRow(format!("rated CDR without {name}")))
                };
                let billable: Option<i32> =
                    row.try_get("billable_seconds").map_err(StoreError::Query)?;
                let valid_from: Option<DateTime<Utc>> =
                    row.try_get("rate_valid_from").map_err(StoreError::Query)?;
                let amount: Option<Decimal> = row.try_get("charge").map_err(StoreError::Query)?;
                Rating::Rated(Charge {
                    account_id: need("account_id")?,
                    rate_plan_id: need("rate_plan_id")?,
                    currency: need("currency")?,
                    rate_prefix: need("rate_prefix")?,
                    rate_valid_from: valid_from
                        .ok_or_else(|| StoreError::BadRow("rated CDR without rate".into()))?,
                    billable_seconds: i64::from(billable.unwrap_or(0)),
                    amount: amount
                        .ok_or_else(|| StoreError::BadRow("rated CDR without charge".into()))?,
                })
            }
        };
        ratings.insert(call_id, rating);
    }
    Ok(ratings)
}

/// Every ledger entry, by call id, in `seq` order.
pub async fn load_ledger(pool: &PgPool) -> Result<BTreeMap<String, Vec<LedgerEntry>>, StoreError> {
    let rows = sqlx::query(
        "SELECT call_id, account_id, currency, amount FROM ledger_entry ORDER BY call_id, seq",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    let mut ledger: BTreeMap<String, Vec<LedgerEntry>> = BTreeMap::new();
    for row in &rows {
        let call_id: String = row.try_get("call_id").map_err(StoreError::Query)?;
        ledger.entry(call_id).or_default().push(LedgerEntry {
            account_id: row.try_get("account_id").map_err(StoreError::Query)?,
            currency: row.try_get("currency").map_err(StoreError::Query)?,
            amount: row.try_get("amount").map_err(StoreError::Query)?,
        });
    }
    Ok(ledger)
}

/// The tariff tables and balances as they stand.
pub async fn load_tariffs(pool: &PgPool) -> Result<Tariffs, StoreError> {
    let mut tariffs = Tariffs::default();
    let plans = sqlx::query("SELECT id, currency FROM rate_plan")
        .fetch_all(pool)
        .await
        .map_err(StoreError::Query)?;
    for row in &plans {
        let plan = RatePlan {
            id: row.try_get("id").map_err(StoreError::Query)?,
            currency: row.try_get("currency").map_err(StoreError::Query)?,
        };
        tariffs.plans.insert(plan.id.clone(), plan);
    }
    let accounts = sqlx::query("SELECT id, currency, rate_plan_id, balance, prepaid FROM account")
        .fetch_all(pool)
        .await
        .map_err(StoreError::Query)?;
    for row in &accounts {
        let account = Account {
            id: row.try_get("id").map_err(StoreError::Query)?,
            currency: row.try_get("currency").map_err(StoreError::Query)?,
            rate_plan_id: row.try_get("rate_plan_id").map_err(StoreError::Query)?,
            balance: row.try_get("balance").map_err(StoreError::Query)?,
            prepaid: row.try_get("prepaid").map_err(StoreError::Query)?,
        };
        tariffs.accounts.insert(account.id.clone(), account);
    }
    let rates = sqlx::query(
        "SELECT plan_id, prefix, valid_from, valid_to, price_per_minute, connection_fee, setup_fee,
                initial_increment, subsequent_increment, min_billable
           FROM rate ORDER BY plan_id, prefix, valid_from",
    )
    .fetch_all(pool)
    .await
    .map_err(StoreError::Query)?;
    for row in &rates {
        let get = |name: &str| -> Result<Decimal, StoreError> {
            row.try_get(name).map_err(StoreError::Query)
        };
        let int = |name: &str| -> Result<i32, StoreError> {
            row.try_get(name).map_err(StoreError::Query)
        };
        tariffs.rates.push(Rate {
            plan_id: row.try_get("plan_id").map_err(StoreError::Query)?,
            prefix: row.try_get("prefix").map_err(StoreError::Query)?,
            valid_from: row.try_get("valid_from").map_err(StoreError::Query)?,
            valid_to: row.try_get("valid_to").map_err(StoreError::Query)?,
            price_per_minute: get("price_per_minute")?,
            connection_fee: get("connection_fee")?,
            setup_fee: get("setup_fee")?,
            initial_increment: int("initial_increment")?,
            subsequent_increment: int("subsequent_increment")?,
            min_billable: int("min_billable")?,
        });
    }
    Ok(tariffs)
}

/// Inserts `tariffs` (plans, then rates, then accounts with their balances), then has
/// PostgreSQL analyse the three tables: the rating statement is planned from their statistics,
/// and a freshly loaded tariff without them is priced one call at a time (tens of times slower)
/// until autovacuum gets to it. Whoever bulk-loads tariffs should do the same.
pub async fn insert_tariffs(pool: &PgPool, tariffs: &Tariffs) -> Result<(), StoreError> {
    let mut tx = pool.begin().await.map_err(StoreError::Query)?;
    for plan in tariffs.plans.values() {
        sqlx::query("INSERT INTO rate_plan (id, currency) VALUES ($1, $2)")
            .bind(&plan.id)
            .bind(&plan.currency)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::Query)?;
    }
    for rate in &tariffs.rates {
        sqlx::query(
            "INSERT INTO rate (plan_id, prefix, valid_from, valid_to, price_per_minute,
                               connection_fee, setup_fee, initial_increment,
                               subsequent_increment, min_billable)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&rate.plan_id)
        .bind(&rate.prefix)
        .bind(rate.valid_from)
        .bind(rate.valid_to)
        .bind(rate.price_per_minute)
        .bind(rate.connection_fee)
        .bind(rate.setup_fee)
        .bind(rate.initial_increment)
        .bind(rate.subsequent_increment)
        .bind(rate.min_billable)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::Query)?;
    }
    for account in tariffs.accounts.values() {
        sqlx::query(
            "INSERT INTO account (id, currency, rate_plan_id, balance, prepaid)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&account.id)
        .bind(&account.currency)
        .bind(&account.rate_plan_id)
        .bind(account.balance)
        .bind(account.prepaid)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::Query)?;
    }
    tx.commit().await.map_err(StoreError::Query)?;
    sqlx::query("ANALYZE rate_plan, rate, account")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(StoreError::Query)
}
