//! Rating and balance debit: the billing SQL pinned to the pure Rust rules on a real PostgreSQL
//! ([`sql`]), and the worker binary on real nats-server and PostgreSQL under faults ([`binary`]).
//! The fixtures here: tariffs exercising every rule, acc_json calls of every shape billed against
//! them, and the check that what PostgreSQL holds (CDR ratings, ledger, balances) is what the pure
//! Rust rules give for the same records.

mod binary;
mod sql;

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use nats_cdr_workloads::contract::merge::merge;
use nats_cdr_workloads::contract::record::{AccRecord, parse_line};
use nats_cdr_workloads::worker::rating::sql::{load_ledger, load_ratings, load_tariffs};
use nats_cdr_workloads::worker::rating::{
    Account, Rate, RatePlan, Rating, RatingConfig, Tariffs, rate, settle,
};
use rust_decimal::Decimal;
use serde_json::json;

use crate::support::Rng;
use crate::support::acc::Line;

/// First call time of the generated calls.
pub const T0: i64 = 1_700_000_000;

pub fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

pub fn at(seconds: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(seconds, 0).unwrap()
}

/// A rate valid from a day before [`T0`], open-ended.
pub fn rate_row(plan: &str, prefix: &str, price: &str, increments: (i32, i32)) -> Rate {
    Rate {
        plan_id: plan.to_owned(),
        prefix: prefix.to_owned(),
        valid_from: at(T0 - 86_400),
        valid_to: None,
        price_per_minute: dec(price),
        connection_fee: Decimal::ZERO,
        setup_fee: Decimal::ZERO,
        initial_increment: increments.0,
        subsequent_increment: increments.1,
        min_billable: 0,
    }
}

/// Callers of the generated calls: accounts with a plan (EUR postpaid, EUR prepaid with little
/// credit, USD), one without a plan, one whose plan is in another currency, one unknown, and
/// the empty caller.
pub const CALLERS: [&str; 7] = ["alice", "bob", "carol", "dave", "erin", "mallory", ""];

/// Plan `std` (EUR): catch-all 0.5/min 1/1 min 30 s; `49` 0.02/min 60/60 with a 0.01 setup fee
/// on unanswered calls; `4917` (mobiles) 0.09/min 30/6 plus 0.05 connection fee; `4930` 0.015/min
/// 1/1 until `T0 + 3600`, then 0.0175/min. Plan `usd` (USD): `1` 0.012345/min 6/6, nothing else.
pub fn tariffs() -> Tariffs {
    let mut world = rate_row("std", "", "0.5", (1, 1));
    world.min_billable = 30;
    let mut germany = rate_row("std", "49", "0.02", (60, 60));
    germany.setup_fee = dec("0.01");
    let mut mobile = rate_row("std", "4917", "0.09", (30, 6));
    mobile.connection_fee = dec("0.05");
    let mut berlin_old = rate_row("std", "4930", "0.015", (1, 1));
    berlin_old.valid_to = Some(at(T0 + 3_600));
    let mut berlin_new = rate_row("std", "4930", "0.0175", (1, 1));
    berlin_new.valid_from = at(T0 + 3_600);
    let usa = rate_row("usd", "1", "0.012345", (6, 6));
    let mut tariffs = Tariffs {
        rates: vec![world, germany, mobile, berlin_old, berlin_new, usa],
        ..Tariffs::default()
    };
    for (id, currency) in [("std", "EUR"), ("usd", "USD")] {
        tariffs.plans.insert(
            id.to_owned(),
            RatePlan {
                id: id.to_owned(),
                currency: currency.to_owned(),
            },
        );
    }
    for (id, currency, plan, balance, prepaid) in [
        ("alice", "EUR", Some("std"), "100", false),
        ("bob", "EUR", Some("std"), "0.5", true),
        ("carol", "USD", Some("usd"), "20", true),
        ("dave", "EUR", None, "5", false),
        ("erin", "EUR", Some("usd"), "5", false),
    ] {
        tariffs.accounts.insert(
            id.to_owned(),
            Account {
                id: id.to_owned(),
                currency: currency.to_owned(),
                rate_plan_id: plan.map(str::to_owned),
                balance: dec(balance),
                prepaid,
            },
        );
    }
    tariffs
}

/// Called numbers in the shapes Kamailio logs them.
const DESTINATIONS: [&str; 9] = [
    "+49 30 1234567",
    "004917612345678",
    "030 9876543",
    "+1 (555) 123-4567",
    "+44 20 7946 0000",
    "4930555000",
    "voicemail",
    "",
    "+4989123456",
];

fn acc(call: &str, method: &str, code: u16, time: f64, caller: &str, dst: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "method": method, "callid": call, "sip_code": code.to_string(), "sip_reason": "x",
        "from_tag": format!("ft-{call}"), "to_tag": format!("tt-{call}"), "time": time,
        "src_user": caller, "dst_user": dst, "src_ip": "192.0.2.1",
    }))
    .unwrap()
}

/// `calls` calls of prefix `prefix`, from [`T0`] + `offset_s` on, one every 3 s: answered (some
/// after a 407, some with a re-INVITE from the callee, some whose BYE comes from the callee),
/// failed, cancelled, answered without a BYE yet, BYE only; callers from [`CALLERS`] and numbers
/// in every shape. Durations in milliseconds, some on increment boundaries.
pub fn billing_lines(prefix: &str, calls: usize, seed: u64, offset_s: i64) -> Vec<Line> {
    let mut rng = Rng::new(seed);
    let mut lines = Vec::new();
    for n in 0..calls {
        let call = format!("{prefix}-{n}@192.0.2.1");
        let t = (T0 + offset_s + 3 * n as i64) as f64 + rng.below(1000) as f64 / 1000.0;
        // Half the calls from the big postpaid account to German numbers, the rest anything.
        let caller = match rng.below(2) {
            0 => "alice",
            _ => CALLERS[rng.below(CALLERS.len())],
        };
        let dst = match rng.below(2) {
            0 => DESTINATIONS[rng.below(3)],
            _ => DESTINATIONS[rng.below(DESTINATIONS.len())],
        };
        let duration = match rng.below(5) {
            0 => 60.0 * (1 + rng.below(3)) as f64,
            1 => 0.0,
            _ => rng.below(400_000) as f64 / 1000.0,
        };
        let node = if n % 2 == 0 { "sip-01" } else { "sip-02" };
        let mut push = |bytes: Vec<u8>| {
            lines.push(Line {
                node: node.to_owned(),
                bytes,
            })
        };
        match rng.below(9) {
            0..=2 => {
                push(acc(&call, "INVITE", 200, t, caller, dst));
                push(acc(&call, "BYE", 200, t + duration, caller, dst));
            }
            3 => {
                push(acc(&call, "INVITE", 407, t, caller, dst));
                push(acc(&call, "INVITE", 200, t + 0.5, caller, dst));
                push(acc(&call, "BYE", 200, t + 0.5 + duration, dst, caller));
            }
            4 => {
                push(acc(&call, "INVITE", 200, t, caller, dst));
                push(acc(&call, "INVITE", 200, t + 20.0, dst, caller));
                push(acc(&call, "BYE", 200, t + 20.0 + duration, dst, caller));
            }
            5 => push(acc(&call, "INVITE", 486, t, caller, dst)),
            6 => push(acc(&call, "INVITE", 487, t, caller, dst)),
            7 => push(acc(&call, "INVITE", 200, t, caller, dst)),
            _ => push(acc(&call, "BYE", 200, t + duration, caller, dst)),
        }
    }
    lines
}

/// The records of `lines`, keyed by msg id.
pub fn records(lines: &[Line]) -> Vec<(String, AccRecord)> {
    lines
        .iter()
        .map(|line| (line.id(), parse_line(&line.bytes).unwrap()))
        .collect()
}

/// What the pure rules give for `lines` under `tariffs`: each call's rating, and each
/// account's balance after its charges.
pub fn expected_billing(
    lines: &[Line],
    tariffs: &Tariffs,
    config: &RatingConfig,
) -> (BTreeMap<String, Rating>, BTreeMap<String, Decimal>) {
    let records = records(lines);
    let mut calls: Vec<&str> = records.iter().map(|(_, r)| r.call_id.as_str()).collect();
    calls.sort_unstable();
    calls.dedup();
    let ratings: BTreeMap<String, Rating> = calls
        .into_iter()
        .map(|call| {
            let cdr = merge(call, &records).unwrap();
            (call.to_owned(), rate(&cdr, tariffs, config))
        })
        .collect();
    let mut balances: BTreeMap<String, Decimal> = tariffs
        .accounts
        .iter()
        .map(|(id, account)| (id.clone(), account.balance))
        .collect();
    for rating in ratings.values() {
        if let Some((account, _, amount)) = rating.target() {
            *balances.get_mut(account).unwrap() -= amount;
        }
    }
    (ratings, balances)
}

/// Asserts that the database at `url` holds exactly the billing of `lines` under `tariffs` (the
/// tariffs as they stand at the end; balances from the accounts' initial balances in
/// `tariffs`): every CDR's rating, every call's ledger summing to its charge on its account and
/// to nothing elsewhere, the whole ledger to the sum of charges, and every balance. Returns the
/// number of (rated with a charge, unrated) CDRs.
pub async fn assert_billing(
    url: &str,
    lines: &[Line],
    tariffs: &Tariffs,
    config: &RatingConfig,
) -> (usize, usize) {
    let (want, want_balances) = expected_billing(lines, tariffs, config);
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let ratings = load_ratings(&pool).await.unwrap();
    let ledger = load_ledger(&pool).await.unwrap();
    let stored = load_tariffs(&pool).await.unwrap();
    let (ledger_sum, charge_sum): (Decimal, Decimal) = sqlx::query_as(
        "SELECT (SELECT coalesce(sum(amount), 0) FROM ledger_entry),
                (SELECT coalesce(sum(charge), 0) FROM cdr WHERE rating_status = 'rated')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;

    let missing: Vec<&String> = want.keys().filter(|c| !ratings.contains_key(*c)).collect();
    assert!(missing.is_empty(), "calls without a rating: {missing:?}");
    assert_eq!(ratings.len(), want.len(), "rated CDRs");
    for (call, rating) in &want {
        assert_eq!(&ratings[call], rating, "rating of {call}");
        let entries = ledger.get(call).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(settle(entries, rating), [], "ledger of {call}: {entries:?}");
    }
    let strays: Vec<&String> = ledger.keys().filter(|c| !want.contains_key(*c)).collect();
    assert!(
        strays.is_empty(),
        "ledger entries of unknown calls: {strays:?}"
    );
    assert_eq!(ledger_sum, charge_sum, "ledger sum == sum of charges");
    for (id, balance) in &want_balances {
        assert_eq!(&stored.accounts[id].balance, balance, "balance of {id}");
    }
    let charged = want.values().filter(|r| r.target().is_some()).count();
    let unrated = want
        .values()
        .filter(|r| matches!(r, Rating::Unrated { .. }))
        .count();
    (charged, unrated)
}
