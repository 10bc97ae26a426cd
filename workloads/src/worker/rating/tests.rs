use std::str::FromStr;

use serde_json::{Value, json};

use super::*;
use crate::contract::merge::merge;
use crate::contract::msg_id::msg_id;
use crate::contract::record::{AccRecord, parse_line};
use crate::contract::test_rng::Lcg;

fn dec(text: &str) -> Decimal {
    match Decimal::from_str(text) {
        Ok(value) => value,
        Err(error) => panic!("bad decimal {text}: {error}"),
    }
}

fn at(seconds: i64) -> DateTime<Utc> {
    match DateTime::from_timestamp(seconds, 0) {
        Some(time) => time,
        None => panic!("bad time {seconds}"),
    }
}

const T0: i64 = 1_700_000_000;

fn rate_row(plan: &str, prefix: &str, price: &str, increments: (i32, i32)) -> Rate {
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

fn account(id: &str, currency: &str, plan: Option<&str>, balance: &str) -> Account {
    Account {
        id: id.to_owned(),
        currency: currency.to_owned(),
        rate_plan_id: plan.map(str::to_owned),
        balance: dec(balance),
        prepaid: false,
    }
}

/// Plan `std` (EUR): German numbers 0.02/min 60/60, German mobiles 0.10/min 30/6 with a 0.05
/// connection fee, a catch-all 0.50/min 1/1 with a 30 s minimum, and a setup fee of 0.01 on
/// failed calls to Germany. Plan `usd` in USD. Accounts: alice and bob (std), carol (usd plan
/// but EUR balance), dave (no plan), erin (usd).
fn tariffs() -> Tariffs {
    let mut germany = rate_row("std", "49", "0.02", (60, 60));
    germany.setup_fee = dec("0.01");
    let mut mobile = rate_row("std", "4917", "0.1", (30, 6));
    mobile.connection_fee = dec("0.05");
    let mut world = rate_row("std", "", "0.5", (1, 1));
    world.min_billable = 30;
    let usd = rate_row("usd", "1", "0.012345", (1, 1));
    let mut tariffs = Tariffs {
        rates: vec![germany, mobile, world, usd],
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
    for account in [
        account("alice", "EUR", Some("std"), "10"),
        account("bob", "EUR", Some("std"), "0"),
        account("carol", "EUR", Some("usd"), "5"),
        account("dave", "EUR", None, "5"),
        account("erin", "USD", Some("usd"), "1"),
    ] {
        tariffs.accounts.insert(account.id.clone(), account);
    }
    tariffs
}

fn rec(fields: Value) -> (String, AccRecord) {
    let line = fields.to_string();
    match parse_line(line.as_bytes()) {
        Ok(record) => (msg_id("sip-01", line.as_bytes()), record),
        Err(error) => panic!("bad fixture {line}: {}", error.detail()),
    }
}

fn invite(call: &str, code: u16, time: f64, caller: &str, dst: &str) -> (String, AccRecord) {
    rec(
        json!({"method": "INVITE", "callid": call, "sip_code": code, "time": time,
               "src_user": caller, "dst_user": dst}),
    )
}

fn bye(call: &str, time: f64, caller: &str, dst: &str) -> (String, AccRecord) {
    rec(
        json!({"method": "BYE", "callid": call, "sip_code": 200, "time": time,
               "src_user": caller, "dst_user": dst}),
    )
}

fn cdr_of(records: &[(String, AccRecord)]) -> MergedCdr {
    let call = records[0].1.call_id.clone();
    match merge(&call, records) {
        Some(cdr) => cdr,
        None => panic!("no CDR"),
    }
}

fn rated(rating: &Rating) -> &Charge {
    match rating {
        Rating::Rated(charge) => charge,
        Rating::Unrated { reason, .. } => panic!("unrated: {reason}"),
    }
}

fn unrated_reason(rating: &Rating) -> UnratedReason {
    match rating {
        Rating::Unrated { reason, .. } => *reason,
        Rating::Rated(charge) => panic!("rated: {charge:?}"),
    }
}

fn call(duration_s: f64, caller: &str, dst: &str) -> Rating {
    let t = T0 as f64;
    let cdr = cdr_of(&[
        invite("c", 200, t, caller, dst),
        bye("c", t + duration_s, caller, dst),
    ]);
    rate(&cdr, &tariffs(), &RatingConfig::default())
}

#[test]
fn e164_normalisation() {
    let cases = [
        ("+49 30 1234-56", None, Some("4930123456")),
        ("0049301234", None, Some("49301234")),
        ("(030) 1234.56", Some("49"), Some("4930123456")),
        ("030123456", None, None),
        ("4930123456", None, Some("4930123456")),
        ("+0049", None, None),
        ("+", None, None),
        ("", None, None),
        ("49301234567890123", None, None),
        ("493012345678901", None, Some("493012345678901")),
        ("49x30", None, None),
        ("4930\t12", None, None),
        ("٤٩٣٠", None, None),
        ("0", Some("44"), Some("44")),
        ("00", Some("44"), None),
    ];
    for (raw, cc, want) in cases {
        assert_eq!(normalise_e164(raw, cc).as_deref(), want, "{raw:?} {cc:?}");
    }
}

#[test]
fn billing_increments_and_minimum() {
    let with = |initial, subsequent, min| {
        let mut rate = rate_row("p", "", "1", (initial, subsequent));
        rate.min_billable = min;
        rate
    };
    let cases = [
        // (rate, duration ms, billable s)
        (with(60, 60, 0), 0, 0),
        (with(60, 60, 0), 1, 60),
        (with(60, 60, 0), 60_000, 60),
        (with(60, 60, 0), 60_001, 120),
        (with(30, 6, 0), 29_000, 30),
        (with(30, 6, 0), 31_000, 36),
        (with(30, 6, 0), 36_000, 36),
        (with(30, 6, 0), 36_001, 42),
        (with(1, 1, 0), 1_001, 2),
        (with(1, 1, 0), 59_999, 60),
        (with(1, 1, 30), 1_000, 30),
        (with(1, 1, 30), 0, 30),
        (with(1, 1, 30), 31_000, 31),
        (with(60, 60, 90), 61_000, 120),
    ];
    for (rate, duration, want) in cases {
        assert_eq!(
            billable_seconds(duration, &rate),
            want,
            "{}/{} min {} for {duration} ms",
            rate.initial_increment,
            rate.subsequent_increment,
            rate.min_billable
        );
    }
}

#[test]
fn charges_round_once_half_up_to_four_places() {
    let rate = |price: &str, fee: &str| {
        let mut rate = rate_row("p", "", price, (1, 1));
        rate.connection_fee = dec(fee);
        rate
    };
    let cases = [
        ("0.02", "0", 60, "0.0200"),
        ("0.02", "0", 1, "0.0003"),     // 0.000333.. rounds down
        ("0.0123", "0", 30, "0.0062"),  // 0.00615 exactly: half up
        ("0.000001", "0", 3, "0.0000"), // 0.00000005
        ("0.003", "0", 1, "0.0001"),    // 0.00005 exactly: half up
        ("0.002999", "0", 1, "0.0000"), // 0.00004998..
        ("0.1", "0.05", 36, "0.1100"),
        (
            "999999.999999",
            "99999999.9999",
            2_147_483_647,
            "35791494116630.8752",
        ),
    ];
    for (price, fee, seconds, want) in cases {
        assert_eq!(
            answered_charge(&rate(price, fee), seconds),
            Some(dec(want)),
            "{price}/min + {fee} for {seconds} s"
        );
    }
    // Prices and fees are taken as their columns store them (6 and 4 places, half away from 0).
    assert_eq!(
        answered_charge(&rate("0.0000005", "0.00005"), 60),
        Some(dec("0.0001"))
    );
}

#[test]
fn an_answered_call_is_priced_by_the_longest_prefix() {
    let charge = rated(&call(61.2, "alice", "+49 30 1234567")).clone();
    assert_eq!(charge.rate_prefix, "49");
    assert_eq!(charge.billable_seconds, 120);
    assert_eq!(charge.amount, dec("0.04"));
    assert_eq!(charge.currency, "EUR");
    assert_eq!(charge.account_id, "alice");

    let charge = rated(&call(31.0, "alice", "004917612345")).clone();
    assert_eq!(charge.rate_prefix, "4917");
    assert_eq!(charge.billable_seconds, 36);
    assert_eq!(charge.amount, dec("0.11"));

    let charge = rated(&call(5.0, "alice", "+33 1 23 45")).clone();
    assert_eq!(charge.rate_prefix, "");
    assert_eq!(charge.billable_seconds, 30);
    assert_eq!(charge.amount, dec("0.25"));
}

#[test]
fn unanswered_calls_cost_the_setup_fee() {
    let t = T0 as f64;
    let tariffs = tariffs();
    let config = RatingConfig::default();
    let busy = cdr_of(&[invite("c", 486, t, "alice", "+4930123")]);
    let charge = rated(&rate(&busy, &tariffs, &config)).clone();
    assert_eq!((charge.billable_seconds, charge.amount), (0, dec("0.01")));
    let cancelled = cdr_of(&[invite("c", 487, t, "alice", "+3312")]);
    let charge = rated(&rate(&cancelled, &tariffs, &config)).clone();
    assert_eq!((charge.rate_prefix.as_str(), charge.amount), ("", dec("0")));
    assert_eq!(rate(&cancelled, &tariffs, &config).target(), None);
}

#[test]
fn every_unrated_reason_in_rule_order() {
    let t = T0 as f64;
    let tariffs = tariffs();
    let config = RatingConfig::default();
    let reason = |records: &[(String, AccRecord)]| {
        unrated_reason(&rate(&cdr_of(records), &tariffs, &config))
    };
    let provisional = rec(
        json!({"method": "INVITE", "callid": "c", "sip_code": 180, "time": t,
                                 "src_user": "alice", "dst_user": "+4930"}),
    );
    assert_eq!(reason(&[provisional]), UnratedReason::UnknownDisposition);
    assert_eq!(
        reason(&[invite("c", 200, t, "nobody", "x")]),
        UnratedReason::Incomplete
    );
    assert_eq!(
        reason(&[bye("c", t, "alice", "+4930")]),
        UnratedReason::Incomplete
    );
    let no_caller = rec(
        json!({"method": "INVITE", "callid": "c", "sip_code": 486, "time": t,
                               "src_user": "", "dst_user": "+4930"}),
    );
    assert_eq!(reason(&[no_caller]), UnratedReason::NoCaller);
    let numeric_caller = rec(json!({"method": "INVITE", "callid": "c", "sip_code": 486,
                                    "time": t, "src_user": 42, "dst_user": "+4930"}));
    assert_eq!(reason(&[numeric_caller]), UnratedReason::NoCaller);
    assert_eq!(
        reason(&[invite("c", 486, t, "mallory", "+4930")]),
        UnratedReason::UnknownAccount
    );
    assert_eq!(
        reason(&[invite("c", 486, t, "dave", "+4930")]),
        UnratedReason::NoPlan
    );
    assert_eq!(
        reason(&[invite("c", 486, t, "carol", "+1555")]),
        UnratedReason::CurrencyMismatch
    );
    assert_eq!(
        reason(&[invite("c", 486, t, "alice", "bob@example.net")]),
        UnratedReason::BadDestination
    );
    assert_eq!(
        reason(&[invite("c", 486, t, "erin", "+4930")]),
        UnratedReason::NoRate
    );
    // 68 years and a bit, under a rate valid from 1970.
    let mut forever = tariffs.clone();
    forever.rates[0].valid_from = at(0);
    let ancient = cdr_of(&[
        invite("c", 200, 0.0, "alice", "+4930"),
        bye("c", 2_147_483_648.0, "alice", "+4930"),
    ]);
    assert_eq!(
        unrated_reason(&rate(&ancient, &forever, &config)),
        UnratedReason::OutOfRange
    );
    let just_fits = cdr_of(&[
        invite("c", 200, 0.0, "alice", "+4930"),
        bye("c", 2_147_483_640.0, "alice", "+4930"),
    ]);
    assert_eq!(
        rated(&rate(&just_fits, &forever, &config)).billable_seconds,
        2_147_483_640
    );
    for reason in UnratedReason::ALL {
        assert_eq!(UnratedReason::from_name(reason.as_str()), Some(reason));
    }
    assert_eq!(UnratedReason::from_name("other"), None);
}

#[test]
fn validity_periods_pick_the_rate_in_force_at_the_answer() {
    let mut tariffs = tariffs();
    let edit = at(T0 + 100);
    for rate in &mut tariffs.rates {
        if rate.plan_id == "std" && rate.prefix == "49" {
            rate.valid_to = Some(edit);
        }
    }
    let mut new = rate_row("std", "49", "0.03", (60, 60));
    new.valid_from = edit;
    tariffs.rates.push(new);
    let config = RatingConfig::default();
    let price = |answer: i64| {
        let t = answer as f64;
        let cdr = cdr_of(&[
            invite("c", 200, t, "alice", "+4930"),
            bye("c", t + 60.0, "alice", "+4930"),
        ]);
        rated(&rate(&cdr, &tariffs, &config)).amount
    };
    assert_eq!(price(T0 + 99), dec("0.02"), "answered before the edit");
    assert_eq!(price(T0 + 100), dec("0.03"), "answered at the edit");
    // Before any rate of the plan: only the catch-all's validity... which starts a day early.
    let cdr = cdr_of(&[invite("c", 486, (T0 - 90_000) as f64, "alice", "+4930")]);
    assert_eq!(
        unrated_reason(&rate(&cdr, &tariffs, &config)),
        UnratedReason::NoRate
    );
}

#[test]
fn the_account_key_and_the_country_code_are_configurable() {
    let t = T0 as f64;
    let records = [
        rec(
            json!({"method": "INVITE", "callid": "c", "sip_code": 200, "time": t,
                   "src_user": "mallory", "billing_id": "bob", "dst_user": "030 1234"}),
        ),
        bye("c", t + 10.0, "x", "y"),
    ];
    let cdr = cdr_of(&records);
    let config = RatingConfig {
        enabled: true,
        account_key: "billing_id".to_owned(),
        default_country_code: Some("49".to_owned()),
    };
    let charge = rated(&rate(&cdr, &tariffs(), &config)).clone();
    assert_eq!(
        (charge.account_id.as_str(), charge.amount),
        ("bob", dec("0.02"))
    );
    assert_eq!(
        unrated_reason(&rate(&cdr, &tariffs(), &RatingConfig::default())),
        UnratedReason::UnknownAccount
    );
}

fn entry(account: &str, currency: &str, amount: &str) -> LedgerEntry {
    LedgerEntry {
        account_id: account.to_owned(),
        currency: currency.to_owned(),
        amount: dec(amount),
    }
}

fn charged(account: &str, amount: &str) -> Rating {
    Rating::Rated(Charge {
        account_id: account.to_owned(),
        rate_plan_id: "std".to_owned(),
        currency: "EUR".to_owned(),
        rate_prefix: "49".to_owned(),
        rate_valid_from: at(T0),
        billable_seconds: 60,
        amount: dec(amount),
    })
}

#[test]
fn settlement_books_only_the_difference() {
    assert_eq!(
        settle(&[], &charged("alice", "0.04")),
        [entry("alice", "EUR", "0.04")]
    );
    assert_eq!(
        settle(&[entry("alice", "EUR", "0.04")], &charged("alice", "0.04")),
        []
    );
    assert_eq!(
        settle(&[entry("alice", "EUR", "0.04")], &charged("alice", "0.06")),
        [entry("alice", "EUR", "0.02")]
    );
    // The caller changed: reverse one account, charge the other.
    assert_eq!(
        settle(&[entry("bob", "EUR", "0.04")], &charged("alice", "0.04")),
        [entry("bob", "EUR", "-0.04"), entry("alice", "EUR", "0.04")]
    );
    let unrated = Rating::Unrated {
        reason: UnratedReason::Incomplete,
        account_id: None,
    };
    assert_eq!(
        settle(
            &[entry("alice", "EUR", "0.04"), entry("alice", "EUR", "0.02")],
            &unrated
        ),
        [entry("alice", "EUR", "-0.06")]
    );
    assert_eq!(settle(&[], &unrated), []);
    assert_eq!(settle(&[], &charged("alice", "0")), []);
}

/// A simulated worker: the set of stored records, per-call ledgers and balances.
struct Books {
    records: Vec<(String, AccRecord)>,
    ledger: BTreeMap<String, Vec<LedgerEntry>>,
    tariffs: Tariffs,
}

impl Books {
    fn new(tariffs: Tariffs) -> Self {
        Self {
            records: Vec::new(),
            ledger: BTreeMap::new(),
            tariffs,
        }
    }

    /// One batch, as the store writes it: new records stored, the calls that gained one
    /// re-merged, rated and settled.
    fn write(&mut self, batch: &[(String, AccRecord)]) {
        let mut touched = std::collections::BTreeSet::new();
        for (id, record) in batch {
            if !self.records.iter().any(|(known, _)| known == id) {
                self.records.push((id.clone(), record.clone()));
                touched.insert(record.call_id.clone());
            }
        }
        for call in touched {
            let Some(cdr) = merge(&call, &self.records) else {
                continue;
            };
            let rating = rate(&cdr, &self.tariffs, &RatingConfig::default());
            let booked = self.ledger.entry(call).or_default();
            for entry in settle(booked, &rating) {
                if let Some(account) = self.tariffs.accounts.get_mut(&entry.account_id) {
                    account.balance -= entry.amount;
                }
                booked.push(entry);
            }
        }
    }
}

/// Records of a few calls, each shape a rule exercises: answered with re-INVITE and two BYEs,
/// answered to a mobile, failed after a challenge, cancelled, a BYE whose caller is the callee.
fn calls() -> Vec<Vec<(String, AccRecord)>> {
    let t = T0 as f64;
    vec![
        vec![
            invite("a", 407, t, "alice", "+4930111"),
            invite("a", 200, t + 1.0, "alice", "+4930111"),
            invite("a", 200, t + 50.0, "alice", "+4930111"),
            bye("a", t + 95.5, "bob", "alice"),
            bye("a", t + 96.0, "alice", "+4930111"),
        ],
        vec![
            invite("m", 200, t, "bob", "0049 176 1234"),
            bye("m", t + 43.2, "alice", "bob"),
        ],
        vec![
            invite("f", 407, t, "alice", "+4930"),
            invite("f", 486, t + 1.0, "alice", "+4930"),
        ],
        vec![invite("x", 487, t, "bob", "+331234")],
        vec![
            invite("u", 200, t, "mallory", "+4930"),
            bye("u", t + 10.0, "alice", "+4930"),
        ],
        // The earlier answer (bob's) decides the caller once it arrives.
        vec![
            invite("r", 200, t + 2.0, "alice", "+4930"),
            invite("r", 200, t + 1.0, "bob", "+4930"),
            bye("r", t + 30.0, "alice", "+4930"),
        ],
    ]
}

#[test]
fn any_order_and_repetition_gives_the_same_cdr_charge_and_balances() {
    let tariffs = tariffs();
    let all: Vec<(String, AccRecord)> = calls().concat();
    // The reference: every record at once.
    let mut reference = Books::new(tariffs.clone());
    reference.write(&all);
    let expected_ratings: BTreeMap<String, Rating> = calls()
        .iter()
        .map(|records| {
            let cdr = cdr_of(records);
            (
                cdr.call_id.clone(),
                rate(&cdr, &tariffs, &RatingConfig::default()),
            )
        })
        .collect();
    // Not vacuous: some calls are charged, some not, and one moves between accounts on the way.
    assert!(
        expected_ratings
            .values()
            .filter(|r| r.target().is_some())
            .count()
            >= 3
    );
    assert!(
        expected_ratings
            .values()
            .any(|r| matches!(r, Rating::Unrated { .. }))
    );

    let mut rng = Lcg::new(11);
    let mut adjusted = 0;
    let mut moved = 0;
    for _ in 0..400 {
        // Every record at least once, some again, shuffled, in random batches.
        let mut arrangement = all.clone();
        for _ in 0..rng.below(all.len() + 1) {
            arrangement.push(all[rng.below(all.len())].clone());
        }
        rng.shuffle(&mut arrangement);
        let mut books = Books::new(tariffs.clone());
        let mut rest: &[(String, AccRecord)] = &arrangement;
        while !rest.is_empty() {
            let take = (1 + rng.below(4)).min(rest.len());
            let (batch, tail) = rest.split_at(take);
            books.write(batch);
            rest = tail;
        }
        // A replay of everything changes nothing.
        let before = (books.ledger.clone(), books.tariffs.clone());
        books.write(&arrangement);
        assert_eq!((books.ledger.clone(), books.tariffs.clone()), before);

        let mut charges_by_account: BTreeMap<String, Decimal> = BTreeMap::new();
        for records in calls() {
            let cdr = cdr_of(&records);
            assert_eq!(merge(&cdr.call_id, &books.records).as_ref(), Some(&cdr));
            let rating = &expected_ratings[&cdr.call_id];
            assert_eq!(
                &rate(&cdr, &books.tariffs, &RatingConfig::default()),
                rating
            );
            let entries = &books.ledger[&cdr.call_id];
            adjusted += usize::from(entries.len() > 1);
            moved += usize::from(
                entries
                    .iter()
                    .any(|e| e.account_id != entries[0].account_id),
            );
            // The call's entries sum to its charge on its account, and to zero elsewhere.
            assert_eq!(settle(entries, rating), []);
            if let Some((account, _, amount)) = rating.target() {
                *charges_by_account.entry(account.to_owned()).or_default() += amount;
            }
        }
        for (id, account) in &books.tariffs.accounts {
            let charged = charges_by_account.get(id).copied().unwrap_or_default();
            assert_eq!(
                account.balance,
                tariffs.accounts[id].balance - charged,
                "{id}"
            );
        }
        assert_eq!(books_view(&books), books_view(&reference));
    }
    assert!(adjusted > 0, "no arrangement needed an adjusting entry");
    assert!(moved > 0, "no arrangement moved a charge between accounts");
}

/// What must be equal between two runs: balances and the per-call sums of the ledgers.
type View = (BTreeMap<String, Decimal>, BTreeMap<String, Decimal>);

fn books_view(books: &Books) -> View {
    let balances = books
        .tariffs
        .accounts
        .iter()
        .map(|(id, account)| (id.clone(), account.balance))
        .collect();
    let sums = books
        .ledger
        .iter()
        .map(|(call, entries)| (call.clone(), entries.iter().map(|e| e.amount).sum()))
        .collect();
    (balances, sums)
}
