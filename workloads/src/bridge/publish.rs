//! Publishing to JetStream: deliver one line until the stream has acked it.
//!
//! [`Publisher::deliver`] never gives up on a transient failure: it retries with the same
//! `Nats-Msg-Id` (so a publish that was stored but whose ack was lost is dropped as a duplicate)
//! after an exponential, capped, jittered delay. The caller bounds how many deliveries run at
//! once, which is what stops the reading when NATS is slow or down.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::{Client, HeaderMap};
use bytes::Bytes;

use super::classify::{Outbound, classify};
use super::config::BridgeConfig;
use super::dead_letter;
use super::metrics::Metrics;
use super::tail::Line;
use crate::backoff::Backoff;

/// Publishes lines of one node.
#[derive(Debug, Clone)]
pub struct Publisher {
    client: Client,
    js: async_nats::jetstream::Context,
    node: String,
    metrics: Metrics,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl Publisher {
    /// A publisher over `client`.
    pub fn new(client: Client, config: &BridgeConfig, metrics: Metrics) -> Self {
        let js = async_nats::jetstream::context::ContextBuilder::new()
            .timeout(config.ack_timeout)
            .max_ack_inflight(config.in_flight.max(1) * 2)
            .backpressure_on_inflight(true)
            .build(client.clone());
        Self {
            client,
            js,
            node: config.node.clone(),
            metrics,
            backoff_initial: config.backoff_initial,
            backoff_max: config.backoff_max,
        }
    }

    /// Publishes `line` (to `cdr.raw`, or as a dead letter) until the stream acks it, then
    /// announces its call event. Returns the line, whose end offset may now be checkpointed.
    #[tracing::instrument(name = "deliver", skip_all, fields(offset = line.end_offset))]
    pub async fn deliver(&self, line: Line) -> Line {
        let mut message = classify(&self.node, &line);
        let mut backoff = Backoff::new(self.backoff_initial, self.backoff_max);
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
                    match message.dead_letter {
                        Some(reason) => {
                            tracing::info!(reason, subject = %message.subject, "line dead-lettered");
                            self.metrics.dead_letter(reason);
                        }
                        None => {
                            self.metrics.published.inc();
                        }
                    }
                    if ack.duplicate {
                        self.metrics.duplicates.inc();
                    }
                    self.announce(message).await;
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

    /// Sends the call event of `message`, best effort.
    async fn announce(&self, message: Outbound) {
        let Some((subject, event)) = message.event else {
            return;
        };
        let Ok(body) = serde_json::to_vec(&event) else {
            return;
        };
        let send = self.client.publish(subject, Bytes::from(body));
        match tokio::time::timeout(Duration::from_millis(500), send).await {
            Ok(Ok(())) => {
                self.metrics.call_events.inc();
            }
            Ok(Err(error)) => tracing::debug!(error = %error, "call event not sent"),
            Err(_) => tracing::debug!("call event not sent in time"),
        }
    }
}
