//! Atomic batch publishing (ADR-50; nats-server 2.12+, stream setting `allow_atomic`).
//!
//! The messages of one batch are staged with core publishes that carry `Nats-Batch-Id` and
//! `Nats-Batch-Sequence` (1, 2, ...); the last one also carries `Nats-Batch-Commit: 1` and is sent
//! as a request: its reply is the one ack of the whole batch. Every line keeps its own message,
//! subject and `Nats-Msg-Id`; the server stores all of them or none. What that buys: with
//! `sync_interval: always`, nats-server 2.15 syncs an R1 stream once per committed batch instead
//! of once per message, and an R3 stream proposes the batch as one Raft append.
//!
//! A staged batch that is never committed (the bridge crashed, the connection dropped) is
//! dropped by the server after its batch timeout; nothing of it is stored. Refusals, with their
//! codes from nats-server's `errors.json`, become a [`Refusal`] the publisher acts on.

use std::time::Duration;

use async_nats::{Client, HeaderMap, Request};
use serde::Deserialize;

use super::classify::{Outbound, headers_size};

/// Header naming the batch (at most 64 characters).
pub const BATCH_ID: &str = "Nats-Batch-Id";
/// Header numbering a message in its batch, from 1.
pub const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
/// Header of the last message, which commits the batch.
pub const BATCH_COMMIT: &str = "Nats-Batch-Commit";

/// Most messages nats-server takes in one atomic batch by default (`max_batch_size`).
pub const SERVER_MAX_BATCH: usize = 1000;

/// Why the stream refused a batch (nothing of it is stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 10201: a `Nats-Msg-Id` of the batch is already in the stream's duplicate window, or twice
    /// in the batch. The server does not say which one.
    Duplicate,
    /// 10174: the stream does not allow atomic publish.
    Disabled,
    /// 10199: more messages than the server's `max_batch_size`.
    TooLarge,
    /// 10176: a staged message is missing (lost on a reconnect) or the batch timed out.
    Incomplete,
    /// 10210 (or HTTP-like 429): too many batches open on the stream or the server right now.
    Busy,
    /// 10158: a message id of the batch is being stored by another publish right now.
    InProcess,
    /// Any other refusal (its JetStream error code).
    Other(u32),
}

impl Refusal {
    fn from_code(err_code: u32, code: u16) -> Self {
        match err_code {
            10201 => Self::Duplicate,
            10174 => Self::Disabled,
            10199 => Self::TooLarge,
            10176 => Self::Incomplete,
            10210 => Self::Busy,
            10158 => Self::InProcess,
            _ if code == 429 => Self::Busy,
            other => Self::Other(other),
        }
    }

    /// Whether the same batch may simply be tried again later.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Incomplete | Self::Busy | Self::InProcess)
    }

    /// Short category for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Duplicate => "duplicate",
            Self::Disabled => "disabled",
            Self::TooLarge => "too_large",
            Self::Incomplete => "incomplete",
            Self::Busy => "busy",
            Self::InProcess => "in_process",
            Self::Other(_) => "other",
        }
    }
}

/// A batch that was not (or not surely) stored.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The stream answered with an error.
    #[error("the stream refused the batch: {description} (error {err_code})")]
    Refused {
        /// What it means for the publisher.
        refusal: Refusal,
        /// JetStream error code.
        err_code: u32,
        /// The server's words.
        description: String,
    },
    /// A staged message could not be handed to the client (the connection is closed).
    #[error("staging the batch failed")]
    Stage(#[source] async_nats::PublishError),
    /// The commit got no answer (timeout, no responders, connection lost).
    #[error("committing the batch failed")]
    Commit(#[source] async_nats::RequestError),
    /// The reply to the commit is not a JetStream publish ack.
    #[error("the reply to the commit is not a publish ack")]
    Reply(#[source] serde_json::Error),
    /// The ack counts another number of messages than the batch had.
    #[error("the stream acked {acked} messages of a batch of {sent}")]
    Miscounted {
        /// Messages sent.
        sent: usize,
        /// Messages the ack counts.
        acked: u64,
    },
}

impl BatchError {
    /// The refusal, when the stream refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Refused { refusal, .. } => Some(refusal),
            _ => None,
        }
    }

    /// Whether a message of the batch is larger than the server's `max_payload` (known only
    /// once connected): such a message must take the single path, which cuts it to fit.
    pub fn is_too_big(&self) -> bool {
        match self {
            Self::Stage(error) => {
                error.kind() == async_nats::client::PublishErrorKind::MaxPayloadExceeded
            }
            Self::Commit(error) => {
                error.kind() == async_nats::client::RequestErrorKind::MaxPayloadExceeded
            }
            _ => false,
        }
    }

    /// Short category for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Refused { refusal, .. } => refusal.reason(),
            Self::Stage(_) => "stage",
            Self::Commit(_) => "commit",
            Self::Reply(_) => "reply",
            Self::Miscounted { .. } => "miscounted",
        }
    }
}

/// The ack of a committed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Stream sequence of the last message.
    pub last_sequence: u64,
    /// Messages stored.
    pub count: u64,
}

/// The JSON a publish to a stream is answered with.
#[derive(Debug, Deserialize)]
struct PubAckResponse {
    #[serde(default)]
    error: Option<ApiError>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    count: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u32,
    #[serde(default)]
    description: String,
}

/// Reads the reply to the commit of a batch of `sent` messages.
pub fn parse_reply(payload: &[u8], sent: usize) -> Result<Committed, BatchError> {
    let reply: PubAckResponse = serde_json::from_slice(payload).map_err(BatchError::Reply)?;
    if let Some(error) = reply.error {
        return Err(BatchError::Refused {
            refusal: Refusal::from_code(error.err_code, error.code),
            err_code: error.err_code,
            description: error.description,
        });
    }
    // A batch of one is answered like a plain publish, without a count.
    let count = reply.count.unwrap_or(1);
    if count != sent as u64 {
        return Err(BatchError::Miscounted { sent, acked: count });
    }
    Ok(Committed {
        last_sequence: reply.seq,
        count,
    })
}

/// The headers of message `sequence` (from 1) of batch `id`: its own, then the batch's.
pub fn headers(message: &Outbound, id: &str, sequence: usize, commit: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &message.headers {
        headers.insert(*name, value.as_str());
    }
    headers.insert(BATCH_ID, id);
    headers.insert(BATCH_SEQUENCE, sequence.to_string().as_str());
    if commit {
        headers.insert(BATCH_COMMIT, "1");
    }
    headers
}

/// Bytes the batch headers add to a message, at most (ids of up to 64 characters).
pub fn header_overhead() -> usize {
    let batch_headers = vec![
        (BATCH_ID, "x".repeat(64)),
        (BATCH_SEQUENCE, SERVER_MAX_BATCH.to_string()),
        (BATCH_COMMIT, "1".to_owned()),
    ];
    headers_size(&batch_headers)
}

/// Publishes `messages` as atomic batch `id` and waits up to `timeout` for the commit's ack.
pub async fn publish(
    client: &Client,
    id: &str,
    messages: &[Outbound],
    timeout: Duration,
) -> Result<Committed, BatchError> {
    let Some((last, staged)) = messages.split_last() else {
        return Ok(Committed {
            last_sequence: 0,
            count: 0,
        });
    };
    stage(client, id, staged).await?;
    let request = Request::new()
        .headers(headers(last, id, messages.len(), true))
        .payload(last.payload.clone())
        .timeout(Some(timeout));
    let reply = client
        .send_request(last.subject.clone(), request)
        .await
        .map_err(BatchError::Commit)?;
    parse_reply(&reply.payload, messages.len())
}

/// Stages `messages` as the first messages of batch `id`, without committing it: core
/// publishes, no reply (a lost one makes the commit fail as incomplete).
pub async fn stage(client: &Client, id: &str, messages: &[Outbound]) -> Result<(), BatchError> {
    for (index, message) in messages.iter().enumerate() {
        client
            .publish_with_headers(
                message.subject.clone(),
                headers(message, id, index + 1, false),
                message.payload.clone(),
            )
            .await
            .map_err(BatchError::Stage)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_committed_batch_is_acked_with_its_count() {
        let ack = br#"{"stream":"AKIRA_CDR","seq":1500,"batch":"b1","count":500}"#;
        assert_eq!(
            parse_reply(ack, 500).unwrap(),
            Committed {
                last_sequence: 1500,
                count: 500
            }
        );
        assert!(matches!(
            parse_reply(ack, 501),
            Err(BatchError::Miscounted {
                sent: 501,
                acked: 500
            })
        ));
    }

    #[test]
    fn refusals_are_read_from_their_codes() {
        let refusal = |err_code: u32, code: u16| {
            let body = format!(
                r#"{{"error":{{"code":{code},"err_code":{err_code},"description":"x"}},"stream":"S"}}"#
            );
            parse_reply(body.as_bytes(), 3)
                .unwrap_err()
                .refusal()
                .cloned()
        };
        assert_eq!(refusal(10201, 400), Some(Refusal::Duplicate));
        assert_eq!(refusal(10174, 400), Some(Refusal::Disabled));
        assert_eq!(refusal(10199, 400), Some(Refusal::TooLarge));
        assert_eq!(refusal(10176, 400), Some(Refusal::Incomplete));
        assert_eq!(refusal(10210, 429), Some(Refusal::Busy));
        assert_eq!(refusal(10077, 429), Some(Refusal::Busy));
        assert_eq!(refusal(10158, 409), Some(Refusal::InProcess));
        assert_eq!(refusal(10177, 400), Some(Refusal::Other(10177)));
        assert!(Refusal::Busy.is_transient() && !Refusal::Duplicate.is_transient());
        assert!(matches!(
            parse_reply(b"not json", 1),
            Err(BatchError::Reply(_))
        ));
    }

    #[test]
    fn batch_headers_follow_the_message_headers() {
        let message = Outbound {
            subject: "cdr.raw".to_owned(),
            headers: vec![("Nats-Msg-Id", "abc".to_owned())],
            payload: Bytes::from_static(b"{}"),
            dead_letter: None,
            event: None,
        };
        let staged = headers(&message, "batch-1", 7, false);
        assert_eq!(staged.get("Nats-Msg-Id").unwrap().as_str(), "abc");
        assert_eq!(staged.get(BATCH_ID).unwrap().as_str(), "batch-1");
        assert_eq!(staged.get(BATCH_SEQUENCE).unwrap().as_str(), "7");
        assert!(staged.get(BATCH_COMMIT).is_none());
        let last = headers(&message, "batch-1", 8, true);
        assert_eq!(last.get(BATCH_COMMIT).unwrap().as_str(), "1");
        assert!(header_overhead() > "Nats-Batch-Id: ".len() + 64);
    }
}
