//! The CDR of a call: a pure function of the set of its records.
//!
//! Records arrive in any order and more than once, so the merge is defined over the *set* of a
//! call's records, identified by their `Nats-Msg-Id`: it is commutative, associative and
//! idempotent, and merging any arrangement of the records, with any repetitions, gives the same
//! CDR. Each rule is a plain SQL aggregate so the worker's PostgreSQL recompute mirrors it
//! exactly; keep the two in step.
//!
//! # Rules
//!
//! Input: `(msg_id, record)` pairs. Records of another call id are ignored; pairs with the same
//! msg id are one record (ids are content-addressed, so equal ids carry equal records; if a
//! caller breaks that, which of them counts is unspecified). No record of the call: no CDR. Each
//! record has a [`RecordKind`], stored by its [`as_str`](RecordKind::as_str) name.
//!
//! - `setup_time`: the earliest time of an INVITE with a final response, whatever the response
//!   (answered, failed or cancelled: the INVITE transactions acc_json accounts). Every call that
//!   has its INVITE record has one; a call known only by its BYE (or by provisional and ACK
//!   records) has none until that INVITE arrives.
//! - `answer_time`: the earliest time of an answered INVITE.
//! - `end_time`: the latest time of a BYE.
//! - `disposition`: `answered` if any answered INVITE or any BYE; else `cancelled` if any
//!   cancelled INVITE (487); else `failed` if any failed INVITE (>= 300); else `unknown`.
//! - `duration_ms`: for an unanswered call (disposition `cancelled`, `failed` or `unknown`) `0`;
//!   for an answered one `end_time - answer_time` in whole milliseconds, rounded down, when both
//!   exist and `end_time >= answer_time`, otherwise none (the BYE or the answer not seen yet).
//! - `record_count`: the number of distinct msg ids.
//! - `sip_code`, `sip_reason`, `from_tag`, `to_tag`, `src_user`, `dst_user`, `extras`: from the
//!   *primary* record, the first by (priority, time key, msg id). The priority is [`priority`]:
//!   0 answered INVITE, 1 failed INVITE (cancelled or not), 2 BYE, 3 other. The time key is the
//!   time ascending, except among failed INVITEs where the latest wins (the final failure, e.g.
//!   the 486 after a 407 challenge), so it is the time descending there. The msg id, compared
//!   bytewise, breaks ties.
//!
//! The same rules over a table of a call's distinct records (`msg_id` unique, `kind` from
//! [`RecordKind::as_str`], `priority` from [`priority`], `time` a `timestamptz`):
//!
//! ```sql
//! SELECT min(time) FILTER (WHERE kind IN ('answered_invite', 'failed_invite',
//!                                         'cancelled_invite')) AS setup_time,
//!        min(time) FILTER (WHERE kind = 'answered_invite') AS answer_time,
//!        max(time) FILTER (WHERE kind = 'bye')             AS end_time,
//!        CASE WHEN bool_or(kind IN ('answered_invite', 'bye')) THEN 'answered'
//!             WHEN bool_or(kind = 'cancelled_invite')           THEN 'cancelled'
//!             WHEN bool_or(kind = 'failed_invite')              THEN 'failed'
//!             ELSE 'unknown' END                          AS disposition,
//!        count(*)                                          AS record_count
//!   FROM records WHERE call_id = $1;
//! -- duration_ms: 0 when disposition <> 'answered'; else
//! --              floor((extract(epoch FROM end_time) - extract(epoch FROM answer_time)) * 1000)
//! --              when end_time >= answer_time
//! -- primary record:
//! SELECT * FROM records WHERE call_id = $1
//!  ORDER BY priority,
//!           CASE WHEN priority = 1 THEN -extract(epoch FROM time)
//!                ELSE extract(epoch FROM time) END,
//!           msg_id COLLATE "C"
//!  LIMIT 1;
//! ```
//!
//! Times are whole microseconds (see [`AccRecord::time`]), the resolution
//! of `timestamptz`, so both sides compare the same instants.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::record::{AccRecord, RecordKind};

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// The call was answered (an answered INVITE or a BYE was seen).
    Answered,
    /// The caller gave up before an answer (487 Request Terminated).
    Cancelled,
    /// The call was rejected or not reachable (a final response >= 300).
    Failed,
    /// Nothing seen yet says how the call went (e.g. only provisional or ACK records).
    Unknown,
}

impl Disposition {
    /// The stored name: `answered`, `cancelled`, `failed` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Cancelled => "cancelled",
            Self::Failed => "failed",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Disposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The CDR of one call, merged from its records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MergedCdr {
    /// The SIP Call-ID.
    pub call_id: String,
    /// When the call was set up: the earliest INVITE with a final response, whatever it was.
    pub setup_time: Option<DateTime<Utc>>,
    /// When the call was answered: the earliest answered INVITE.
    pub answer_time: Option<DateTime<Utc>>,
    /// When the call was hung up: the latest BYE.
    pub end_time: Option<DateTime<Utc>>,
    /// `0` for an unanswered call; `end_time - answer_time` in whole milliseconds for an answered
    /// one, when both exist and are in order.
    pub duration_ms: Option<i64>,
    /// How the call ended.
    pub disposition: Disposition,
    /// Response code of the primary record.
    pub sip_code: Option<String>,
    /// Response reason phrase of the primary record.
    pub sip_reason: Option<String>,
    /// From tag of the primary record.
    pub from_tag: Option<String>,
    /// To tag of the primary record.
    pub to_tag: Option<String>,
    /// Calling user of the primary record.
    pub src_user: Option<String>,
    /// Called user of the primary record.
    pub dst_user: Option<String>,
    /// Extras of the primary record.
    pub extras: Map<String, Value>,
    /// Number of distinct records (msg ids) merged.
    pub record_count: usize,
}

/// Rank of a record kind when choosing the primary record: lower wins.
///
/// 0 answered INVITE, 1 failed INVITE (cancelled or not), 2 BYE, 3 other.
pub fn priority(kind: RecordKind) -> u8 {
    match kind {
        RecordKind::AnsweredInvite => 0,
        RecordKind::FailedInvite { .. } => 1,
        RecordKind::Bye => 2,
        RecordKind::Other => 3,
    }
}

/// One distinct record of the call, with what the rules need precomputed.
struct Entry<'a> {
    msg_id: &'a str,
    record: &'a AccRecord,
    kind: RecordKind,
    priority: u8,
}

impl Entry<'_> {
    /// The order that makes the primary record the first.
    fn primary_order(&self, other: &Self) -> Ordering {
        // Among failed INVITEs (one priority) the latest wins; elsewhere the earliest.
        let by_time = if matches!(self.kind, RecordKind::FailedInvite { .. }) {
            other.record.time.cmp(&self.record.time)
        } else {
            self.record.time.cmp(&other.record.time)
        };
        self.priority
            .cmp(&other.priority)
            .then(by_time)
            .then_with(|| self.msg_id.cmp(other.msg_id))
    }
}

/// Merges the records of call `call_id` out of `records`, `(msg_id, record)` pairs.
///
/// Returns `None` when no record belongs to the call. See the module doc for the rules.
pub fn merge(call_id: &str, records: &[(String, AccRecord)]) -> Option<MergedCdr> {
    let mut distinct: BTreeMap<&str, &AccRecord> = BTreeMap::new();
    for (msg_id, record) in records.iter().filter(|(_, r)| r.call_id == call_id) {
        distinct.entry(msg_id).or_insert(record);
    }
    let entries: Vec<Entry<'_>> = distinct
        .into_iter()
        .map(|(msg_id, record)| {
            let kind = record.kind();
            Entry {
                msg_id,
                record,
                kind,
                priority: priority(kind),
            }
        })
        .collect();

    let primary = entries.iter().min_by(|a, b| a.primary_order(b))?.record;
    let setup_time = entries
        .iter()
        .filter(|entry| is_final_invite(entry.kind))
        .map(|entry| entry.record.time)
        .min();
    let answer_time = times_of(&entries, RecordKind::AnsweredInvite).min();
    let end_time = times_of(&entries, RecordKind::Bye).max();
    let disposition = disposition(entries.iter().map(|entry| entry.kind));
    let duration_ms = match disposition {
        Disposition::Answered => duration_ms(answer_time, end_time),
        Disposition::Cancelled | Disposition::Failed | Disposition::Unknown => Some(0),
    };
    Some(MergedCdr {
        call_id: call_id.to_owned(),
        setup_time,
        answer_time,
        end_time,
        duration_ms,
        disposition,
        sip_code: primary.sip_code.clone(),
        sip_reason: primary.sip_reason.clone(),
        from_tag: primary.from_tag.clone(),
        to_tag: primary.to_tag.clone(),
        src_user: primary.src_user().map(str::to_owned),
        dst_user: primary.dst_user().map(str::to_owned),
        extras: primary.extras.clone(),
        record_count: entries.len(),
    })
}

/// Whether `kind` is an INVITE with a final response (answered, failed or cancelled).
fn is_final_invite(kind: RecordKind) -> bool {
    matches!(
        kind,
        RecordKind::AnsweredInvite | RecordKind::FailedInvite { .. }
    )
}

/// Times of the entries of `kind`.
fn times_of<'a>(
    entries: &'a [Entry<'_>],
    kind: RecordKind,
) -> impl Iterator<Item = DateTime<Utc>> + 'a {
    entries
        .iter()
        .filter(move |entry| entry.kind == kind)
        .map(|entry| entry.record.time)
}

/// `end - start` in whole milliseconds, rounded down, when both exist and `end >= start`.
fn duration_ms(start: Option<DateTime<Utc>>, end: Option<DateTime<Utc>>) -> Option<i64> {
    let (start, end) = (start?, end?);
    (end >= start).then(|| (end - start).num_milliseconds())
}

/// The disposition implied by the kinds of a call's records.
fn disposition(kinds: impl Iterator<Item = RecordKind> + Clone) -> Disposition {
    let any = |wanted: fn(RecordKind) -> bool| kinds.clone().any(wanted);
    if any(|kind| matches!(kind, RecordKind::AnsweredInvite | RecordKind::Bye)) {
        Disposition::Answered
    } else if any(|kind| kind == RecordKind::FailedInvite { cancelled: true }) {
        Disposition::Cancelled
    } else if any(|kind| matches!(kind, RecordKind::FailedInvite { .. })) {
        Disposition::Failed
    } else {
        Disposition::Unknown
    }
}

#[cfg(test)]
mod tests;
