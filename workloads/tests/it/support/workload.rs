//! A generated acc_json log in the shapes of a real one, with malformed lines among the valid
//! ones, and what the pipeline must make of it: computed with the contract alone (`parse_line`,
//! `msg_id`, `merge`), never with the workloads' code.

use std::collections::{BTreeMap, BTreeSet};

use nats_cdr_workloads::contract::merge::MergedCdr;
use nats_cdr_workloads::contract::msg_id::msg_id;
use nats_cdr_workloads::contract::record::{AccRecord, parse_line};
use serde_json::json;

use super::acc::{acc_line, merged, syslog};
use super::{NODE, Rng};

/// A generated acc_json log: its lines in file order.
#[derive(Debug, Clone, Default)]
pub struct Workload {
    pub lines: Vec<Vec<u8>>,
}

fn acc(call: &str, method: &str, code: &str, reason: &str, time: serde_json::Value) -> Vec<u8> {
    acc_line(call, method, code, reason, time, json!({}))
}

impl Workload {
    /// `calls` calls of prefix `prefix`, in the shapes of a real log (answered INVITE + BYE,
    /// 486, 487, BYE only, syslog-prefixed with float times, string times), the BYE of a call
    /// a few calls after its INVITE; after every `bad_every`-th call (0: never) one malformed
    /// line (not JSON, missing callid, bad time, cut JSON, syslog prefix over garbage).
    pub fn mix(prefix: &str, calls: usize, bad_every: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut keyed: Vec<(u64, Vec<u8>)> = Vec::new();
        for n in 0..calls {
            let call = format!("{prefix}-{n}-{:x}@192.0.2.10", rng.next_u64() >> 40);
            let t0 = 1_763_800_000i64 + n as i64;
            let at = (n as u64) * 10;
            let bye_at = at + 10 * (1 + rng.below(4) as u64) + 1;
            let talk = 1 + rng.below(600) as i64;
            match n % 6 {
                0 => {
                    keyed.push((at, acc(&call, "INVITE", "200", "OK", json!(t0))));
                    keyed.push((bye_at, acc(&call, "BYE", "200", "OK", json!(t0 + talk))));
                }
                1 => keyed.push((at, acc(&call, "INVITE", "486", "Busy Here", json!(t0)))),
                2 => keyed.push((
                    at,
                    acc(&call, "INVITE", "487", "Request Terminated", json!(t0)),
                )),
                3 => keyed.push((at, acc(&call, "BYE", "200", "OK", json!(t0)))),
                4 => {
                    let start = t0 as f64 + 0.25;
                    let invite = acc(&call, "INVITE", "200", "OK", json!(start));
                    keyed.push((at, syslog(NODE, &invite)));
                    let end = start + talk as f64 + 0.5;
                    let bye = acc(&call, "BYE", "200", "OK", json!(end));
                    keyed.push((bye_at, syslog(NODE, &bye)));
                }
                _ => {
                    let fmt = |t: i64| {
                        chrono::DateTime::from_timestamp(t, 0)
                            .unwrap()
                            .format("%Y-%m-%d %H:%M:%S")
                            .to_string()
                    };
                    keyed.push((at, acc(&call, "INVITE", "200", "OK", json!(fmt(t0)))));
                    keyed.push((
                        bye_at,
                        acc(&call, "BYE", "200", "OK", json!(fmt(t0 + talk))),
                    ));
                }
            }
            if bad_every > 0 && n % bad_every == bad_every - 1 {
                let bad = match (n / bad_every) % 5 {
                    0 => format!("{prefix} {n} this is not json").into_bytes(),
                    1 => format!(
                        r#"{{"method":"INVITE","sip_code":"200","time":{t0},"n":"{prefix}-{n}"}}"#
                    )
                    .into_bytes(),
                    2 => {
                        format!(r#"{{"method":"BYE","callid":"{call}","time":"yesterday at {n}"}}"#)
                            .into_bytes()
                    }
                    3 => format!(r#"{{"method":"INVITE","callid":"{prefix}-cut-{n}","sip_co"#)
                        .into_bytes(),
                    _ => syslog(NODE, format!("garbage {prefix} {n}").as_bytes()),
                };
                assert!(
                    parse_line(&bad).is_err(),
                    "{}",
                    String::from_utf8_lossy(&bad)
                );
                keyed.push((at + 5, bad));
            }
        }
        keyed.sort_by_key(|(at, _)| *at);
        Self {
            lines: keyed.into_iter().map(|(_, line)| line).collect(),
        }
    }

    /// The valid lines' records, keyed by their msg id.
    fn records(&self) -> Vec<(String, AccRecord)> {
        self.lines
            .iter()
            .filter_map(|line| Some((msg_id(NODE, line), parse_line(line).ok()?)))
            .collect()
    }

    /// Msg ids of the valid lines, deduplicated.
    pub fn valid_ids(&self) -> BTreeSet<String> {
        self.records().into_iter().map(|(id, _)| id).collect()
    }

    /// The malformed lines with their dead-letter reason.
    pub fn bad_lines(&self) -> Vec<(&'static str, Vec<u8>)> {
        self.lines
            .iter()
            .filter_map(|line| parse_line(line).err().map(|e| (e.reason(), line.clone())))
            .collect()
    }

    /// The CDRs the contract's merge gives for the valid lines, by call id.
    pub fn expected_cdrs(&self) -> BTreeMap<String, MergedCdr> {
        merged(&self.records())
    }
}
