//! Publishing to JetStream: deliver a chunk of lines until the stream has acked every one.
//!
//! [`Publisher::deliver_chunk`] publishes the chunk as one atomic [`batch`](super::batch) when
//! the stream allows it, else line by line with [`Publisher::deliver`]. Neither gives up on a
//! transient failure: a line is retried with the same `Nats-Msg-Id`, so a publish that was
//! stored but whose ack was lost is dropped by the stream as a duplicate, after an exponential,
//! capped, jittered delay. A batch the stream refuses because some line of it is already stored
//! (10201, the server does not say which) is split in halves, down to lines published one by one
//! (each duplicate acked as such, each new line stored once). The caller bounds how many chunks
//! and lines are in flight, which is what stops the reading when NATS is slow or down.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;

use super::batch::{self, Refusal};
use super::classify::{Outbound, classify};
use super::config::BridgeConfig;
use super::dead_letter;
use super::metrics::Metrics;
use super::tail::Line;
use crate::backoff::Backoff;
use crate::rng::Rng;

/// A range of a refused batch at most this long is published line by line, not split again.
const SPLIT_FLOOR: usize = 32;

/// How long after a stream said it does not allow atomic publish the bridge publishes line by
/// line before it tries a batch again (the setting may have been turned on meanwhile).
const DISABLED_RETRY: Duration = Duration::from_secs(60);

/// Publishes lines of one node.
#[derive(Debug)]
pub struct Publisher {
    client: Client,
    js: async_nats::jetstream::Context,
    node: String,
    metrics: Metrics,
    backoff_initial: Duration,
    backoff_max: Duration,
    ack_timeout: Duration,
    batches: Batches,
}

/// What the publisher knows about atomic batches on this stream.
#[derive(Debug)]
struct Batches {
    /// Most lines per batch (lowered when the server's `max_batch_size` is smaller); below 2,
    /// batches are off.
    max: AtomicUsize,
    /// Until when the stream is taken not to allow atomic publish.
    disabled_until: Mutex<Option<Instant>>,
    /// Makes batch ids unique across processes.
    id_prefix: String,
    /// Makes batch ids unique within this process.
    next_id: AtomicU64,
}

impl Publisher {
    /// A publisher over `client`.
    pub fn new(client: Client, config: &BridgeConfig, metrics: Metrics) -> Self {
        let js = async_nats::jetstream::context::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .max_ack_inflight(config.in_flight.max(1) * 2)
            .backpressure_on_inflight(true)
            .build(client.clone());
        let max = config.batch_max.min(batch::SERVER_MAX_BATCH);
        metrics.atomic_batches.set(i64::from(max > 1));
        Self {
            client,
            js,
            node: config.node.clone(),
            metrics,
            backoff_initial: config.backoff_initial,
            backoff_max: config.backoff_max,
            ack_timeout: config.ack_timeout,
            batches: Batches {
                max: AtomicUsize::new(max),
                disabled_until: Mutex::new(None),
                id_prefix: format!("{:016x}", Rng::from_entropy().next_u64()),
                next_id: AtomicU64::new(0),
            },
        }
    }

    /// Publishes every line of `chunk` (lines in file order) until each one is acked: as atomic
    /// batches when the stream allows them, else line by line.
    pub async fn deliver_chunk(&self, chunk: Vec<Line>) {
        if chunk.len() > 1 && self.batch_max() > 1 {
            self.deliver_batched(chunk).await;
        } else {
            self.deliver_each(chunk).await;
        }
    }

    /// Publishes `lines` one message each, all at once, until each one is acked.
    async fn deliver_each(&self, lines: Vec<Line>) {
        futures::future::join_all(lines.into_iter().map(|line| self.deliver(line))).await;
    }

    /// The most lines a batch may hold now: 1 while batches are off.
    fn batch_max(&self) -> usize {
        let disabled = match self.batches.disabled_until.lock() {
            Ok(until) => until.is_some_and(|until| Instant::now() < until),
            Err(_) => false,
        };
        if disabled {
            1
        } else {
            self.batches.max.load(Ordering::Relaxed)
        }
    }

    fn next_batch_id(&self) -> String {
        let n = self.batches.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:x}", self.batches.id_prefix)
    }

    /// Publishes `lines` as atomic batches. A range the stream refuses for a duplicate is split
    /// in halves, and published line by line once short; one refused for anything that will not
    /// pass is published line by line; a transient failure is retried after a back-off.
    async fn deliver_batched(&self, lines: Vec<Line>) {
        let mut backoff = Backoff::new(self.backoff_initial, self.backoff_max);
        let mut max_payload = self.client.server_info().max_payload;
        while max_payload == 0 {
            // Not connected yet: the server's message size limit is not known.
            tokio::time::sleep(backoff.next_delay()).await;
            max_payload = self.client.server_info().max_payload;
        }
        backoff.reset();
        let room = max_payload.saturating_sub(batch::header_overhead() + 64);
        let mut batched: Vec<(Line, Outbound)> = Vec::with_capacity(lines.len());
        let mut alone = Vec::new();
        for line in lines {
            let message = classify(&self.node, &line);
            // Lines that need cutting to fit (or do not fit at all) take the single path.
            if message.wire_size() <= room {
                batched.push((line, message));
            } else {
                alone.push(line);
            }
        }
        let mut ranges: Vec<std::ops::Range<usize>> = Vec::with_capacity(8);
        ranges.push(0..batched.len());
        while let Some(range) = ranges.pop() {
            let limit = self.batch_max();
            if range.len() < 2 || limit < 2 {
                self.deliver_each(lines_of(&batched, range)).await;
                continue;
            }
            if range.len() > limit {
                let mut start = range.end;
                while start > range.start {
                    let from = start.saturating_sub(limit).max(range.start);
                    ranges.push(from..start);
                    start = from;
                }
                continue;
            }
            let messages: Vec<Outbound> = batched[range.clone()]
                .iter()
                .map(|(_, m)| m.clone())
                .collect();
            let id = self.next_batch_id();
            let started = Instant::now();
            match batch::publish(&self.client, &id, &messages, self.ack_timeout).await {
                Ok(_) => {
                    self.metrics
                        .batch_seconds
                        .observe(started.elapsed().as_secs_f64());
                    backoff.reset();
                    self.metrics.batches.inc();
                    self.stored(messages, false).await;
                }
                Err(error) => {
                    let refusal = error.refusal().cloned();
                    self.metrics.batch_refused(error.reason());
                    match refusal {
                        Some(Refusal::Duplicate) if range.len() > SPLIT_FLOOR => {
                            tracing::debug!(batch = %id, lines = range.len(), "batch holds a line already stored; splitting it");
                            let middle = range.start + range.len() / 2;
                            ranges.push(middle..range.end);
                            ranges.push(range.start..middle);
                        }
                        Some(Refusal::Duplicate) => {
                            self.deliver_each(lines_of(&batched, range)).await;
                        }
                        Some(Refusal::Disabled) => {
                            self.disable_batches();
                            ranges.push(range);
                        }
                        Some(Refusal::TooLarge) => {
                            let half = (range.len() / 2).max(1);
                            tracing::warn!(
                                lines = range.len(),
                                now = half,
                                "the server refused a batch as too large; sending smaller ones"
                            );
                            self.batches.max.store(half, Ordering::Relaxed);
                            ranges.push(range);
                        }
                        Some(refusal) if !refusal.is_transient() => {
                            tracing::warn!(error = %error, batch = %id, "batch refused; publishing its lines one by one");
                            self.deliver_each(lines_of(&batched, range)).await;
                        }
                        None if error.is_too_big() => {
                            // The server's limit changed since the lines were sorted.
                            self.deliver_each(lines_of(&batched, range)).await;
                        }
                        _ => {
                            self.metrics.publish_retries.inc();
                            let attempt = backoff.attempts();
                            let delay = backoff.next_delay();
                            if attempt.is_multiple_of(10) {
                                tracing::warn!(error = %error, reason = error.reason(), attempt, delay_ms = delay.as_millis() as u64, lines = range.len(), "batch publish failed; retrying");
                            }
                            tokio::time::sleep(delay).await;
                            ranges.push(range);
                        }
                    }
                }
            }
        }
        self.deliver_each(alone).await;
    }

    /// The stream does not allow atomic publish: line by line for a while.
    fn disable_batches(&self) {
        tracing::warn!(
            retry_in_s = DISABLED_RETRY.as_secs(),
            "the stream does not allow atomic publish (stream setting allow_atomic); publishing \
             line by line, one sync per line with sync_interval: always"
        );
        self.metrics.atomic_batches.set(0);
        if let Ok(mut until) = self.batches.disabled_until.lock() {
            *until = Some(Instant::now() + DISABLED_RETRY);
        }
    }

    /// Counts `messages` as stored and announces their call events.
    async fn stored(&self, messages: Vec<Outbound>, duplicate: bool) {
        let mut events = Vec::with_capacity(messages.len());
        for message in messages {
            self.count_stored(&message, duplicate);
            events.extend(message.event);
        }
        self.announce(events).await;
    }

    /// Counts `message` as stored.
    fn count_stored(&self, message: &Outbound, duplicate: bool) {
        match message.dead_letter {
            Some(reason) => {
                tracing::info!(reason, subject = %message.subject, "line dead-lettered");
                self.metrics.dead_letter(reason);
            }
            None => {
                self.metrics.published.inc();
            }
        }
        if duplicate {
            self.metrics.duplicates.inc();
        }
    }

    /// Publishes `line` (to `cdr.raw`, or as a dead letter) until the stream acks it, then
    /// announces its call event. Returns the line, whose end offset may now be checkpointed.
    #[tracing::instrument(name = "deliver", level = "debug", skip_all, fields(offset = line.end_offset))]
    pub async fn deliver(&self, line: Line) -> Line {
        let mut message = classify(&self.node, &line);
        let mut backoff: Option<Backoff> = None;
        loop {
            let max_payload = self.client.server_info().max_payload;
            if max_payload > 0 && message.wire_size() + 64 > max_payload {
                match dead_letter::fit(message.clone(), &self.node, max_payload) {
                    Ok(fitted) => message = fitted,
                    Err(error) => {
                        tracing::error!(error = %error, reason = error.reason(), msg_id = message.header(crate::contract::headers::NATS_MSG_ID), "line cannot be published at all; skipped");
                        self.metrics.dropped.inc();
                        return line;
                    }
                }
            }
            match self.publish_once(&message).await {
                Ok(ack) => {
                    self.stored(vec![message], ack.duplicate).await;
                    return line;
                }
                Err(error) if error.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    // The server's limit is known now; the next round makes the message fit.
                    tracing::debug!(error = %error, "message over max_payload");
                    if max_payload > 0 {
                        // Should not happen (checked above); avoid a hot loop regardless.
                        tokio::time::sleep(self.backoff_initial).await;
                    }
                }
                Err(error) => {
                    self.metrics.publish_retries.inc();
                    let backoff = backoff.get_or_insert_with(|| {
                        Backoff::new(self.backoff_initial, self.backoff_max)
                    });
                    let attempt = backoff.attempts();
                    let delay = backoff.next_delay();
                    if attempt.is_multiple_of(10) {
                        tracing::warn!(error = %error, attempt, delay_ms = delay.as_millis() as u64, subject = %message.subject, "publish failed; retrying");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn publish_once(
        &self,
        message: &Outbound,
    ) -> Result<
        async_nats::jetstream::publish::PublishAck,
        async_nats::jetstream::context::PublishError,
    > {
        let mut headers = HeaderMap::new();
        for (name, value) in &message.headers {
            headers.insert(*name, value.as_str());
        }
        let ack = self
            .js
            .send_publish(
                message.subject.clone(),
                PublishMessage::build()
                    .payload(message.payload.clone())
                    .headers(headers),
            )
            .await?;
        ack.await
    }

    /// Sends `events` (subject, body) on core NATS, best effort: what is not on its way within
    /// 500 ms (NATS unreachable, the client's buffer full) is not sent.
    async fn announce(&self, events: Vec<(String, super::events::CallEvent)>) {
        if events.is_empty() {
            return;
        }
        let send = async {
            for (subject, event) in events {
                let Ok(body) = serde_json::to_vec(&event) else {
                    continue;
                };
                if let Err(error) = self.client.publish(subject, Bytes::from(body)).await {
                    tracing::debug!(error = %error, "call event not sent");
                    return;
                }
                self.metrics.call_events.inc();
            }
        };
        if tokio::time::timeout(Duration::from_millis(500), send)
            .await
            .is_err()
        {
            tracing::debug!("call events not sent in time");
        }
    }
}

/// The lines of `range` of `batched`.
fn lines_of(batched: &[(Line, Outbound)], range: std::ops::Range<usize>) -> Vec<Line> {
    batched[range]
        .iter()
        .map(|(line, _)| line.clone())
        .collect()
}
