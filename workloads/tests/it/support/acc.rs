//! acc_json lines as Kamailio's acc_json module writes them (pure JSON, or behind a syslog
//! prefix), the calls they make up, and the CDRs the contract's merge gives for them.

use std::collections::BTreeMap;

use nats_cdr_workloads::contract::merge::{MergedCdr, merge};
use nats_cdr_workloads::contract::msg_id::msg_id;
use nats_cdr_workloads::contract::record::{AccRecord, parse_line};
use serde_json::{Value, json};

/// One acc_json object: the core keys, the usual extras (`src_user`, `dst_user`, `src_ip`), and
/// then every key of `extra` (added, or replacing a default).
pub fn acc_line(
    call: &str,
    method: &str,
    code: &str,
    reason: &str,
    time: Value,
    extra: Value,
) -> Vec<u8> {
    let mut object = json!({
        "method": method,
        "from_tag": format!("ft-{call}"),
        "to_tag": format!("tt-{call}-{code}"),
        "callid": call,
        "sip_code": code,
        "sip_reason": reason,
        "time": time,
        "src_user": format!("src{}", call.len()),
        "dst_user": format!("dst-{call}"),
        "src_ip": "192.0.2.10",
    });
    if let (Some(map), Some(more)) = (object.as_object_mut(), extra.as_object()) {
        for (key, value) in more {
            map.insert(key.clone(), value.clone());
        }
    }
    serde_json::to_vec(&object).unwrap()
}

/// `json` behind the syslog prefix rsyslog writes for `node`.
pub fn syslog(node: &str, json: &[u8]) -> Vec<u8> {
    let mut line = format!("Nov 22 10:00:00 {node} json_acc[812]: ").into_bytes();
    line.extend_from_slice(json);
    line
}

/// Line `i` of a plain series tagged `tag`: INVITE 200, BYE, INVITE 486 in turn (so a third each
/// of start, end and failed call events), every third behind a syslog prefix of `node`, padded
/// with `pad` bytes of filler.
pub fn series_line(node: &str, tag: &str, i: usize, pad: usize) -> String {
    let (method, code) = match i % 3 {
        0 => ("INVITE", "200"),
        1 => ("BYE", "200"),
        _ => ("INVITE", "486"),
    };
    let json = acc_line(
        &format!("{tag}-call-{i}"),
        method,
        code,
        "OK",
        json!(1_700_000_000 + i),
        json!({"from_tag": format!("f{i}"), "to_tag": format!("t{i}"), "pad": "x".repeat(pad)}),
    );
    let line = if i % 3 == 2 {
        syslog(node, &json)
    } else {
        json
    };
    String::from_utf8(line).unwrap()
}

/// Lines `range` of the series tagged `tag` (see [`series_line`]).
pub fn series(node: &str, tag: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| series_line(node, tag, i, 200)).collect()
}

/// One raw line and the node that read it, as the bridge would publish it.
#[derive(Debug, Clone)]
pub struct Line {
    pub node: String,
    pub bytes: Vec<u8>,
}

impl Line {
    /// Its `Nats-Msg-Id`.
    pub fn id(&self) -> String {
        msg_id(&self.node, &self.bytes)
    }
}

/// The lines of call number `n` (`prefix`-scoped call id), of a shape chosen by `n % 7`:
/// answered (INVITE 200 + BYE), failed 486 after a 407, cancelled 487, BYE-only, answered with
/// a syslog prefix and float times, unknown (ACK only), answered with two BYEs and equal times.
/// Even calls come from sip-01, odd ones from sip-02.
pub fn call_lines(prefix: &str, n: usize) -> Vec<Line> {
    let call = format!("{prefix}-call-{n}@example.net");
    let t0 = 1_700_000_000i64 + (n as i64) * 7;
    let node = if n.is_multiple_of(2) {
        "sip-01"
    } else {
        "sip-02"
    };
    let line = |method: &str, code: &str, reason: &str, time: Value, extra: Value| {
        acc_line(&call, method, code, reason, time, extra)
    };
    let lines: Vec<Vec<u8>> = match n % 7 {
        0 => vec![
            line("INVITE", "200", "OK", json!(t0), json!({})),
            line("BYE", "200", "OK", json!(t0 + 65), json!({"cause": 16})),
        ],
        1 => vec![
            line(
                "INVITE",
                "407",
                "Proxy Authentication Required",
                json!(t0),
                json!({}),
            ),
            line(
                "INVITE",
                "486",
                "Busy Here",
                json!(t0 + 2),
                json!({"q": [1, 2]}),
            ),
        ],
        2 => vec![line(
            "INVITE",
            "487",
            "Request Terminated",
            json!(t0),
            json!({}),
        )],
        3 => vec![line("BYE", "200", "OK", json!(t0 + 30), json!({}))],
        4 => vec![
            syslog(
                "sip-01",
                &line("INVITE", "200", "OK", json!(t0 as f64 + 0.125), json!({})),
            ),
            line(
                "BYE",
                "200",
                "OK",
                json!(t0 as f64 + 10.987_654),
                json!({"nested": {"a": "b"}}),
            ),
        ],
        5 => vec![line("ACK", "", "", json!(t0), json!({}))],
        _ => vec![
            line("INVITE", "200", "OK", json!(t0), json!({})),
            line("BYE", "200", "OK", json!(t0 + 5), json!({"side": "caller"})),
            line("BYE", "200", "OK", json!(t0 + 5), json!({"side": "callee"})),
        ],
    };
    lines
        .into_iter()
        .map(|bytes| Line {
            node: node.to_owned(),
            bytes,
        })
        .collect()
}

/// Lines of calls `0..calls`.
pub fn scenario(prefix: &str, calls: usize) -> Vec<Line> {
    (0..calls).flat_map(|n| call_lines(prefix, n)).collect()
}

/// The CDRs the contract's merge gives for `records` (msg id, record), by call id.
pub fn merged(records: &[(String, AccRecord)]) -> BTreeMap<String, MergedCdr> {
    let mut calls: Vec<&str> = records.iter().map(|(_, r)| r.call_id.as_str()).collect();
    calls.sort_unstable();
    calls.dedup();
    calls
        .into_iter()
        .map(|call| (call.to_owned(), merge(call, records).unwrap()))
        .collect()
}

/// The CDRs the contract's merge gives for `lines` (every one valid), by call id.
pub fn expected(lines: &[Line]) -> BTreeMap<String, MergedCdr> {
    let records: Vec<(String, AccRecord)> = lines
        .iter()
        .map(|line| (line.id(), parse_line(&line.bytes).unwrap()))
        .collect();
    merged(&records)
}
