//! The golden vectors shared with the TypeScript SDK (`tests/vectors/frames.json`,
//! also read by `client-ts/test/unit/vectors.test.ts`), so that the two codecs
//! cannot drift apart. The JSON form is described in the file's `about`.
//!
//! - `frames`: `decode(hex) == frame` and `encode(frame) == hex`;
//! - `lenient`: `decode(hex) == frame` and `encode(frame) == canonical_hex`;
//! - `malformed`: decoding `hex` with `max_frame_len` fails with `error`.

#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use common::{hex, to_hex, ALL_TYPES};
use confab_codec::*;
use serde_json::Value;

const VECTORS: &str = include_str!("vectors/frames.json");

fn vectors() -> Value {
    serde_json::from_str(VECTORS).expect("frames.json is JSON")
}

// ----- JSON to frames ------------------------------------------------------

/// Field access that names what is missing.
fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key)
        .unwrap_or_else(|| panic!("missing `{key}` in {v}"))
}

fn s(v: &Value, key: &str) -> String {
    get(v, key)
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {v}"))
        .to_owned()
}

fn n<T: TryFrom<u64>>(v: &Value, key: &str) -> T {
    let x = get(v, key)
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {v}"));
    T::try_from(x).unwrap_or_else(|_| panic!("`{key}` out of range"))
}

/// A u64: a decimal string.
fn big(v: &Value, key: &str) -> u64 {
    s(v, key).parse().unwrap()
}

fn seq(v: &Value, key: &str) -> Seq {
    Seq(big(v, key))
}

fn seq_opt(v: &Value, key: &str) -> Option<Seq> {
    match get(v, key) {
        Value::Null => None,
        _ => Some(seq(v, key)),
    }
}

fn boolean(v: &Value, key: &str) -> bool {
    get(v, key).as_bool().unwrap()
}

fn payload(v: &Value, key: &str) -> Bytes {
    Bytes::from(hex(&s(v, key)))
}

fn room_id(v: &Value, key: &str) -> RoomId {
    RoomId::new(s(v, key)).unwrap()
}

fn user_id(v: &Value, key: &str) -> UserId {
    UserId::new(s(v, key)).unwrap()
}

fn device_id(v: &Value, key: &str) -> DeviceId {
    DeviceId::new(s(v, key)).unwrap()
}

fn opt_room(v: &Value, key: &str) -> Option<RoomId> {
    get(v, key).as_str().map(|x| RoomId::new(x).unwrap())
}

fn opt_user(v: &Value, key: &str) -> Option<UserId> {
    get(v, key).as_str().map(|x| UserId::new(x).unwrap())
}

fn list<T>(v: &Value, key: &str, item: impl Fn(&Value) -> T) -> Vec<T> {
    get(v, key).as_array().unwrap().iter().map(item).collect()
}

fn code(v: &Value, key: &str) -> ErrorCode {
    let name = s(v, key);
    *ErrorCode::ALL
        .iter()
        .find(|c| c.as_str() == name)
        .unwrap_or_else(|| panic!("unknown error code name {name}"))
}

/// A closed enum by its name, through its `Debug` form (`Group`, `InviteOnly`).
fn named<T: Copy + std::fmt::Debug>(all: &[T], v: &Value, key: &str) -> T {
    let name = s(v, key);
    *all.iter()
        .find(|x| format!("{x:?}") == name)
        .unwrap_or_else(|| panic!("`{key}`: no value named {name}"))
}

fn start(v: &Value) -> StartAt {
    match v {
        Value::String(x) if x == "live" => StartAt::Live,
        _ => StartAt::From(seq(v, "from")),
    }
}

fn item(v: &Value) -> SubscribeItem {
    SubscribeItem {
        room: room_id(v, "room"),
        start: start(get(v, "start")),
    }
}

fn record(v: &Value) -> EventRecord {
    EventRecord {
        seq: seq(v, "seq"),
        timestamp_us: big(v, "timestamp_us"),
        sender: user_id(v, "sender"),
        device: device_id(v, "device"),
        client_msg_id: big(v, "client_msg_id"),
        kind: MessageKind(n(v, "kind")),
        refers_to: seq_opt(v, "refers_to"),
        thread: seq_opt(v, "thread"),
        payload: payload(v, "payload"),
    }
}

fn meta(v: &Value) -> RoomMeta {
    RoomMeta {
        name: s(v, "name"),
        topic: s(v, "topic"),
        avatar_url: s(v, "avatar_url"),
    }
}

fn body(ty: &str, b: &Value) -> Body {
    match ty {
        "Hello" => Hello {
            min_version: n(b, "min_version"),
            max_version: n(b, "max_version"),
            token: s(b, "token"),
            device: device_id(b, "device"),
            client_name: s(b, "client_name"),
            resume: list(b, "resume", item),
            features: Default::default(),
        }
        .into(),
        "Welcome" => Welcome {
            version: n(b, "version"),
            session_id: big(b, "session_id"),
            user: user_id(b, "user"),
            server_time_us: big(b, "server_time_us"),
            max_frame_len: n(b, "max_frame_len"),
            max_payload_len: n(b, "max_payload_len"),
            max_rooms: n(b, "max_rooms"),
            heartbeat_ms: n(b, "heartbeat_ms"),
            idle_timeout_ms: n(b, "idle_timeout_ms"),
            features: Default::default(),
        }
        .into(),
        "Goodbye" => Goodbye {
            code: code(b, "code"),
            message: s(b, "message"),
        }
        .into(),
        "Ping" => Ping {
            nonce: big(b, "nonce"),
        }
        .into(),
        "Pong" => Pong {
            nonce: big(b, "nonce"),
        }
        .into(),
        "Error" => ErrorFrame {
            code: code(b, "code"),
            retry_after_ms: n(b, "retry_after_ms"),
            message: s(b, "message"),
        }
        .into(),
        "Notice" => Notice {
            level: named(NoticeLevel::ALL, b, "level"),
            code: code(b, "code"),
            text: s(b, "text"),
        }
        .into(),
        "Ack" => Ack {}.into(),
        "RefreshToken" => RefreshToken {
            token: s(b, "token"),
        }
        .into(),
        "RegisterPush" => RegisterPush {
            provider: s(b, "provider"),
            token: s(b, "token"),
        }
        .into(),
        "Subscribe" => Subscribe {
            items: list(b, "items", item),
        }
        .into(),
        "SubscribeAck" => SubscribeAck {
            results: list(b, "results", |r| SubscribeResult {
                room: room_id(r, "room"),
                code: code(r, "code"),
                head: seq(r, "head"),
                first: seq(r, "first"),
            }),
        }
        .into(),
        "Unsubscribe" => Unsubscribe {
            rooms: list(b, "rooms", |r| RoomId::new(r.as_str().unwrap()).unwrap()),
        }
        .into(),
        "SyncInbox" => SyncInbox {
            since: big(b, "since"),
            after: opt_room(b, "after"),
            limit: n(b, "limit"),
        }
        .into(),
        "InboxPage" => InboxPage {
            rooms: list(b, "rooms", |r| InboxRoom {
                room: room_id(r, "room"),
                code: code(r, "code"),
                role: named(Role::ALL, r, "role"),
                stamp: big(r, "stamp"),
                head: seq(r, "head"),
                first: seq(r, "first"),
                read: seq(r, "read"),
                unread: big(r, "unread"),
                first_unread: seq(r, "first_unread"),
                last: list(r, "last", record),
            }),
            has_more: boolean(b, "has_more"),
            cursor: big(b, "cursor"),
        }
        .into(),
        "Gap" => Gap {
            room: room_id(b, "room"),
            from: seq(b, "from"),
            to: seq(b, "to"),
            reason: named(GapReason::ALL, b, "reason"),
        }
        .into(),
        "Lagging" => Lagging {
            room: room_id(b, "room"),
            resume_from: seq(b, "resume_from"),
            head: seq(b, "head"),
        }
        .into(),
        "CaughtUp" => CaughtUp {
            room: room_id(b, "room"),
            seq: seq(b, "seq"),
        }
        .into(),
        "Publish" => Publish {
            room: room_id(b, "room"),
            client_msg_id: big(b, "client_msg_id"),
            kind: MessageKind(n(b, "kind")),
            refers_to: seq_opt(b, "refers_to"),
            thread: seq_opt(b, "thread"),
            payload: payload(b, "payload"),
        }
        .into(),
        "PublishAck" => PublishAck {
            room: room_id(b, "room"),
            client_msg_id: big(b, "client_msg_id"),
            seq: seq(b, "seq"),
            timestamp_us: big(b, "timestamp_us"),
            duplicate: boolean(b, "duplicate"),
        }
        .into(),
        "Event" => Event {
            room: room_id(b, "room"),
            event: record(get(b, "event")),
        }
        .into(),
        "EventBatch" => EventBatch {
            room: room_id(b, "room"),
            events: list(b, "events", record),
        }
        .into(),
        "HistoryRequest" => HistoryRequest {
            room: room_id(b, "room"),
            direction: named(Direction::ALL, b, "direction"),
            anchor: seq(b, "anchor"),
            limit: n(b, "limit"),
        }
        .into(),
        "HistoryPage" => HistoryPage {
            room: room_id(b, "room"),
            has_more: boolean(b, "has_more"),
            first: seq(b, "first"),
            events: list(b, "events", record),
        }
        .into(),
        "CreateRoom" => CreateRoom {
            kind: named(RoomKind::ALL, b, "kind"),
            room: opt_room(b, "room"),
            peer: opt_user(b, "peer"),
            policy: named(JoinPolicy::ALL, b, "policy"),
            meta: meta(get(b, "meta")),
            invite: list(b, "invite", |u| UserId::new(u.as_str().unwrap()).unwrap()),
        }
        .into(),
        "RoomInfo" => RoomInfo {
            room: room_id(b, "room"),
            kind: named(RoomKind::ALL, b, "kind"),
            policy: named(JoinPolicy::ALL, b, "policy"),
            meta: meta(get(b, "meta")),
            created_at_us: big(b, "created_at_us"),
            head: seq(b, "head"),
            first: seq(b, "first"),
            member_count: n(b, "member_count"),
            members: list(b, "members", |m| Member {
                user: user_id(m, "user"),
                role: named(Role::ALL, m, "role"),
            }),
        }
        .into(),
        "JoinRoom" => JoinRoom {
            room: room_id(b, "room"),
        }
        .into(),
        "LeaveRoom" => LeaveRoom {
            room: room_id(b, "room"),
        }
        .into(),
        "InviteMember" => InviteMember {
            room: room_id(b, "room"),
            user: user_id(b, "user"),
        }
        .into(),
        "RemoveMember" => RemoveMember {
            room: room_id(b, "room"),
            user: user_id(b, "user"),
        }
        .into(),
        "GetRoomInfo" => GetRoomInfo {
            room: room_id(b, "room"),
        }
        .into(),
        "UpdateRoom" => UpdateRoom {
            room: room_id(b, "room"),
            meta: meta(get(b, "meta")),
        }
        .into(),
        "SetRole" => SetRole {
            room: room_id(b, "room"),
            user: user_id(b, "user"),
            role: named(Role::ALL, b, "role"),
        }
        .into(),
        "ListRooms" => ListRooms {
            after: opt_room(b, "after"),
            limit: n(b, "limit"),
        }
        .into(),
        "RoomList" => RoomList {
            rooms: list(b, "rooms", |r| RoomSummary {
                room: room_id(r, "room"),
                kind: named(RoomKind::ALL, r, "kind"),
                name: s(r, "name"),
                head: seq(r, "head"),
                read: seq(r, "read"),
                unread: big(r, "unread"),
                last_activity_us: big(r, "last_activity_us"),
            }),
            has_more: boolean(b, "has_more"),
        }
        .into(),
        "Typing" => Typing {
            room: room_id(b, "room"),
            active: boolean(b, "active"),
        }
        .into(),
        "TypingEvent" => TypingEvent {
            room: room_id(b, "room"),
            users: list(b, "users", |u| UserId::new(u.as_str().unwrap()).unwrap()),
        }
        .into(),
        "SetPresence" => SetPresence {
            status: named(PresenceStatus::ALL, b, "status"),
        }
        .into(),
        "WatchPresence" => WatchPresence {
            enabled: boolean(b, "enabled"),
        }
        .into(),
        "GetPresence" => GetPresence {
            users: list(b, "users", |u| UserId::new(u.as_str().unwrap()).unwrap()),
        }
        .into(),
        "PresenceEvent" => PresenceEvent {
            entries: list(b, "entries", |e| PresenceEntry {
                user: user_id(e, "user"),
                status: named(PresenceStatus::ALL, e, "status"),
                last_seen_us: big(e, "last_seen_us"),
            }),
        }
        .into(),
        "Receipt" => Receipt {
            room: room_id(b, "room"),
            kind: named(ReceiptKind::ALL, b, "kind"),
            seq: seq(b, "seq"),
        }
        .into(),
        "ReceiptEvent" => ReceiptEvent {
            room: room_id(b, "room"),
            entries: list(b, "entries", |e| ReceiptEntry {
                user: user_id(e, "user"),
                device: device_id(e, "device"),
                kind: named(ReceiptKind::ALL, e, "kind"),
                seq: seq(e, "seq"),
            }),
        }
        .into(),
        "GetMessageStatus" => GetMessageStatus {
            room: room_id(b, "room"),
            seq: seq(b, "seq"),
        }
        .into(),
        "MessageStatus" => MessageStatus {
            room: room_id(b, "room"),
            seq: seq(b, "seq"),
            state: named(DeliveryState::ALL, b, "state"),
            recipients: n(b, "recipients"),
            delivered: n(b, "delivered"),
            read: n(b, "read"),
        }
        .into(),
        "Extension" => Body::Extension {
            frame_type: n(b, "frame_type"),
            body: payload(b, "body"),
        },
        other => panic!("unknown frame type name {other}"),
    }
}

fn frame(v: &Value) -> Frame {
    Frame {
        request_id: n(v, "request_id"),
        flags: n(v, "flags"),
        body: body(&s(v, "type"), get(v, "body")),
    }
}

fn decode(bytes: &[u8], max: u32) -> Result<Frame, CodecError> {
    let mut buf = BytesMut::from(bytes);
    let frame = Frame::decode(&mut buf, max)?.expect("a whole frame");
    assert!(buf.is_empty(), "the frame is the whole vector");
    Ok(frame)
}

fn error_name(e: &CodecError) -> &'static str {
    match e {
        CodecError::FrameTooLarge { .. } => "FrameTooLarge",
        CodecError::UnknownFrameType { .. } => "UnknownFrameType",
        CodecError::Truncated { .. } => "Truncated",
        CodecError::InvalidUtf8 { .. } => "InvalidUtf8",
        CodecError::InvalidValue { .. } => "InvalidValue",
        CodecError::InvalidId { .. } => "InvalidId",
        CodecError::FieldTooLong { .. } => "FieldTooLong",
        _ => "other",
    }
}

// ----- tests ---------------------------------------------------------------

#[test]
fn every_frame_vector_decodes_and_encodes_exactly() {
    let doc = vectors();
    let frames = get(&doc, "frames").as_array().unwrap();
    assert!(frames.len() >= ALL_TYPES.len());
    for v in frames {
        let name = s(v, "name");
        let bytes = hex(&s(v, "hex"));
        let want = frame(get(v, "frame"));
        let got = decode(&bytes, DEFAULT_MAX_FRAME_LEN)
            .unwrap_or_else(|e| panic!("{name}: does not decode: {e}"));
        assert_eq!(got, want, "{name}: decode(hex) != frame");
        let encoded = want.to_bytes().unwrap();
        assert_eq!(
            to_hex(&encoded),
            to_hex(&bytes),
            "{name}: encode(frame) != hex"
        );
    }
}

#[test]
fn the_vectors_cover_every_frame_type() {
    let doc = vectors();
    let covered: BTreeSet<u8> = get(&doc, "frames")
        .as_array()
        .unwrap()
        .iter()
        .map(|v| hex(&s(v, "hex"))[4])
        .collect();
    for (code, name) in ALL_TYPES {
        assert!(covered.contains(code), "no vector for {name}");
    }
    assert!(
        covered.iter().any(|&t| t >= EXTENSION_TYPE_BASE),
        "no extension vector"
    );
}

#[test]
fn lenient_vectors_decode_and_encode_canonically() {
    let doc = vectors();
    for v in get(&doc, "lenient").as_array().unwrap() {
        let name = s(v, "name");
        let want = frame(get(v, "frame"));
        let got = decode(&hex(&s(v, "hex")), DEFAULT_MAX_FRAME_LEN)
            .unwrap_or_else(|e| panic!("{name}: does not decode: {e}"));
        assert_eq!(got, want, "{name}");
        assert_eq!(
            to_hex(&want.to_bytes().unwrap()),
            to_hex(&hex(&s(v, "canonical_hex"))),
            "{name}: canonical encoding"
        );
    }
}

#[test]
fn malformed_vectors_are_refused_with_the_same_error() {
    let doc = vectors();
    let malformed = get(&doc, "malformed").as_array().unwrap();
    assert!(!malformed.is_empty());
    for v in malformed {
        let name = s(v, "name");
        let want = s(v, "error");
        match decode(&hex(&s(v, "hex")), n(v, "max_frame_len")) {
            Ok(f) => panic!("{name}: decoded to {f:?}, expected {want}"),
            Err(e) => assert_eq!(error_name(&e), want, "{name}: {e}"),
        }
    }
}
