//! W3C Trace Context through the pipeline: a `traceparent` header follows a review from its first
//! message (or `POST /v1/reviews` request) to its clean event, prediction, alert or dead letter.
//!
//! Each service that turns one message into others gives the outputs a child of the input's context
//! (same trace id, a new parent id) or, when the input has none or an invalid one, a new trace whose
//! id is derived from the input's place (topic, partition, offset), so that every output of that
//! message — its prediction and shadow prediction, or a copy made when it is read again — shares it;
//! a `tracestate` is passed on unchanged. So a consumer of `predictions` or `alerts.negative` can find
//! the producer's request, and an operator can follow one review through the services' logs.

use rdkafka::Message;
use rdkafka::message::{Header, Headers as _, OwnedHeaders};

/// Header (HTTP and Kafka) carrying the context.
pub const TRACEPARENT: &str = "traceparent";
/// Header carrying vendor state, passed on unchanged with a valid `traceparent`.
pub const TRACESTATE: &str = "tracestate";

/// Longest `tracestate` passed on (the W3C limit is 32 members of at most 256 characters each).
const MAX_TRACESTATE_BYTES: usize = 8_192;

/// One position in a trace: the trace, the parent span and the sampled flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0_u8; N];
    // UUID v4 draws from the OS generator; a zero id is invalid, so draw again in that (unlikely) case.
    loop {
        for chunk in bytes.chunks_mut(16) {
            let random = uuid::Uuid::new_v4();
            chunk.copy_from_slice(&random.as_bytes()[..chunk.len()]);
        }
        if bytes.iter().any(|&byte| byte != 0) {
            return bytes;
        }
    }
}

fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    // Lowercase only: the specification forbids uppercase hex in `traceparent`.
    if text.len() != 2 * N
        || !text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
    {
        return None;
    }
    let mut bytes = [0_u8; N];
    hex::decode_to_slice(text, &mut bytes).ok()?;
    Some(bytes)
}

impl TraceContext {
    /// A new trace (sampled), for input that carries no context.
    pub fn root() -> Self {
        Self {
            trace_id: random_bytes(),
            parent_id: random_bytes(),
            flags: 0x01,
        }
    }

    /// A new trace (sampled) for the message at `topic`/`partition`/`offset` that carries no context:
    /// its id is a hash of that place, so all that is made from the message shares it.
    pub fn root_for(topic: &str, partition: i32, offset: i64) -> Self {
        use sha2::{Digest as _, Sha256};
        let digest = Sha256::new()
            .chain_update(b"sentiflow-trace\0")
            .chain_update(topic.as_bytes())
            .chain_update(partition.to_be_bytes())
            .chain_update(offset.to_be_bytes())
            .finalize();
        let mut trace_id = [0_u8; 16];
        trace_id.copy_from_slice(&digest[..16]);
        if trace_id == [0; 16] {
            trace_id[15] = 1;
        }
        Self {
            trace_id,
            parent_id: random_bytes(),
            flags: 0x01,
        }
    }

    /// The context of the next hop: the same trace and flags, a new parent id.
    #[must_use]
    pub fn child(&self) -> Self {
        Self {
            parent_id: random_bytes(),
            ..*self
        }
    }

    /// Parses a `traceparent` value (version `00`, or a later version read as `00` as the
    /// specification asks); `None` when it is not a valid one.
    pub fn parse(value: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(value).ok()?.trim();
        let version = text.get(..2)?;
        let version = parse_hex::<1>(version)?[0];
        if version == 0xff || (version == 0 && text.len() != 55) {
            return None;
        }
        // A later version may append fields after a dash; the first four are read as version 00.
        if version != 0 && text.len() > 55 && text.as_bytes()[55] != b'-' {
            return None;
        }
        let fields = text.get(..55)?;
        let mut parts = fields.split('-');
        let (Some(_), Some(trace_id), Some(parent_id), Some(flags), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let trace_id = parse_hex::<16>(trace_id)?;
        let parent_id = parse_hex::<8>(parent_id)?;
        // Only the sampled flag is defined for version 00; the others are sent on as zero.
        let flags = parse_hex::<1>(flags)?[0] & 0x01;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The `traceparent` value (version `00`).
    pub fn header_value(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.parent_id),
            self.flags
        )
    }

    /// The trace id as 32 lowercase hex digits (what logs and answers show).
    pub fn trace_id(&self) -> String {
        hex::encode(self.trace_id)
    }
}

/// The context a message carries and its `tracestate`, if its `traceparent` is valid.
pub fn of_message<M: Message>(message: &M) -> Option<(TraceContext, Option<Vec<u8>>)> {
    let headers = message.headers()?;
    let mut context = None;
    let mut state = None;
    for header in headers.iter() {
        match header.key {
            TRACEPARENT => context = header.value.and_then(TraceContext::parse),
            TRACESTATE => {
                state = header
                    .value
                    .filter(|value| value.len() <= MAX_TRACESTATE_BYTES)
                    .map(<[u8]>::to_vec);
            }
            _ => {}
        }
    }
    context.map(|context| (context, state))
}

/// Trace headers for a message that `from` leads to: a child of its context, or a new trace of its
/// own ([`TraceContext::root_for`] its place).
pub fn headers_after<M: Message>(from: &M) -> (TraceContext, OwnedHeaders) {
    let (context, state) = match of_message(from) {
        Some((context, state)) => (context.child(), state),
        None => (
            TraceContext::root_for(from.topic(), from.partition(), from.offset()),
            None,
        ),
    };
    let headers = headers(&context, state.as_deref());
    (context, headers)
}

/// Kafka headers carrying `context` (and `state`, when there is one).
pub fn headers(context: &TraceContext, state: Option<&[u8]>) -> OwnedHeaders {
    let value = context.header_value();
    let headers = OwnedHeaders::new_with_capacity(2).insert(Header {
        key: TRACEPARENT,
        value: Some(value.as_bytes()),
    });
    match state {
        Some(state) => headers.insert(Header {
            key: TRACESTATE,
            value: Some(state),
        }),
        None => headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn message_with(headers: Option<OwnedHeaders>) -> OwnedMessage {
        message_at(0, headers)
    }

    fn message_at(offset: i64, headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"key".to_vec()),
            "topic".to_owned(),
            Timestamp::NotAvailable,
            0,
            offset,
            headers,
        )
    }

    #[test]
    fn the_specification_example_round_trips() {
        let context = TraceContext::parse(EXAMPLE.as_bytes()).expect("valid");
        assert_eq!(context.header_value(), EXAMPLE);
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn invalid_values_are_refused() {
        for invalid in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceContext::parse(invalid.as_bytes()), None, "{invalid:?}");
        }
        // A later version with more fields is read as version 00; undefined flags are not passed on.
        let later = TraceContext::parse(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff-what-comes",
        )
        .expect("a later version");
        assert_eq!(later.header_value(), EXAMPLE);
    }

    #[test]
    fn outputs_continue_the_trace_of_their_input_or_start_one() {
        let traced = message_with(Some(
            OwnedHeaders::new()
                .insert(Header {
                    key: TRACEPARENT,
                    value: Some(EXAMPLE.as_bytes()),
                })
                .insert(Header {
                    key: TRACESTATE,
                    value: Some(b"vendor=opaque".as_slice()),
                }),
        ));
        let (child, headers) = headers_after(&traced);
        assert_eq!(child.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_ne!(child.header_value(), EXAMPLE, "a new parent id");
        let written: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|header| (header.key.to_owned(), header.value.unwrap().to_vec()))
            .collect();
        assert_eq!(
            written,
            [
                (TRACEPARENT.to_owned(), child.header_value().into_bytes()),
                (TRACESTATE.to_owned(), b"vendor=opaque".to_vec()),
            ]
        );
        // Without a context: a trace of the message's own, the same for everything made from it.
        let (root, _) = headers_after(&message_at(7, None));
        let (again, _) = headers_after(&message_at(7, None));
        let (another, _) = headers_after(&message_at(8, None));
        assert_eq!(root.trace_id(), again.trace_id(), "one message, one trace");
        assert_ne!(
            root.header_value(),
            again.header_value(),
            "each output its parent id"
        );
        assert_ne!(
            root.trace_id(),
            another.trace_id(),
            "another message, another trace"
        );
        let invalid = message_with(Some(OwnedHeaders::new().insert(Header {
            key: TRACEPARENT,
            value: Some(b"garbage".as_slice()),
        })));
        assert!(of_message(&invalid).is_none());
        let (fresh, headers) = headers_after(&invalid);
        assert_ne!(fresh.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            headers.count(),
            1,
            "no tracestate without a valid traceparent"
        );
    }
}
