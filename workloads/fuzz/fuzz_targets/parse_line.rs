//! Fuzzes the acc_json decoder: `cargo +nightly fuzz run parse_line` from `workloads/`.
//!
//! `parse_line` must never panic, and whatever it accepts must feed the rest of the contract
//! (`msg_id`, `merge`) without panicking either.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nats_cdr_workloads::contract::merge::merge;
use nats_cdr_workloads::contract::msg_id::msg_id;
use nats_cdr_workloads::contract::record::parse_line;

fuzz_target!(|line: &[u8]| {
    let Ok(record) = parse_line(line) else {
        return;
    };
    let _ = record.kind();
    let _ = record.call_phase();
    let call_id = record.call_id.clone();
    let records = [(msg_id("fuzz", line), record)];
    let merged = merge(&call_id, &records);
    assert!(
        merged.is_some_and(|cdr| cdr.call_id == call_id && cdr.record_count == 1),
        "a parsed record must merge into a CDR of its own call"
    );
});
