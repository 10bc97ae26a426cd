//! JetStream as the tests see it: the stream created the way the operator does, lines published
//! the way the bridge does, and the stream read back with plain async-nats calls (never with the
//! workloads' own code).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use nats_cdr_workloads::contract::headers::{CDR_SOURCE, NATS_MSG_ID};
use nats_cdr_workloads::contract::subjects::{
    CDR_RAW, DEAD_LETTER_WILDCARD, DEFAULT_STREAM_NAME, STREAM_SUBJECTS,
};
use nats_cdr_workloads::worker::dead_letter::DLQ_ORIGINAL_MSG_ID;

use super::acc::Line;

/// Connects to `url` and creates the CDR stream the way the operator does: subjects `cdr.>`,
/// file storage, 2 min duplicate window, one replica; `allow_atomic` lets publishers use atomic
/// batches.
pub async fn create_stream(url: &str, allow_atomic: bool) -> jetstream::Context {
    create_stream_with(url, allow_atomic, 1).await
}

/// [`create_stream`] with `replicas` replicas, retried while a new cluster elects its leaders.
pub async fn create_stream_with(
    urls: &str,
    allow_atomic: bool,
    replicas: usize,
) -> jetstream::Context {
    let urls: Vec<&str> = urls.split(',').collect();
    let js = jetstream::new(async_nats::connect(urls).await.unwrap());
    let config = jetstream::stream::Config {
        name: DEFAULT_STREAM_NAME.to_owned(),
        subjects: STREAM_SUBJECTS.iter().map(|s| (*s).to_owned()).collect(),
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        allow_atomic_publish: allow_atomic,
        num_replicas: replicas,
        ..Default::default()
    };
    let start = Instant::now();
    loop {
        match js.create_stream(config.clone()).await {
            Ok(_) => return js,
            Err(error) => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "cannot create the stream: {error}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Messages in the stream (raw lines and dead letters).
pub async fn message_count(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream(DEFAULT_STREAM_NAME).await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Waits until the stream holds at least `want` messages; panics after `within`.
pub async fn wait_for_count(js: &jetstream::Context, want: u64, within: Duration) {
    let start = Instant::now();
    loop {
        let have = message_count(js).await;
        if have >= want {
            return;
        }
        assert!(
            start.elapsed() < within,
            "stream has {have} messages, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One stored message, as read back from the stream.
#[derive(Debug, Clone)]
pub struct Stored {
    pub subject: String,
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

impl Stored {
    /// The value of header `name`.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// Every message of the stream on subjects matching `filter`, in stream order, read by an
/// ephemeral consumer.
pub async fn read_stream(js: &jetstream::Context, filter: &str) -> Vec<Stored> {
    let stream = js.get_stream(DEFAULT_STREAM_NAME).await.unwrap();
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: filter.to_owned(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .unwrap();
    let total = consumer.info().await.unwrap().num_pending as usize;
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        let mut batch = consumer
            .batch()
            .max_messages(total - out.len())
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            let headers = message
                .headers
                .iter()
                .flat_map(|headers| headers.iter())
                .flat_map(|(name, values)| {
                    values
                        .iter()
                        .map(move |v| (name.to_string(), v.as_str().to_owned()))
                })
                .collect();
            out.push(Stored {
                subject: message.subject.to_string(),
                headers,
                payload: message.payload.to_vec(),
            });
        }
    }
    out
}

/// Every message of the stream.
pub async fn read_all(js: &jetstream::Context) -> Vec<Stored> {
    read_stream(js, ">").await
}

/// Publishes `lines` to `cdr.raw` the way the bridge does, awaiting every ack.
pub async fn publish(js: &jetstream::Context, lines: &[Line]) {
    publish_with(js, lines, true).await;
}

/// Publishes, with or without the `Nats-Msg-Id` header (without: a raw replay the stream
/// cannot deduplicate).
pub async fn publish_with(js: &jetstream::Context, lines: &[Line], with_id: bool) {
    for chunk in lines.chunks(256) {
        let mut acks = Vec::new();
        for line in chunk {
            let mut headers = HeaderMap::new();
            if with_id {
                headers.insert(NATS_MSG_ID, line.id().as_str());
            }
            headers.insert(CDR_SOURCE, line.node.as_str());
            acks.push(
                js.publish_with_headers(CDR_RAW, headers, line.bytes.clone().into())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
}

/// The worker's durable consumer.
pub async fn worker_consumer(js: &jetstream::Context) -> Option<PullConsumer> {
    let stream = js.get_stream(DEFAULT_STREAM_NAME).await.ok()?;
    stream.get_consumer("cdr-worker").await.ok()
}

/// The worker consumer's (pending, ack pending), `None` while it does not exist.
pub async fn backlog(js: &jetstream::Context) -> Option<(u64, usize)> {
    let info = worker_consumer(js).await?.info().await.ok()?.clone();
    Some((info.num_pending, info.num_ack_pending))
}

/// Waits until the worker consumer has nothing pending and nothing unacked.
pub async fn wait_drained(js: &jetstream::Context, timeout: Duration) {
    super::wait_until(timeout, "the consumer drained", || async {
        backlog(js).await == Some((0, 0))
    })
    .await;
}

/// Deliveries the worker consumer made so far, redeliveries included.
pub async fn deliveries(js: &jetstream::Context) -> u64 {
    let mut consumer = worker_consumer(js).await.unwrap();
    consumer.info().await.unwrap().delivered.consumer_sequence
}

/// One dead letter read back from the stream.
#[derive(Debug, Clone)]
pub struct Letter {
    pub subject: String,
    pub original_msg_id: String,
    pub source_node: Option<String>,
    pub payload: Vec<u8>,
}

/// Every message of the stream under `cdr.dlq.>`, in stream order.
pub async fn dead_letters(js: &jetstream::Context) -> Vec<Letter> {
    read_stream(js, DEAD_LETTER_WILDCARD)
        .await
        .into_iter()
        .map(|stored| Letter {
            original_msg_id: stored
                .header(DLQ_ORIGINAL_MSG_ID)
                .unwrap_or_default()
                .to_owned(),
            source_node: stored.header(CDR_SOURCE).map(str::to_owned),
            subject: stored.subject,
            payload: stored.payload,
        })
        .collect()
}

/// Replays dead letters the way an operator would: the original bytes back to `cdr.raw` with
/// their `cdr-source` and no `Nats-Msg-Id`, so the worker derives the original record id and the
/// store drops whatever it already has.
pub async fn replay(js: &jetstream::Context, letters: &[Letter]) {
    for letter in letters {
        let mut headers = HeaderMap::new();
        if let Some(node) = &letter.source_node {
            headers.insert(CDR_SOURCE, node.as_str());
        }
        js.publish_with_headers(CDR_RAW, headers, letter.payload.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
}
