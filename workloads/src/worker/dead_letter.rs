//! Dead letters: a message the worker can never store is published, with its original bytes and
//! why, to `cdr.dlq.<reason>` (captured by the same stream), and only then terminated.

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;

use crate::contract::headers::{CDR_SOURCE, DLQ_DETAIL, DLQ_REASON, NATS_MSG_ID, detail_value};
use crate::contract::subjects::dead_letter_subject;

pub use crate::contract::headers::DLQ_ORIGINAL_MSG_ID;

/// Failure to publish a dead letter.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The publish was not sent.
    #[error("publishing dead letter to {subject} failed")]
    Publish {
        /// The dead-letter subject.
        subject: String,
        /// Why.
        #[source]
        source: jetstream::context::PublishError,
    },
    /// The stream did not acknowledge it.
    #[error("dead letter to {subject} not acknowledged")]
    Ack {
        /// The dead-letter subject.
        subject: String,
        /// Why.
        #[source]
        source: jetstream::context::PublishError,
    },
}

impl DeadLetterError {
    /// Short category for logs and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Publish { .. } => "dlq_publish",
            Self::Ack { .. } => "dlq_ack",
        }
    }
}

/// What to dead-letter.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// Category, the subject's last token.
    pub reason: &'a str,
    /// Human detail.
    pub detail: &'a str,
    /// `Nats-Msg-Id` of the original message.
    pub original_msg_id: &'a str,
    /// `cdr-source` of the original message.
    pub source_node: Option<&'a str>,
    /// The original payload, unchanged.
    pub payload: Bytes,
}

/// Publishes `letter` and waits for the stream's ack. Returns the dead letter's subject.
pub async fn publish(
    js: &jetstream::Context,
    letter: DeadLetter<'_>,
) -> Result<String, DeadLetterError> {
    let subject = dead_letter_subject(letter.reason);
    let mut headers = HeaderMap::new();
    headers.insert(
        NATS_MSG_ID,
        format!("dlq-{}", letter.original_msg_id).as_str(),
    );
    headers.insert(DLQ_ORIGINAL_MSG_ID, letter.original_msg_id);
    headers.insert(DLQ_REASON, letter.reason);
    headers.insert(DLQ_DETAIL, detail_value(letter.detail).as_str());
    if let Some(node) = letter.source_node {
        headers.insert(CDR_SOURCE, node);
    }
    let ack = js
        .publish_with_headers(subject.clone(), headers, letter.payload)
        .await
        .map_err(|source| DeadLetterError::Publish {
            subject: subject.clone(),
            source,
        })?;
    ack.await.map_err(|source| DeadLetterError::Ack {
        subject: subject.clone(),
        source,
    })?;
    Ok(subject)
}
