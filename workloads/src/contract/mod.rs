//! The wire contract between `kam-cdr-bridge` and `cdr-worker`.
//!
//! Everything both ends of the stream must agree on lives here, and nothing else does:
//!
//! - [`subjects`]: where messages go (`cdr.raw`, `call.events.<phase>`, `cdr.dlq.<reason>`) and
//!   the stream that captures them;
//! - [`headers`]: the header names every publish carries;
//! - [`msg_id`]: the content-addressed `Nats-Msg-Id` that lets JetStream drop re-published lines;
//! - [`record`]: the tolerant decoder of one Kamailio acc_json line into an [`AccRecord`];
//! - [`merge`]: the CDR of a call as a pure function of the set of its records.
//!
//! The bridge reads a line, derives its id with [`msg_id()`](msg_id::msg_id) and publishes the raw
//! bytes to [`CDR_RAW`](subjects::CDR_RAW); it parses the line only to announce call phases. The
//! worker parses the payload again with [`parse_line`] (a line that fails goes to
//! [`dead_letter_subject`](subjects::dead_letter_subject) under [`ParseError::reason`]), stores
//! the record under its id, and recomputes the call's CDR with [`merge()`](merge::merge).

pub mod headers;
pub mod merge;
pub mod msg_id;
pub mod record;
pub mod subjects;

#[cfg(test)]
pub(crate) mod test_rng;

pub use merge::{Disposition, MergedCdr};
pub use record::{AccRecord, ParseError, RecordKind, parse_line};
pub use subjects::CallPhase;
