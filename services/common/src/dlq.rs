//! The dead-letter helper: permanent failures go to `reviews.dlq` with the original bytes, their source
//! coordinate, an error kind and a reason, and are counted per kind. Nothing bad is ever dropped silently.

use rdkafka::Message;
use rdkafka::error::KafkaResult;
use rdkafka::producer::DeliveryFuture;

use crate::events::{DeadLetter, MAX_DEAD_LETTER_KEY_BYTES, SourceCoordinate};
use crate::kafka::ResilientProducer;

/// Produces dead letters for one service.
#[derive(Clone, Debug)]
pub struct DeadLetterSink {
    /// Shared producer of the service (dead letters ride the same idempotent connection).
    producer: ResilientProducer,
    /// Physical name of the dead-letter topic.
    topic: String,
    /// Service name recorded in each dead letter and used in the metric name.
    service: &'static str,
}

impl DeadLetterSink {
    /// A sink writing to `topic`.
    pub fn new(producer: ResilientProducer, topic: String, service: &'static str) -> Self {
        Self {
            producer,
            topic,
            service,
        }
    }

    /// Builds the dead letter for a consumed message.
    pub fn letter(
        &self,
        error_kind: &str,
        reason: &str,
        source: SourceCoordinate,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> DeadLetter {
        DeadLetter::new(self.service, error_kind, reason, source, key, value)
    }

    /// Enqueues the dead letter of `original` (keyed by its key, cut to [`MAX_DEAD_LETTER_KEY_BYTES`]
    /// like its copy in the payload, and continuing its trace) and counts it; await the future before
    /// storing the source offset.
    pub async fn enqueue<M: Message<Headers: crate::trace::AsBorrowedHeaders>>(
        &self,
        letter: &DeadLetter,
        original: &M,
    ) -> KafkaResult<DeliveryFuture> {
        let payload = serde_json::to_vec(letter).expect("dead letters always serialise");
        let (trace, headers) = crate::trace::headers_after(original);
        let future = self
            .producer
            .enqueue(
                &self.topic,
                original
                    .key()
                    .map(|key| &key[..key.len().min(MAX_DEAD_LETTER_KEY_BYTES)]),
                &payload,
                Some(headers),
            )
            .await?;
        metrics::counter!(format!("sentiflow_{}_dlq_total", self.service), "error_kind" => letter.error_kind.clone()).increment(1);
        tracing::warn!(
            service = self.service,
            error_kind = %letter.error_kind,
            reason = %letter.reason,
            topic = %letter.source.topic,
            partition = letter.source.partition,
            offset = letter.source.offset,
            trace_id = %trace.trace_id(),
            "message sent to the dead-letter topic"
        );
        Ok(future)
    }
}
