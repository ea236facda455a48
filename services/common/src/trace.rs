//! W3C Trace Context through the pipeline: a `traceparent` header follows a review from its first
//! message (or `POST /v1/reviews` request) to its clean event, prediction, alert or dead letter.
//!
//! Each service that turns one message into others gives the outputs a child of the input's context
//! (same trace id, a new parent id) or, when the input has none or an invalid one, a new trace whose
//! id is derived from the input's place (topic, partition, offset), so that every output of that
//! message — its prediction and shadow prediction, or a copy made when it is read again — shares it;
//! a `tracestate` is passed on unchanged. So a consumer of `predictions` or `alerts.negative` can find
//! the producer's request, and an operator can follow one review through the services' logs.

use std::ffi::{CStr, c_void};

use rdkafka::Message;
use rdkafka::bindings::{rd_kafka_header_get_last, rd_kafka_headers_t, rd_kafka_resp_err_t};
use rdkafka::message::{BorrowedHeaders, Header, OwnedHeaders};

/// Header (HTTP and Kafka) carrying the context.
pub const TRACEPARENT: &str = "traceparent";
/// Header carrying vendor state, passed on unchanged with a valid `traceparent`.
pub const TRACESTATE: &str = "tracestate";
/// [`TRACEPARENT`] as the C string librdkafka looks headers up by.
const TRACEPARENT_C: &CStr = c"traceparent";
/// [`TRACESTATE`] as the C string librdkafka looks headers up by.
const TRACESTATE_C: &CStr = c"tracestate";

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

/// The context a message carries and its `tracestate`, if its `traceparent` is valid (the last of
/// each header wins, as in HTTP).
pub fn of_message<M: Message<Headers: AsBorrowedHeaders>>(
    message: &M,
) -> Option<(TraceContext, Option<Vec<u8>>)> {
    let headers = message.headers()?.as_borrowed_headers();
    let context = last_header_value(headers, TRACEPARENT_C).and_then(TraceContext::parse)?;
    let state = last_header_value(headers, TRACESTATE_C)
        .filter(|value| value.len() <= MAX_TRACESTATE_BYTES)
        .map(<[u8]>::to_vec);
    Some((context, state))
}

/// Headers of a consumed message (borrowed, or owned after `detach`) as librdkafka's own list.
pub trait AsBorrowedHeaders {
    /// The borrowed view of the headers.
    fn as_borrowed_headers(&self) -> &BorrowedHeaders;
}

impl AsBorrowedHeaders for BorrowedHeaders {
    fn as_borrowed_headers(&self) -> &BorrowedHeaders {
        self
    }
}

impl AsBorrowedHeaders for OwnedHeaders {
    fn as_borrowed_headers(&self) -> &BorrowedHeaders {
        self.as_borrowed()
    }
}

/// The value of the last header called `name`, looked up by librdkafka without reading any other
/// header's name. rdkafka 0.39's `Headers::iter`/`get`/`try_get` unwrap the UTF-8 decoding of every
/// name they pass, and the broker accepts any bytes as a name: one message with a non-UTF-8 header
/// name from any producer would panic the consumer that reads it, again after each restart (its
/// offset is never stored), and on every replica the partition moves to.
// The cast below relies on it; an rdkafka that changed the layout fails to build here.
const _: () = assert!(std::mem::size_of::<BorrowedHeaders>() == 0);

#[allow(unsafe_code)]
fn last_header_value<'a>(headers: &'a BorrowedHeaders, name: &CStr) -> Option<&'a [u8]> {
    // rdkafka's `BorrowedHeaders` is a zero-sized view placed at the address of librdkafka's
    // headers list (its private `as_native_ptr` is this same cast).
    let list: *const rd_kafka_headers_t = std::ptr::from_ref(headers).cast();
    let mut value: *const c_void = std::ptr::null();
    let mut size = 0usize;
    // SAFETY: `list` is a live headers list for as long as `headers` is borrowed, `name` is
    // NUL-terminated, and librdkafka only writes the two out-pointers.
    let found = unsafe { rd_kafka_header_get_last(list, name.as_ptr(), &mut value, &mut size) };
    if found != rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || value.is_null() {
        return None;
    }
    // SAFETY: librdkafka returned a pointer to `size` bytes owned by the headers list, which
    // outlives the borrow of `headers`.
    Some(unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) })
}

/// Trace headers for a message that `from` leads to: a child of its context, or a new trace of its
/// own ([`TraceContext::root_for`] its place).
pub fn headers_after<M: Message<Headers: AsBorrowedHeaders>>(
    from: &M,
) -> (TraceContext, OwnedHeaders) {
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
    use rdkafka::bindings::rd_kafka_header_add;
    use rdkafka::message::{Headers as _, OwnedMessage};

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

    /// `headers` with one more header whose name is any bytes (rdkafka's own API takes `&str`).
    #[allow(unsafe_code)]
    fn with_raw_header(headers: OwnedHeaders, name: &[u8], value: &[u8]) -> OwnedHeaders {
        let list: *mut rd_kafka_headers_t = std::ptr::from_ref(headers.as_borrowed())
            .cast::<rd_kafka_headers_t>()
            .cast_mut();
        // SAFETY: the list is alive and owned by `headers`; sizes are the slices' own.
        let added = unsafe {
            rd_kafka_header_add(
                list,
                name.as_ptr().cast(),
                isize::try_from(name.len()).expect("short name"),
                value.as_ptr().cast(),
                isize::try_from(value.len()).expect("short value"),
            )
        };
        assert_eq!(added, rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
        headers
    }

    #[test]
    fn a_header_name_that_is_not_utf8_is_passed_over_not_a_panic() {
        let traceparent = Header {
            key: TRACEPARENT,
            value: Some(EXAMPLE.as_bytes()),
        };
        let headers = with_raw_header(
            OwnedHeaders::new().insert(traceparent),
            b"\xff\xfe-not-utf8",
            b"value",
        );
        let headers = with_raw_header(headers, TRACESTATE.as_bytes(), b"vendor=after");
        let message = message_with(Some(headers));
        let (context, state) = of_message(&message).expect("the traceparent is still read");
        assert_eq!(context.header_value(), EXAMPLE);
        assert_eq!(state.as_deref(), Some(b"vendor=after".as_slice()));
        let (child, _) = headers_after(&message);
        assert_eq!(child.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // The last of repeated headers wins; a header without a value counts as absent.
        let repeated = OwnedHeaders::new()
            .insert(Header {
                key: TRACEPARENT,
                value: Some(b"00-00000000000000000000000000000000-00f067aa0ba902b7-01".as_slice()),
            })
            .insert(Header {
                key: TRACEPARENT,
                value: Some(EXAMPLE.as_bytes()),
            })
            .insert(Header::<&[u8]> {
                key: TRACESTATE,
                value: None,
            });
        let (context, state) = of_message(&message_with(Some(repeated))).expect("valid");
        assert_eq!(context.header_value(), EXAMPLE);
        assert_eq!(state, None);
    }
}
