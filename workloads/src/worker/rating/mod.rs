//! Rating and balance debit: the charge of a CDR as a pure function of the CDR and the tariffs,
//! and the ledger entries that make an account's debits for a call sum to that charge.
//!
//! The worker runs the same rules in SQL ([`sql`]), in the transaction that merges the call's
//! records, so a CDR is never stored without its charge being booked and never charged twice.
//! This module is the specification: the SQL is pinned to it by a test on a real PostgreSQL
//! (`workloads/tests/worker_billing_sql.rs`), as the SQL merge is pinned to `contract::merge`.
//!
//! # The model (tables of the migration `*_rating.sql`)
//!
//! - `rate_plan (id, currency, description)`: a named price list in one currency.
//! - `rate (plan_id, prefix, valid_from, valid_to, price_per_minute, connection_fee, setup_fee,
//!   initial_increment, subsequent_increment, min_billable)`: the price of the destinations
//!   starting with `prefix` (E.164 digits without `+`, `''` matches every number) from
//!   `valid_from` (inclusive) to `valid_to` (exclusive, none: open). Its terms cannot be updated,
//!   only its `valid_to` (see *Editing a tariff*).
//! - `account (id, currency, rate_plan_id, balance, prepaid, exhausted)`: who pays, found by the
//!   CDR's caller (the acc extra `--account-key`, `src_user` by default); `exhausted` is
//!   `prepaid AND balance <= 0`, maintained by PostgreSQL.
//! - `ledger_entry (call_id, seq, account_id, currency, amount)`: every debit (positive) and
//!   credit (negative) of an account for a call; `seq` numbers a call's entries from 1.
//! - `cdr` gains `rating_status` (`rated` / `unrated`, none while rating is off or for rows
//!   stored before rating existed), `unrated_reason`, `account_id`, `rate_plan_id`,
//!   `rate_prefix`, `rate_valid_from`, `billable_seconds`, `charge`, `currency`, `rated_at`.
//!
//! # Rules ([`rate`])
//!
//! A CDR is rated at its *rating time*: the answer time of an answered call, the setup time of
//! an unanswered one. The first rule that applies decides:
//!
//! 1. disposition `unknown` (only provisional or ACK records so far): unrated `unknown_disposition`;
//! 2. answered, but no duration (the BYE or the answer not seen yet, or the BYE before the
//!    answer): unrated `incomplete`;
//! 3. no caller (the account key is not a non-empty string extra of the CDR): `no_caller`;
//! 4. no `account` row with that id: `unknown_account`;
//! 5. the account has no rate plan: `no_plan`;
//! 6. the plan's currency is not the account's: `currency_mismatch`;
//! 7. the called number (`dst_user`) does not normalise to E.164 ([`normalise_e164`]):
//!    `bad_destination`;
//! 8. no rate of the plan has a prefix of the number and is valid at the rating time:
//!    `no_rate`; otherwise the longest matching prefix wins, and among rates of that prefix the
//!    latest `valid_from`;
//! 9. more than 2^31 - 1 billable seconds: `out_of_range`;
//! 10. rated. An unanswered call costs the rate's `setup_fee` (0 by default). An answered call
//!     costs `connection_fee + price_per_minute * billable_seconds / 60`, where
//!     [`billable_seconds`] rounds the duration up to whole seconds, then to the first increment
//!     and whole subsequent increments (`60/60`, `30/6`, `1/1`, ...), and to at least
//!     `min_billable`.
//!
//! # Arithmetic and rounding
//!
//! Exact decimals only (PostgreSQL `numeric`, [`Decimal`] here; never floats): prices per minute
//! have 6 decimal places (`numeric(12,6)`), fees and charges 4 (`numeric(12,4)`,
//! `numeric(20,4)`). The time part `price_per_minute * billable_seconds / 60` is the one
//! division, rounded once, half away from zero (half up: it is never negative), to 4 decimal
//! places: in integers, `floor((price in millionths * seconds + 3000) / 6000)` ten-thousandths.
//! The fees are added unrounded (they have 4 places already). Balances and ledger amounts are
//! sums of charges, so they are exact too. Prometheus counters of money are floats, for
//! dashboards only.
//!
//! # The ledger: exactly once in effect ([`settle`])
//!
//! In the transaction that (re)rates a call, under the call's advisory lock, the worker compares
//! the call's *target* (its charge on its account, when rated and not zero; nothing otherwise)
//! with the sum of its ledger entries per (account, currency), books the difference as new
//! entries and moves the balances by them (accounts locked in id order, so two workers never
//! deadlock). Hence, after every commit, a call's ledger entries sum to the charge of its CDR as
//! it stands, and an account's balance has moved by exactly the sum of its entries:
//! - a replay, a redelivery or a second worker finds nothing to book (the difference is 0);
//! - a late record that changes the CDR (the BYE after the answered INVITE, an earlier INVITE,
//!   a record that changes the caller) books an adjusting entry: the difference, or a reversal on
//!   the old account and a charge on the new;
//! - a call that becomes unrated is fully reversed.
//!
//! Balances may go negative. A prepaid account whose balance crosses to zero or below is counted
//! (`cdr_worker_prepaid_exhausted_total`) and flagged (`account.exhausted`).
//!
//! # Editing a tariff: which calls it affects
//!
//! Rating is a function of the CDR and the tariff tables, evaluated each time a record of the
//! call arrives. To change a price from a moment `T` on, end the current row (`valid_to = T`)
//! and insert the new one (`valid_from = T`), in one transaction: calls whose rating time is
//! before `T` keep the old price, whenever their records arrive (a late BYE included), and calls
//! from `T` on get the new one. The terms of a `rate` row cannot be updated in place (a trigger
//! refuses it): an in-place edit would re-price only the older calls that happen to receive a
//! record after it, which no one could tell apart. Moving a `valid_to` or deleting a row, or
//! changing an account's plan, affects the calls rated after it (the new calls, and older calls
//! that receive a late record); the ledger adjusts those calls to their new charge. Rows stored
//! before the rating migration are not rated (no debit for history) until a record of the call
//! arrives.

pub mod sql;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::contract::merge::{Disposition, MergedCdr};

/// Default acc extra that names the paying account: the calling user.
pub const DEFAULT_ACCOUNT_KEY: &str = "src_user";

/// Decimal places of prices per minute (`numeric(12,6)`).
pub const PRICE_SCALE: u32 = 6;
/// Decimal places of fees, charges and ledger amounts (`numeric(12,4)`, `numeric(20,4)`).
pub const MONEY_SCALE: u32 = 4;
/// Most billable seconds a call may have (fits `integer`).
pub const MAX_BILLABLE_SECONDS: i64 = i32::MAX as i64;

/// How the worker rates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatingConfig {
    /// Rate CDRs and debit accounts (off: the rating columns stay empty).
    pub enabled: bool,
    /// The acc extra holding the id of the paying account.
    pub account_key: String,
    /// Country code (digits) that replaces the single leading `0` of a national number; none:
    /// such numbers are not E.164 and their calls are unrated (`bad_destination`).
    pub default_country_code: Option<String>,
}

impl Default for RatingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            account_key: DEFAULT_ACCOUNT_KEY.to_owned(),
            default_country_code: None,
        }
    }
}

/// Why a CDR is stored without a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnratedReason {
    /// Disposition `unknown`: only provisional or ACK records so far.
    UnknownDisposition,
    /// Answered, but the duration is not known yet (BYE or answer missing, or out of order).
    Incomplete,
    /// The CDR names no caller under the account key.
    NoCaller,
    /// No account has the caller's id.
    UnknownAccount,
    /// The account has no rate plan.
    NoPlan,
    /// The plan's currency is not the account's.
    CurrencyMismatch,
    /// The called number is missing or not an E.164 number.
    BadDestination,
    /// No rate of the plan matches the number at the rating time.
    NoRate,
    /// More billable seconds than the schema holds.
    OutOfRange,
}

impl UnratedReason {
    /// Every reason, in rule order.
    pub const ALL: [Self; 9] = [
        Self::UnknownDisposition,
        Self::Incomplete,
        Self::NoCaller,
        Self::UnknownAccount,
        Self::NoPlan,
        Self::CurrencyMismatch,
        Self::BadDestination,
        Self::NoRate,
        Self::OutOfRange,
    ];

    /// The stored name (`cdr.unrated_reason`) and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownDisposition => "unknown_disposition",
            Self::Incomplete => "incomplete",
            Self::NoCaller => "no_caller",
            Self::UnknownAccount => "unknown_account",
            Self::NoPlan => "no_plan",
            Self::CurrencyMismatch => "currency_mismatch",
            Self::BadDestination => "bad_destination",
            Self::NoRate => "no_rate",
            Self::OutOfRange => "out_of_range",
        }
    }

    /// The reason stored as `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.as_str() == name)
    }
}

impl std::fmt::Display for UnratedReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row of `account`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The caller id it is found by.
    pub id: String,
    /// ISO 4217 code of its balance.
    pub currency: String,
    /// Its rate plan.
    pub rate_plan_id: Option<String>,
    /// Its balance (debits lower it).
    pub balance: Decimal,
    /// Whether it is prepaid (flagged when its balance reaches zero).
    pub prepaid: bool,
}

/// A row of `rate_plan`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatePlan {
    /// Its name.
    pub id: String,
    /// ISO 4217 code of its prices.
    pub currency: String,
}

/// A row of `rate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    /// The plan it belongs to.
    pub plan_id: String,
    /// Leading E.164 digits of the destinations it prices (`""`: all).
    pub prefix: String,
    /// First instant it applies to (inclusive).
    pub valid_from: DateTime<Utc>,
    /// First instant it no longer applies to (exclusive); none: open-ended.
    pub valid_to: Option<DateTime<Utc>>,
    /// Price of a billable minute (6 decimal places).
    pub price_per_minute: Decimal,
    /// Charged once per answered call (4 decimal places).
    pub connection_fee: Decimal,
    /// The whole charge of an unanswered call (4 decimal places).
    pub setup_fee: Decimal,
    /// First billing increment, seconds (>= 1).
    pub initial_increment: i32,
    /// Every further billing increment, seconds (>= 1).
    pub subsequent_increment: i32,
    /// Least billable seconds of an answered call (>= 0).
    pub min_billable: i32,
}

impl Rate {
    /// Whether the rate applies at `at`.
    pub fn is_valid_at(&self, at: DateTime<Utc>) -> bool {
        self.valid_from <= at && self.valid_to.is_none_or(|to| at < to)
    }
}

/// The tariff tables (and balances) as the rules see them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tariffs {
    /// Accounts by id.
    pub accounts: BTreeMap<String, Account>,
    /// Rate plans by id.
    pub plans: BTreeMap<String, RatePlan>,
    /// Every rate.
    pub rates: Vec<Rate>,
}

/// The charge of a rated CDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The paying account.
    pub account_id: String,
    /// Its rate plan.
    pub rate_plan_id: String,
    /// The currency of the charge (the plan's and the account's).
    pub currency: String,
    /// The prefix of the rate applied.
    pub rate_prefix: String,
    /// The `valid_from` of the rate applied (with the plan and prefix, its key).
    pub rate_valid_from: DateTime<Utc>,
    /// Seconds billed (0 for an unanswered call).
    pub billable_seconds: i64,
    /// The amount, 4 decimal places.
    pub amount: Decimal,
}

/// The outcome of rating one CDR.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rating {
    /// Rated, with its charge (possibly zero).
    Rated(Charge),
    /// Stored without a charge.
    Unrated {
        /// Why.
        reason: UnratedReason,
        /// The caller id, when the CDR names one (whether or not an account has it).
        account_id: Option<String>,
    },
}

impl Rating {
    /// The charge, when rated.
    pub fn charge(&self) -> Option<&Charge> {
        match self {
            Self::Rated(charge) => Some(charge),
            Self::Unrated { .. } => None,
        }
    }

    /// What the call's ledger entries must sum to: `(account, currency, amount)`, none when
    /// unrated or free.
    pub fn target(&self) -> Option<(&str, &str, Decimal)> {
        self.charge()
            .filter(|charge| !charge.amount.is_zero())
            .map(|charge| {
                (
                    charge.account_id.as_str(),
                    charge.currency.as_str(),
                    charge.amount,
                )
            })
    }
}

/// The called number as E.164 digits (no `+`), or none.
///
/// Removes the visual separators `' '`, `.`, `-`, `(`, `)`; then a leading `+` or `00` is the
/// international prefix and is dropped, and a single leading `0` (a national number) is
/// replaced by `default_country_code` (none configured: not E.164). What remains must be 1 to 15
/// ASCII digits not starting with `0`.
pub fn normalise_e164(raw: &str, default_country_code: Option<&str>) -> Option<String> {
    let digits: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '.' | '-' | '(' | ')'))
        .collect();
    let number = if let Some(rest) = digits.strip_prefix('+') {
        rest.to_owned()
    } else if let Some(rest) = digits.strip_prefix("00") {
        rest.to_owned()
    } else if let Some(rest) = digits.strip_prefix('0') {
        format!("{}{rest}", default_country_code?)
    } else {
        digits
    };
    let valid = (1..=15).contains(&number.len())
        && number.bytes().all(|b| b.is_ascii_digit())
        && !number.starts_with('0');
    valid.then_some(number)
}

/// Seconds billed for an answered call of `duration_ms` under `rate`.
///
/// The duration rounded up to whole seconds `s`; `0` stays `0`; up to the initial increment
/// bills the initial increment; beyond it, whole subsequent increments are added, the last one
/// rounded up; the result is at least `min_billable`.
pub fn billable_seconds(duration_ms: i64, rate: &Rate) -> i64 {
    let seconds = (duration_ms.max(0) + 999) / 1000;
    let initial = i64::from(rate.initial_increment.max(1));
    let subsequent = i64::from(rate.subsequent_increment.max(1));
    let incremented = if seconds == 0 {
        0
    } else if seconds <= initial {
        initial
    } else {
        initial + (seconds - initial + subsequent - 1) / subsequent * subsequent
    };
    incremented.max(i64::from(rate.min_billable.max(0)))
}

/// The charge of an answered call billed `billable` seconds under `rate`: the connection fee
/// plus the time part rounded once, half up, to 4 decimal places (see the module doc). None when
/// the numbers do not fit (they always do within the schema's limits).
pub fn answered_charge(rate: &Rate, billable: i64) -> Option<Decimal> {
    let micros = scaled_units(rate.price_per_minute, PRICE_SCALE)?;
    let time_units = micros
        .checked_mul(i128::from(billable))?
        .checked_add(3_000)?
        .div_euclid(6_000);
    let fee_units = scaled_units(rate.connection_fee, MONEY_SCALE)?;
    Decimal::try_from_i128_with_scale(time_units.checked_add(fee_units)?, MONEY_SCALE).ok()
}

/// `value` rounded half away from zero to `scale` places (as a `numeric(p, scale)` column
/// stores it), in units of `10^-scale`.
fn scaled_units(value: Decimal, scale: u32) -> Option<i128> {
    let mut rounded = value.round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(scale);
    (rounded.scale() == scale).then(|| rounded.mantissa())
}

/// `value` as stored in a column of `scale` decimal places.
pub fn at_scale(value: Decimal, scale: u32) -> Decimal {
    let mut rounded = value.round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero);
    rounded.rescale(scale);
    rounded
}

/// Rates `cdr` with `tariffs`: see the module doc for the rules.
pub fn rate(cdr: &MergedCdr, tariffs: &Tariffs, config: &RatingConfig) -> Rating {
    let caller = cdr
        .extras
        .get(&config.account_key)
        .and_then(serde_json::Value::as_str)
        .filter(|id| !id.is_empty());
    let unrated = |reason| Rating::Unrated {
        reason,
        account_id: caller.map(str::to_owned),
    };
    let (answered, rating_time) = match cdr.disposition {
        Disposition::Unknown => return unrated(UnratedReason::UnknownDisposition),
        Disposition::Answered => (true, cdr.answer_time),
        Disposition::Failed | Disposition::Cancelled => (false, cdr.setup_time),
    };
    let (Some(duration_ms), Some(rating_time)) = (cdr.duration_ms, rating_time) else {
        return unrated(UnratedReason::Incomplete);
    };
    let Some(caller) = caller else {
        return unrated(UnratedReason::NoCaller);
    };
    let Some(account) = tariffs.accounts.get(caller) else {
        return unrated(UnratedReason::UnknownAccount);
    };
    let Some(plan) = account
        .rate_plan_id
        .as_deref()
        .and_then(|id| tariffs.plans.get(id))
    else {
        return unrated(UnratedReason::NoPlan);
    };
    if plan.currency != account.currency {
        return unrated(UnratedReason::CurrencyMismatch);
    }
    let Some(number) = cdr
        .dst_user
        .as_deref()
        .and_then(|dst| normalise_e164(dst, config.default_country_code.as_deref()))
    else {
        return unrated(UnratedReason::BadDestination);
    };
    let Some(rate) = tariffs
        .rates
        .iter()
        .filter(|rate| {
            rate.plan_id == plan.id
                && number.starts_with(&rate.prefix)
                && rate.is_valid_at(rating_time)
        })
        .max_by(|a, b| {
            a.prefix
                .len()
                .cmp(&b.prefix.len())
                .then(a.valid_from.cmp(&b.valid_from))
        })
    else {
        return unrated(UnratedReason::NoRate);
    };
    let (billable, amount) = if answered {
        let billable = billable_seconds(duration_ms, rate);
        if billable > MAX_BILLABLE_SECONDS {
            return unrated(UnratedReason::OutOfRange);
        }
        let Some(amount) = answered_charge(rate, billable) else {
            return unrated(UnratedReason::OutOfRange);
        };
        (billable, amount)
    } else {
        (0, at_scale(rate.setup_fee, MONEY_SCALE))
    };
    Rating::Rated(Charge {
        account_id: account.id.clone(),
        rate_plan_id: plan.id.clone(),
        currency: plan.currency.clone(),
        rate_prefix: rate.prefix.clone(),
        rate_valid_from: rate.valid_from,
        billable_seconds: billable,
        amount,
    })
}

/// One ledger entry of a call (positive: a debit of the account).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The account debited or credited.
    pub account_id: String,
    /// The currency of the amount.
    pub currency: String,
    /// The amount, 4 decimal places; never zero.
    pub amount: Decimal,
}

/// The entries to book so that the call's `booked` entries plus them sum to `rating`'s target
/// per (account, currency): one entry per (account, currency) whose sum differs, ordered by
/// (amount, account, currency) as the SQL numbers them. Empty when nothing changes.
pub fn settle(booked: &[LedgerEntry], rating: &Rating) -> Vec<LedgerEntry> {
    let mut sums: BTreeMap<(&str, &str), Decimal> = BTreeMap::new();
    for entry in booked {
        *sums
            .entry((&entry.account_id, &entry.currency))
            .or_default() += entry.amount;
    }
    let target = rating.target();
    if let Some((account, currency, _)) = target {
        sums.entry((account, currency)).or_default();
    }
    let mut entries: Vec<LedgerEntry> = sums
        .into_iter()
        .filter_map(|((account, currency), sum)| {
            let want = match target {
                Some((a, c, amount)) if a == account && c == currency => amount,
                _ => Decimal::ZERO,
            };
            let delta = want - sum;
            (!delta.is_zero()).then(|| LedgerEntry {
                account_id: account.to_owned(),
                currency: currency.to_owned(),
                amount: delta,
            })
        })
        .collect();
    entries.sort_by(|a, b| {
        a.amount
            .cmp(&b.amount)
            .then_with(|| a.account_id.cmp(&b.account_id))
            .then_with(|| a.currency.cmp(&b.currency))
    });
    entries
}

#[cfg(test)]
mod tests;
