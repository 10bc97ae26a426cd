use chrono::DateTime;
use serde_json::json;

use super::*;
use crate::contract::test_rng::Lcg;

const INVITE: &str = r#"{"method":"INVITE","from_tag":"ft1","to_tag":"tt1","callid":"c1@sip-01","sip_code":"200","sip_reason":"OK","time":1700000000,"src_user":"alice","dst_user":"bob","src_ip":"10.0.0.1"}"#;
const BYE: &str = r#"{"method":"BYE","from_tag":"ft1","to_tag":"tt1","callid":"c1@sip-01","sip_code":"200","sip_reason":"OK","time":1700000060.5}"#;
const FAILED: &str = r#"{"method":"INVITE","from_tag":"ft2","to_tag":"","callid":"c2","sip_code":486,"sip_reason":"Busy Here","time":"2023-11-14 22:13:20"}"#;

fn parsed(line: &str) -> AccRecord {
    match parse_line(line.as_bytes()) {
        Ok(record) => record,
        Err(error) => panic!("{line}: {}", error.detail()),
    }
}

fn reason(line: &[u8]) -> &'static str {
    match parse_line(line) {
        Ok(record) => panic!("{} parsed: {record:?}", String::from_utf8_lossy(line)),
        Err(error) => error.reason(),
    }
}

#[test]
fn decodes_every_core_key() {
    let record = parsed(INVITE);
    assert_eq!(record.call_id, "c1@sip-01");
    assert_eq!(record.method.as_deref(), Some("INVITE"));
    assert_eq!(record.from_tag.as_deref(), Some("ft1"));
    assert_eq!(record.to_tag.as_deref(), Some("tt1"));
    assert_eq!(record.sip_code.as_deref(), Some("200"));
    assert_eq!(record.sip_reason.as_deref(), Some("OK"));
    assert_eq!(
        record.time,
        DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default()
    );
}

#[test]
fn keeps_every_other_key_as_an_extra() {
    let record = parsed(INVITE);
    let expected = json!({"src_user": "alice", "dst_user": "bob", "src_ip": "10.0.0.1"});
    assert_eq!(Value::Object(record.extras), expected);
}

#[test]
fn accessors() {
    let record = parsed(INVITE);
    assert_eq!(record.src_user(), Some("alice"));
    assert_eq!(record.dst_user(), Some("bob"));
    assert_eq!(record.extra_str("src_ip"), Some("10.0.0.1"));
    assert_eq!(record.sip_code_number(), Some(200));
    assert!(record.is_method("invite"));
    assert!(!record.is_method("BYE"));

    let bye = parsed(BYE);
    assert_eq!(bye.src_user(), None);
    assert_eq!(bye.dst_user(), None);
}

#[test]
fn non_string_or_empty_extras_are_not_users() {
    let record = parsed(r#"{"callid":"c","time":1,"src_user":42,"dst_user":""}"#);
    assert_eq!(record.src_user(), None);
    assert_eq!(record.dst_user(), None);
    assert_eq!(record.extras.get("src_user"), Some(&json!(42)));
}

#[test]
fn numeric_sip_code_is_kept_as_text() {
    let record = parsed(FAILED);
    assert_eq!(record.sip_code.as_deref(), Some("486"));
    assert_eq!(record.sip_code_number(), Some(486));
}

#[test]
fn empty_and_null_core_values_are_absent() {
    let record = parsed(r#"{"callid":"c","time":1,"method":null,"to_tag":"","sip_code":null}"#);
    assert_eq!(record.method, None);
    assert_eq!(record.to_tag, None);
    assert_eq!(record.sip_code, None);
    assert_eq!(record.sip_code_number(), None);
    assert!(record.extras.is_empty());
}

#[test]
fn float_time_keeps_sub_seconds() {
    let record = parsed(BYE);
    assert_eq!(record.time.timestamp_millis(), 1_700_000_060_500);
}

#[test]
fn formatted_time_is_utc() {
    let record = parsed(FAILED);
    assert_eq!(record.time.timestamp(), 1_700_000_000);
}

#[test]
fn line_endings_are_ignored() {
    let record = parsed(INVITE);
    assert_eq!(parsed(&format!("{INVITE}\n")), record);
    assert_eq!(parsed(&format!("{INVITE}\r\n")), record);
}

#[test]
fn syslog_prefixes_are_stripped() {
    let record = parsed(INVITE);
    for prefix in [
        "Nov 22 10:00:00 sip-01 json_acc[812]: ",
        "2024-11-22T10:00:00.123456+00:00 sip-01 json_acc[812]: ",
        "<134>Nov 22 10:00:00 sip-01 kamailio[812]: ACC: ",
    ] {
        assert_eq!(parsed(&format!("{prefix}{INVITE}\n")), record, "{prefix}");
    }
}

#[test]
fn lines_without_json_are_not_json() {
    assert_eq!(reason(b""), "not_json");
    assert_eq!(reason(b"\n"), "not_json");
    assert_eq!(reason(b"hello"), "not_json");
    assert_eq!(
        reason(b"Nov 22 10:00:00 sip-01 json_acc[812]: hello"),
        "not_json"
    );
    assert_eq!(reason(b"{"), "not_json");
    assert_eq!(
        reason(b"{\"callid\":\"c\",\"time\":1} trailing"),
        "not_json"
    );
    assert_eq!(reason(b"{\"callid\":\"c\",\"time\":1}{}"), "not_json");
    assert_eq!(reason(b"{'callid':'c'}"), "not_json");
}

#[test]
fn invalid_utf8_is_not_utf8() {
    assert_eq!(reason(b"{\"callid\":\"c\xff\",\"time\":1}"), "not_utf8");
}

#[test]
fn invalid_utf8_in_the_syslog_prefix_is_ignored() {
    let line = [&b"Nov 22 h\xff: "[..], INVITE.as_bytes()].concat();
    assert_eq!(parse_line(&line).ok(), Some(parsed(INVITE)));
}

#[test]
fn callid_must_be_present_and_not_blank() {
    assert_eq!(reason(br#"{"time":1}"#), "missing_callid");
    assert_eq!(reason(br#"{"callid":null,"time":1}"#), "missing_callid");
    assert_eq!(reason(br#"{"callid":"","time":1}"#), "missing_callid");
    assert_eq!(reason(br#"{"callid":"  ","time":1}"#), "missing_callid");
}

#[test]
fn callid_is_checked_before_time() {
    assert_eq!(reason(br#"{"method":"INVITE"}"#), "missing_callid");
}

#[test]
fn numeric_callid_is_tolerated() {
    assert_eq!(parsed(r#"{"callid":12345,"time":1}"#).call_id, "12345");
}

#[test]
fn core_keys_must_be_strings_or_numbers() {
    assert_eq!(reason(br#"{"callid":["c"],"time":1}"#), "bad_field");
    assert_eq!(
        reason(br#"{"callid":"c","time":1,"method":{}}"#),
        "bad_field"
    );
    assert_eq!(
        reason(br#"{"callid":"c","time":1,"sip_code":true}"#),
        "bad_field"
    );
    match parse_line(br#"{"callid":"c","time":1,"to_tag":[1]}"#) {
        Err(error) => assert_eq!(
            error.to_string(),
            "to_tag holds an array, expected a string or a number"
        ),
        Ok(record) => panic!("parsed: {record:?}"),
    }
}

#[test]
fn time_must_be_present_and_readable() {
    assert_eq!(reason(br#"{"callid":"c"}"#), "bad_time");
    assert_eq!(reason(br#"{"callid":"c","time":null}"#), "bad_time");
    assert_eq!(reason(br#"{"callid":"c","time":"yesterday"}"#), "bad_time");
    assert_eq!(reason(br#"{"callid":"c","time":-5}"#), "bad_time");
    assert_eq!(reason(br#"{"callid":"c","time":true}"#), "bad_time");
}

#[test]
fn bad_time_message_shows_a_short_value() {
    let line = format!(r#"{{"callid":"c","time":"{}"}}"#, "9".repeat(500) + "x");
    match parse_line(line.as_bytes()) {
        Err(error @ ParseError::BadTime { .. }) => {
            let message = error.to_string();
            assert!(message.len() < 150, "{message}");
            assert!(message.contains("..."), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn detail_includes_the_source() {
    match parse_line(b"{\"callid\":") {
        Err(error) => {
            let detail = error.detail();
            assert!(
                detail.starts_with("JSON part of the line is not a valid JSON object: "),
                "{detail}"
            );
            assert!(detail.contains("EOF"), "{detail}");
        }
        Ok(record) => panic!("parsed: {record:?}"),
    }
}

#[test]
fn every_reason_is_a_subject_token() {
    let errors = [
        ParseError::NoJsonObject,
        ParseError::MissingCallId,
        ParseError::BadField {
            key: "method",
            found: "an array",
        },
        ParseError::MissingTime,
        ParseError::BadTime {
            value: "x".to_owned(),
        },
    ];
    for error in errors {
        let reason = error.reason();
        assert!(!reason.is_empty());
        assert!(
            reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "{reason}"
        );
    }
}

#[test]
fn duplicate_keys_keep_the_last_value() {
    let record = parsed(r#"{"callid":"a","callid":"b","time":1}"#);
    assert_eq!(record.call_id, "b");
}

#[test]
fn deeply_nested_extras_fail_without_overflowing_the_stack() {
    let line = format!(r#"{{"callid":"c","time":1,"x":{}}}"#, "[".repeat(100_000));
    assert_eq!(reason(line.as_bytes()), "not_json");
}

#[test]
fn serde_round_trip() {
    for line in [INVITE, BYE, FAILED] {
        let record = parsed(line);
        let stored = serde_json::to_string(&record).unwrap_or_default();
        let restored: Option<AccRecord> = serde_json::from_str(&stored).ok();
        assert_eq!(restored, Some(record), "{stored}");
    }
}

/// Bytes that make up acc_json lines, so random lines get past the first checks often.
const ALPHABET: &[u8] =
    b"{}[]\":,. 0123456789-+eE:TZtrufalsn\\\r\n\xff\xc3\xa9callidtimemethodsip_code";

fn random_line(rng: &mut Lcg) -> Vec<u8> {
    let len = rng.below(120);
    (0..len)
        .map(|_| {
            if rng.below(4) == 0 {
                rng.byte()
            } else {
                ALPHABET[rng.below(ALPHABET.len())]
            }
        })
        .collect()
}

fn mutated(rng: &mut Lcg, line: &[u8]) -> Vec<u8> {
    let mut line = line.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(line.len() + 1);
        match rng.below(5) {
            0 => line.insert(at, rng.byte()),
            1 => line.insert(at, ALPHABET[rng.below(ALPHABET.len())]),
            2 if at < line.len() => {
                line.remove(at);
            }
            3 if at < line.len() => line[at] = rng.byte(),
            _ => line.truncate(at),
        }
    }
    line
}

/// What every successfully parsed record must satisfy.
fn assert_invariants(line: &[u8], record: &AccRecord) {
    let shown = String::from_utf8_lossy(line);
    assert!(!record.call_id.trim().is_empty(), "{shown}");
    assert!(record.time.timestamp() >= 0, "{shown}");
    assert_eq!(record.time.timestamp_subsec_nanos() % 1000, 0, "{shown}");
    for key in [
        "callid",
        "time",
        "method",
        "from_tag",
        "to_tag",
        "sip_code",
        "sip_reason",
    ] {
        assert!(!record.extras.contains_key(key), "{key} in extras: {shown}");
    }
    let _ = record.kind();
    let _ = record.call_phase();
}

#[test]
fn never_panics_on_random_or_mutated_lines() {
    let seeds: Vec<Vec<u8>> = [
        INVITE.to_owned(),
        BYE.to_owned(),
        FAILED.to_owned(),
        format!("Nov 22 10:00:00 sip-01 json_acc[812]: {INVITE}\r\n"),
        r#"{"callid":"c","time":"2023-11-14T22:13:20.123+01:00"}"#.to_owned(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let mut rng = Lcg::new(0x5eed);
    let mut parsed_ok = 0;
    for i in 0..6000 {
        let line = if i % 3 == 0 {
            random_line(&mut rng)
        } else {
            let seed = &seeds[rng.below(seeds.len())];
            mutated(&mut rng, seed)
        };
        if let Ok(record) = parse_line(&line) {
            assert_invariants(&line, &record);
            parsed_ok += 1;
        }
    }
    // The mutations must leave some lines valid, or the test only exercises the error paths.
    assert!(parsed_ok > 100, "only {parsed_ok} lines parsed");
}
