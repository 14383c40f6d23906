//! How `ChatService`'s messages cross the wire on the server side. The
//! generated code (for clients) decodes every field of a `Message` and
//! copies every message it sends; the server does neither:
//!
//! - a client's `Message` is read into [`Incoming`], which has only what a
//!   client may send (`sender`, `text`, `room`, where to resume): fields
//!   the server sets (`seq`, `timestamp_ms`, `kind`, `members`) are
//!   refused unread, and unknown fields are skipped, never stored;
//! - every request comes [`Checked`]: what it asks, or the status that
//!   refuses it unread;
//! - what the server streams is [`Outgoing`], bytes encoded once per message
//!   and shared with C-core by every member it is sent to;
//! - a request larger than `--max-message-size` is refused here, before it
//!   is read, with `RESOURCE_EXHAUSTED`. C-core's own check is a filter in
//!   every call's path that cost a seventh of a unary call's instructions
//!   (the README's benchmarks), and it checks no sooner: C-core holds a
//!   message whole before any filter sees it.

use std::cell::Cell;
use std::sync::Arc;

use grpcio::{GrpcSlice, Marshaller, MessageReader, Method, MethodType, RpcStatus, RpcStatusCode};
use protobuf::CodedInputStream;

use crate::proto::chat::{Response, SubscribeRequest};
use crate::proto::health::{HealthCheckRequest, HealthCheckResponse};
use crate::sys;

thread_local! {
    /// The largest request the server reads, set on each of its poll threads
    /// as it starts (a marshaller is a plain function: it has no server to
    /// ask). Until then, gRPC's own default.
    static RECEIVE_LIMIT: Cell<usize> = const { Cell::new(4 << 20) };
}

/// Sets the largest request read on this (poll) thread.
pub fn set_receive_limit(max: usize) {
    RECEIVE_LIMIT.with(|limit| limit.set(max));
}

/// The status of a request of `len` bytes, if it is too large to read.
fn too_large(len: usize) -> Option<RpcStatus> {
    let max = RECEIVE_LIMIT.with(Cell::get);
    (len > max).then(|| {
        RpcStatus::with_message(
            RpcStatusCode::RESOURCE_EXHAUSTED,
            format!("received message larger than max ({len} vs. {max})"),
        )
    })
}

/// A request, or the status that refuses it unread (too large).
pub struct Checked<T>(pub Result<T, RpcStatus>);

fn checked_de<T: protobuf::Message>(reader: MessageReader) -> grpcio::Result<Checked<T>> {
    if let Some(status) = too_large(reader.len()) {
        return Ok(Checked(Err(status)));
    }
    grpcio::pb_de(reader).map(|request| Checked(Ok(request)))
}

const fn checked<T: protobuf::Message>() -> Marshaller<Checked<T>> {
    Marshaller {
        ser: unused_ser,
        de: checked_de,
    }
}

/// A client's `Message`: what a client may say.
#[derive(Debug, Default)]
pub struct Incoming {
    pub sender: String,
    pub text: String,
    pub room: String,
    /// Where a `Chat` stream's first message asks to resume, and in which
    /// epoch of the room's log.
    pub since: Option<u64>,
    pub epoch: String,
    /// Its size on the wire, in bytes.
    pub size: usize,
}

impl Incoming {
    /// Reads a `Message`, stopping at the first field a client may not set:
    /// that, or bytes that are not a `Message`, is `INVALID_ARGUMENT`.
    pub fn decode(is: &mut CodedInputStream<'_>) -> Result<Incoming, RpcStatus> {
        let invalid = |why| RpcStatus::with_message(RpcStatusCode::INVALID_ARGUMENT, why);
        let mut incoming = Incoming::default();
        match incoming.read_fields(is) {
            Ok(None) => Ok(incoming),
            Ok(Some(field)) => Err(invalid(format!("{field} is set by the server, not sent"))),
            Err(e) => Err(invalid(format!("malformed Message: {e}"))),
        }
    }

    /// Reads the fields a client may send; `Some`: the first it may not.
    fn read_fields(
        &mut self,
        is: &mut CodedInputStream<'_>,
    ) -> protobuf::Result<Option<&'static str>> {
        while let Some(tag) = is.read_raw_tag_or_eof()? {
            match tag {
                // Field number << 3 | wire type 2 (length-delimited).
                10 => self.sender = is.read_string()?,
                18 => self.text = is.read_string()?,
                26 => self.room = is.read_string()?,
                // Field 8, varint; field 9, length-delimited.
                64 => self.since = Some(is.read_uint64()?),
                74 => self.epoch = is.read_string()?,
                tag => match SERVER_FIELDS.iter().find(|(number, _)| tag >> 3 == *number) {
                    Some((_, name)) => return Ok(Some(name)),
                    None => protobuf::rt::skip_field_for_tag(tag, is)?,
                },
            }
        }
        Ok(None)
    }
}

/// The `Message` fields only the server sets, by number.
const SERVER_FIELDS: [(u32, &str); 6] = [
    (4, "seq"),
    (5, "timestamp_ms"),
    (6, "kind"),
    (7, "members"),
    (10, "recovered"),
    (11, "connections"),
];

fn incoming_de(mut reader: MessageReader) -> grpcio::Result<Checked<Incoming>> {
    let size = reader.len();
    if let Some(status) = too_large(size) {
        return Ok(Checked(Err(status)));
    }
    let decoded = Incoming::decode(&mut CodedInputStream::from_buf_read(&mut reader));
    Ok(Checked(
        decoded.map(|incoming| Incoming { size, ..incoming }),
    ))
}

/// A serialized `Message` the server streams, shared by every member.
pub struct Outgoing(pub Arc<[u8]>);

fn outgoing_ser(outgoing: &Outgoing, buf: &mut GrpcSlice) -> grpcio::Result<()> {
    *buf = sys::shared_slice(Arc::clone(&outgoing.0));
    Ok(())
}

/// The server never reads what it sends; these exist because a
/// `Marshaller` has both directions.
fn unused_de<T>(_: MessageReader) -> grpcio::Result<T> {
    Err(grpcio::Error::Codec("server-side marshaller only".into()))
}
fn unused_ser<T>(_: &T, _: &mut GrpcSlice) -> grpcio::Result<()> {
    Err(grpcio::Error::Codec("server-side marshaller only".into()))
}

const INCOMING: Marshaller<Checked<Incoming>> = Marshaller {
    ser: unused_ser,
    de: incoming_de,
};
const OUTGOING: Marshaller<Outgoing> = Marshaller {
    ser: outgoing_ser,
    de: unused_de,
};

pub const SEND_MESSAGE: Method<Checked<Incoming>, Response> = Method {
    ty: MethodType::Unary,
    name: "/chat.ChatService/SendMessage",
    req_mar: INCOMING,
    resp_mar: Marshaller {
        ser: grpcio::pb_ser,
        de: grpcio::pb_de,
    },
};

pub const CHAT: Method<Checked<Incoming>, Outgoing> = Method {
    ty: MethodType::Duplex,
    name: "/chat.ChatService/Chat",
    req_mar: INCOMING,
    resp_mar: OUTGOING,
};

pub const SUBSCRIBE: Method<Checked<SubscribeRequest>, Outgoing> = Method {
    ty: MethodType::ServerStreaming,
    name: "/chat.ChatService/Subscribe",
    req_mar: checked(),
    resp_mar: OUTGOING,
};

const HEALTH_RESPONSE: Marshaller<HealthCheckResponse> = Marshaller {
    ser: grpcio::pb_ser,
    de: unused_de,
};

pub const HEALTH_CHECK: Method<Checked<HealthCheckRequest>, HealthCheckResponse> = Method {
    ty: MethodType::Unary,
    name: "/grpc.health.v1.Health/Check",
    req_mar: checked(),
    resp_mar: HEALTH_RESPONSE,
};

pub const HEALTH_WATCH: Method<Checked<HealthCheckRequest>, HealthCheckResponse> = Method {
    ty: MethodType::ServerStreaming,
    name: "/grpc.health.v1.Health/Watch",
    req_mar: checked(),
    resp_mar: HEALTH_RESPONSE,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::chat::message::Kind;
    use crate::proto::chat::Message;
    use protobuf::Message as _;

    fn decode(message: &Message) -> Result<Incoming, RpcStatus> {
        let bytes = message.write_to_bytes().unwrap_or_default();
        let mut is = CodedInputStream::from_bytes(&bytes);
        Incoming::decode(&mut is)
    }

    #[test]
    fn a_clients_message_is_read_whole() {
        let message = Message {
            sender: "Alice".into(),
            text: "Olá, servidor gRPC!".into(),
            room: "sala".into(),
            ..Default::default()
        };
        let incoming = decode(&message).expect("read");
        assert_eq!(incoming.sender, "Alice");
        assert_eq!(incoming.text, "Olá, servidor gRPC!");
        assert_eq!(incoming.room, "sala");
        let resuming = Message {
            since: Some(0),
            epoch: "e1".into(),
            ..Default::default()
        };
        let incoming = decode(&resuming).expect("read");
        assert_eq!((incoming.since, incoming.epoch.as_str()), (Some(0), "e1"));
        let recovered = Message {
            recovered: true,
            ..Default::default()
        };
        assert!(decode(&recovered).is_err());
    }

    #[test]
    fn fields_the_server_sets_are_refused() {
        let with_members = Message {
            members: vec![String::new(); 1000],
            ..Default::default()
        };
        let refused = decode(&with_members).expect_err("refused");
        assert_eq!(refused.code(), RpcStatusCode::INVALID_ARGUMENT);
        assert_eq!(refused.message(), "members is set by the server, not sent");
        let with_seq = Message {
            seq: 7,
            ..Default::default()
        };
        assert!(decode(&with_seq).is_err());
        let with_kind = Message {
            kind: Kind::JOIN.into(),
            ..Default::default()
        };
        assert!(decode(&with_kind).is_err());
        let with_connections = Message {
            connections: vec![2],
            ..Default::default()
        };
        assert!(decode(&with_connections).is_err());
    }

    #[test]
    fn unknown_fields_are_skipped_and_garbage_refused() {
        // Field 20, length-delimited, 3 bytes; then text "hi".
        let bytes = [0xa2, 0x01, 3, b'a', b'b', b'c', 18, 2, b'h', b'i'];
        let mut is = CodedInputStream::from_bytes(&bytes);
        let incoming = Incoming::decode(&mut is).expect("read");
        assert_eq!(incoming.text, "hi");
        let truncated = [18, 9, b'h'];
        let mut is = CodedInputStream::from_bytes(&truncated);
        assert!(Incoming::decode(&mut is).is_err());
    }

    mod arbitrary {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
                if let Ok(incoming) = Incoming::decode(&mut CodedInputStream::from_bytes(&bytes)) {
                    let kept = incoming.sender.len() + incoming.text.len() + incoming.room.len() + incoming.epoch.len();
                    prop_assert!(kept <= bytes.len());
                }
            }

            #[test]
            fn nested_groups_are_bounded(depth in 0usize..50_000) {
                // Field 15 as a start-group tag, nested: read without
                // recursing past protobuf's limit (a stack overflow would
                // end the test), and nothing is kept.
                let bytes = vec![0x7bu8; depth];
                let decoded = Incoming::decode(&mut CodedInputStream::from_bytes(&bytes));
                prop_assert!(decoded.is_err() || decoded.is_ok_and(|i| i.text.is_empty() && i.sender.is_empty()));
            }
        }
    }
}
