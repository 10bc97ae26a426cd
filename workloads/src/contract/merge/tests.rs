use serde_json::json;

use super::*;
use crate::contract::msg_id::msg_id;
use crate::contract::record::parse_line;
use crate::contract::test_rng::Lcg;

/// A record as the worker holds it: parsed from a JSON line, keyed by that line's msg id.
fn rec(fields: Value) -> (String, AccRecord) {
    let line = fields.to_string();
    match parse_line(line.as_bytes()) {
        Ok(record) => (msg_id("sip-01", line.as_bytes()), record),
        Err(error) => panic!("bad fixture {line}: {}", error.detail()),
    }
}

fn invite(call_id: &str, code: u16, time: f64) -> (String, AccRecord) {
    rec(json!({
        "method": "INVITE", "callid": call_id, "sip_code": code.to_string(),
        "sip_reason": format!("reason {code}"), "from_tag": "ft", "to_tag": format!("tt{code}"),
        "time": time, "src_user": "alice", "dst_user": "bob", "code_seen": code,
    }))
}

fn bye(call_id: &str, time: f64) -> (String, AccRecord) {
    rec(json!({
        "method": "BYE", "callid": call_id, "sip_code": "200", "sip_reason": "OK",
        "from_tag": "tt200", "to_tag": "ft", "time": time, "src_user": "bob", "dst_user": "alice",
    }))
}

fn other(call_id: &str, method: &str, code: u16, time: f64) -> (String, AccRecord) {
    rec(json!({"method": method, "callid": call_id, "sip_code": code, "time": time}))
}

fn merged(call_id: &str, records: &[(String, AccRecord)]) -> MergedCdr {
    match merge(call_id, records) {
        Some(cdr) => cdr,
        None => panic!("no CDR for {call_id}"),
    }
}

fn at(seconds: f64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_micros((seconds * 1e6).round() as i64)
}

const T0: f64 = 1_700_000_000.0;

#[test]
fn answered_call() {
    let cdr = merged("c", &[invite("c", 200, T0), bye("c", T0 + 61.25)]);
    assert_eq!(cdr.call_id, "c");
    assert_eq!(cdr.setup_time, at(T0));
    assert_eq!(cdr.answer_time, at(T0));
    assert_eq!(cdr.end_time, at(T0 + 61.25));
    assert_eq!(cdr.duration_ms, Some(61_250));
    assert_eq!(cdr.disposition, Disposition::Answered);
    assert_eq!(cdr.sip_code.as_deref(), Some("200"));
    assert_eq!(cdr.sip_reason.as_deref(), Some("reason 200"));
    assert_eq!(cdr.from_tag.as_deref(), Some("ft"));
    assert_eq!(cdr.to_tag.as_deref(), Some("tt200"));
    assert_eq!(cdr.src_user.as_deref(), Some("alice"));
    assert_eq!(cdr.dst_user.as_deref(), Some("bob"));
    assert_eq!(cdr.extras.get("code_seen"), Some(&json!(200)));
    assert_eq!(cdr.record_count, 2);
}

#[test]
fn busy_call_failed() {
    let cdr = merged("c", &[invite("c", 486, T0)]);
    assert_eq!(cdr.disposition, Disposition::Failed);
    assert_eq!(cdr.sip_code.as_deref(), Some("486"));
    assert_eq!(cdr.sip_reason.as_deref(), Some("reason 486"));
    assert_eq!(
        (
            cdr.setup_time,
            cdr.answer_time,
            cdr.end_time,
            cdr.duration_ms
        ),
        (at(T0), None, None, Some(0))
    );
}

#[test]
fn cancelled_call() {
    let cdr = merged("c", &[invite("c", 487, T0)]);
    assert_eq!(cdr.disposition, Disposition::Cancelled);
    assert_eq!(cdr.sip_code.as_deref(), Some("487"));
    assert_eq!(
        (
            cdr.setup_time,
            cdr.answer_time,
            cdr.end_time,
            cdr.duration_ms
        ),
        (at(T0), None, None, Some(0))
    );
}

#[test]
fn setup_time_is_the_first_invite_whatever_its_outcome() {
    // 407 challenge first, then the answer, then a re-INVITE: setup at the challenge.
    let records = [
        invite("c", 200, T0 + 2.0),
        invite("c", 407, T0),
        invite("c", 200, T0 + 40.0),
        bye("c", T0 + 62.0),
    ];
    let cdr = merged("c", &records);
    assert_eq!(cdr.setup_time, at(T0));
    assert_eq!(cdr.answer_time, at(T0 + 2.0));
    assert_eq!(cdr.duration_ms, Some(60_000));
    // A provisional INVITE record or an ACK is no setup; a BYE alone has none.
    let cdr = merged("c", &[other("c", "INVITE", 180, T0), bye("c", T0 + 9.0)]);
    assert_eq!(cdr.setup_time, None);
    let cdr = merged(
        "c",
        &[other("c", "INVITE", 180, T0), invite("c", 486, T0 + 3.0)],
    );
    assert_eq!(cdr.setup_time, at(T0 + 3.0));
}

#[test]
fn an_answered_call_without_its_bye_has_no_duration_yet() {
    let cdr = merged("c", &[invite("c", 200, T0)]);
    assert_eq!(cdr.disposition, Disposition::Answered);
    assert_eq!((cdr.answer_time, cdr.end_time), (at(T0), None));
    assert_eq!(cdr.duration_ms, None);
}

#[test]
fn bye_only_is_answered_without_start() {
    let cdr = merged("c", &[bye("c", T0)]);
    assert_eq!(cdr.disposition, Disposition::Answered);
    assert_eq!((cdr.setup_time, cdr.answer_time), (None, None));
    assert_eq!(cdr.end_time, at(T0));
    assert_eq!(cdr.duration_ms, None);
    assert_eq!(cdr.sip_code.as_deref(), Some("200"));
    assert_eq!(cdr.src_user.as_deref(), Some("bob"));
}

#[test]
fn the_latest_failure_is_primary() {
    // A 407 challenge, then the authenticated INVITE is rejected busy.
    let cdr = merged("c", &[invite("c", 486, T0 + 1.0), invite("c", 407, T0)]);
    assert_eq!(cdr.disposition, Disposition::Failed);
    assert_eq!(cdr.sip_code.as_deref(), Some("486"));
}

#[test]
fn any_cancel_makes_an_unanswered_call_cancelled() {
    let cdr = merged("c", &[invite("c", 407, T0), invite("c", 487, T0 + 1.0)]);
    assert_eq!(cdr.disposition, Disposition::Cancelled);
    assert_eq!(cdr.sip_code.as_deref(), Some("487"));
}

#[test]
fn an_answer_outranks_failures() {
    let records = [
        invite("c", 407, T0),
        invite("c", 200, T0 + 1.0),
        bye("c", T0 + 5.0),
    ];
    let cdr = merged("c", &records);
    assert_eq!(cdr.disposition, Disposition::Answered);
    assert_eq!(cdr.sip_code.as_deref(), Some("200"));
    assert_eq!(cdr.duration_ms, Some(4_000));
}

#[test]
fn re_invites_keep_the_first_answer_and_the_last_bye() {
    let records = [
        invite("c", 200, T0 + 30.0),
        invite("c", 200, T0),
        bye("c", T0 + 90.0),
        bye("c", T0 + 60.0),
    ];
    let cdr = merged("c", &records);
    assert_eq!(cdr.answer_time, at(T0));
    assert_eq!(cdr.setup_time, at(T0));
    assert_eq!(cdr.end_time, at(T0 + 90.0));
    assert_eq!(cdr.duration_ms, Some(90_000));
}

#[test]
fn only_provisional_and_ack_records_are_unknown() {
    let cdr = merged(
        "c",
        &[
            other("c", "INVITE", 180, T0),
            other("c", "ACK", 200, T0 + 1.0),
        ],
    );
    assert_eq!(cdr.disposition, Disposition::Unknown);
    assert_eq!(cdr.sip_code.as_deref(), Some("180"));
    assert_eq!(cdr.record_count, 2);
    assert_eq!((cdr.setup_time, cdr.duration_ms), (None, Some(0)));
}

#[test]
fn duration_is_none_when_the_bye_precedes_the_answer() {
    let cdr = merged("c", &[invite("c", 200, T0 + 10.0), bye("c", T0)]);
    assert_eq!(cdr.duration_ms, None);
    assert_eq!(cdr.disposition, Disposition::Answered);
}

#[test]
fn duration_rounds_down_to_the_millisecond() {
    let cdr = merged("c", &[invite("c", 200, T0), bye("c", T0 + 1.0009)]);
    assert_eq!(cdr.duration_ms, Some(1_000));
    let cdr = merged("c", &[invite("c", 200, T0), bye("c", T0)]);
    assert_eq!(cdr.duration_ms, Some(0));
}

#[test]
fn records_of_other_calls_are_ignored() {
    let records = [invite("c", 200, T0), bye("other", T0 + 5.0)];
    let cdr = merged("c", &records);
    assert_eq!(cdr.end_time, None);
    assert_eq!(cdr.record_count, 1);
    assert_eq!(merge("nobody", &records), None);
    assert_eq!(merge("c", &[]), None);
}

#[test]
fn duplicate_msg_ids_count_once() {
    let invite = invite("c", 200, T0);
    let cdr = merged("c", &[invite.clone(), invite.clone(), invite]);
    assert_eq!(cdr.record_count, 1);
}

#[test]
fn equal_keys_are_broken_by_msg_id() {
    let a = rec(json!({"method": "INVITE", "callid": "c", "sip_code": 486, "time": T0, "n": 1}));
    let b = rec(json!({"method": "INVITE", "callid": "c", "sip_code": 486, "time": T0, "n": 2}));
    let first = if a.0 < b.0 { &a } else { &b };
    let cdr = merged("c", &[a.clone(), b.clone()]);
    assert_eq!(cdr.extras, first.1.extras);
    assert_eq!(merged("c", &[b, a]), cdr);
}

#[test]
fn disposition_names() {
    assert_eq!(Disposition::Answered.as_str(), "answered");
    assert_eq!(Disposition::Cancelled.as_str(), "cancelled");
    assert_eq!(Disposition::Failed.as_str(), "failed");
    assert_eq!(Disposition::Unknown.to_string(), "unknown");
    assert_eq!(json!(Disposition::Cancelled), json!("cancelled"));
}

#[test]
fn priorities() {
    assert_eq!(priority(RecordKind::AnsweredInvite), 0);
    assert_eq!(priority(RecordKind::FailedInvite { cancelled: true }), 1);
    assert_eq!(priority(RecordKind::FailedInvite { cancelled: false }), 1);
    assert_eq!(priority(RecordKind::Bye), 2);
    assert_eq!(priority(RecordKind::Other), 3);
}

/// Record sets of one call `c` each, chosen to exercise every rule and tie.
fn record_sets() -> Vec<Vec<(String, AccRecord)>> {
    vec![
        vec![invite("c", 200, T0), bye("c", T0 + 60.0)],
        vec![
            other("c", "INVITE", 180, T0),
            invite("c", 407, T0),
            invite("c", 200, T0 + 1.0),
            other("c", "ACK", 200, T0 + 1.1),
            bye("c", T0 + 30.0),
        ],
        vec![
            invite("c", 407, T0),
            invite("c", 486, T0 + 1.0),
            invite("c", 487, T0 + 2.0),
        ],
        vec![
            invite("c", 200, T0 + 30.0),
            invite("c", 200, T0),
            bye("c", T0 + 90.0),
            bye("c", T0 + 60.0),
            bye("c", T0 + 60.0),
        ],
        vec![
            rec(json!({"method": "INVITE", "callid": "c", "sip_code": 486, "time": T0, "n": 1})),
            rec(json!({"method": "INVITE", "callid": "c", "sip_code": 486, "time": T0, "n": 2})),
            rec(json!({"method": "INVITE", "callid": "c", "sip_code": 603, "time": T0, "n": 3})),
        ],
        vec![
            bye("c", T0),
            other("c", "OPTIONS", 200, T0 - 1.0),
            invite("c", 200, T0 + 5.0),
        ],
    ]
}

/// Calls `visit` with every permutation of `items` (Heap's algorithm).
fn for_each_permutation<T: Clone>(items: &[T], visit: &mut impl FnMut(&[T])) {
    fn heap<T>(k: usize, items: &mut [T], visit: &mut impl FnMut(&[T])) {
        if k <= 1 {
            visit(items);
            return;
        }
        for i in 0..k - 1 {
            heap(k - 1, items, visit);
            let j = if k.is_multiple_of(2) { i } else { 0 };
            items.swap(j, k - 1);
        }
        heap(k - 1, items, visit);
    }
    let mut items = items.to_vec();
    heap(items.len(), &mut items, visit);
}

#[test]
fn every_order_of_the_set_merges_alike() {
    for set in record_sets() {
        let expected = merged("c", &set);
        let mut seen = 0;
        for_each_permutation(&set, &mut |order| {
            assert_eq!(merge("c", order).as_ref(), Some(&expected));
            seen += 1;
        });
        assert_eq!(seen, (1..=set.len()).product::<usize>());
    }
}

#[test]
fn any_arrangement_with_duplicates_and_noise_merges_like_the_set() {
    let noise = [
        invite("d", 200, T0),
        bye("d", T0 + 1.0),
        invite("e", 486, T0),
    ];
    let mut rng = Lcg::new(42);
    for set in record_sets() {
        let expected = merged("c", &set);
        for _ in 0..300 {
            // Every record at least once, some again, some noise, in a random order.
            let mut arrangement = set.clone();
            for _ in 0..rng.below(2 * set.len() + 1) {
                arrangement.push(set[rng.below(set.len())].clone());
            }
            for _ in 0..rng.below(3) {
                arrangement.push(noise[rng.below(noise.len())].clone());
            }
            rng.shuffle(&mut arrangement);
            assert_eq!(merge("c", &arrangement).as_ref(), Some(&expected));

            // Two overlapping batches of the same records, merged as one.
            let split = rng.below(arrangement.len() + 1);
            let (left, right) = arrangement.split_at(split);
            let union = [right, left, &set[..1]].concat();
            assert_eq!(merge("c", &union).as_ref(), Some(&expected));
        }
    }
}
