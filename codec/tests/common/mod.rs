//! Shared fixtures for the codec's integration tests: one realistic sample
//! frame per frame type, the registry of every known type, and small helpers.

#![allow(dead_code, clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use confab_codec::*;

/// Every frame type of protocol v1: its code and its name.
///
/// Written out by hand (not derived from the codec) so that a type added to,
/// removed from or renumbered in the registry fails a test.
pub(crate) const ALL_TYPES: &[(u8, &str)] = &[
    (0x01, "Hello"),
    (0x02, "Welcome"),
    (0x03, "Goodbye"),
    (0x04, "Ping"),
    (0x05, "Pong"),
    (0x06, "Error"),
    (0x07, "Notice"),
    (0x08, "Ack"),
    (0x09, "RefreshToken"),
    (0x0A, "RegisterPush"),
    (0x10, "Subscribe"),
    (0x11, "SubscribeAck"),
    (0x12, "Unsubscribe"),
    (0x13, "Lagging"),
    (0x14, "CaughtUp"),
    (0x15, "SyncInbox"),
    (0x16, "InboxPage"),
    (0x17, "Gap"),
    (0x20, "Publish"),
    (0x21, "PublishAck"),
    (0x22, "Event"),
    (0x23, "EventBatch"),
    (0x24, "HistoryRequest"),
    (0x25, "HistoryPage"),
    (0x30, "CreateRoom"),
    (0x31, "RoomInfo"),
    (0x32, "JoinRoom"),
    (0x33, "LeaveRoom"),
    (0x34, "InviteMember"),
    (0x35, "RemoveMember"),
    (0x36, "GetRoomInfo"),
    (0x37, "UpdateRoom"),
    (0x38, "SetRole"),
    (0x39, "ListRooms"),
    (0x3A, "RoomList"),
    (0x40, "Typing"),
    (0x41, "TypingEvent"),
    (0x42, "SetPresence"),
    (0x43, "WatchPresence"),
    (0x44, "GetPresence"),
    (0x45, "PresenceEvent"),
    (0x50, "Receipt"),
    (0x51, "ReceiptEvent"),
    (0x52, "GetMessageStatus"),
    (0x53, "MessageStatus"),
];

pub(crate) fn room(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}

pub(crate) fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

pub(crate) fn device(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap()
}

/// 2023-11-14T22:13:20Z in microseconds.
pub(crate) const T0: u64 = 1_700_000_000_000_000;

pub(crate) fn record(seq: u64, sender: &str, dev: &str, payload: &'static [u8]) -> EventRecord {
    EventRecord {
        seq: Seq(seq),
        timestamp_us: T0 + seq * 1_000,
        sender: user(sender),
        device: device(dev),
        client_msg_id: 0x5eed_0000 + seq,
        kind: MessageKind::MESSAGE,
        refers_to: None,
        thread: None,
        payload: Bytes::from_static(payload),
    }
}

fn meta() -> RoomMeta {
    RoomMeta {
        name: "Rust Café ☕".into(),
        topic: "Everything about the borrow checker".into(),
        avatar_url: "https://cdn.example.com/rooms/rust.png".into(),
    }
}

/// One realistic frame per frame type (in type order), plus one extension
/// frame. Request ids and flags vary so they are covered too.
pub(crate) fn samples() -> Vec<Frame> {
    let general = room("general");
    vec![
        Frame::request(
            1,
            Hello {
                min_version: 1,
                max_version: 1,
                token: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl".into(),
                device: device("alice-phone-7f3a"),
                client_name: "confab-ios/2.3.1".into(),
                resume: vec![
                    SubscribeItem {
                        room: room("general"),
                        start: StartAt::From(Seq(1043)),
                    },
                    SubscribeItem {
                        room: room("dm:alice:bob"),
                        start: StartAt::Live,
                    },
                ],
                features: Default::default(),
            },
        ),
        Frame::request(
            1,
            Welcome {
                version: 1,
                session_id: 0x0123_4567_89ab_cdef,
                user: user("alice"),
                server_time_us: T0,
                max_frame_len: DEFAULT_MAX_FRAME_LEN,
                max_payload_len: 64 * 1024,
                max_rooms: 1_000,
                heartbeat_ms: 15_000,
                idle_timeout_ms: 45_000,
                features: Default::default(),
            },
        ),
        Frame::new(Goodbye {
            code: ErrorCode::ShuttingDown,
            message: "server restarting for maintenance".into(),
        }),
        Frame::new(Ping {
            nonce: 0xdead_beef_0000_0001,
        }),
        Frame::new(Pong {
            nonce: 0xdead_beef_0000_0001,
        }),
        Frame::request(
            17,
            ErrorFrame {
                code: ErrorCode::RateLimited,
                retry_after_ms: 1_500,
                message: "too many messages, slow down".into(),
            },
        ),
        Frame::new(Notice {
            level: NoticeLevel::Warning,
            code: ErrorCode::Normal,
            text: "Scheduled maintenance at 02:00 UTC".into(),
        }),
        Frame::request(18, Ack {}),
        Frame::request(
            19,
            RefreshToken {
                token: "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjE3MDAwMDM2MDB9.bmV3".into(),
            },
        ),
        Frame::request(
            20,
            RegisterPush {
                provider: "apns".into(),
                token: "a1b2c3d4e5f60718293a4b5c6d7e8f90".into(),
            },
        ),
        Frame::request(
            21,
            Subscribe {
                items: vec![
                    SubscribeItem {
                        room: general.clone(),
                        start: StartAt::From(Seq(1)),
                    },
                    SubscribeItem {
                        room: room("random"),
                        start: StartAt::Live,
                    },
                ],
            },
        ),
        Frame::request(
            21,
            SubscribeAck {
                results: vec![
                    SubscribeResult {
                        room: general.clone(),
                        code: ErrorCode::Normal,
                        head: Seq(1_042),
                        first: Seq(1),
                    },
                    SubscribeResult {
                        room: room("random"),
                        code: ErrorCode::NotMember,
                        head: Seq(0),
                        first: Seq(0),
                    },
                ],
            },
        ),
        Frame::request(
            22,
            Unsubscribe {
                rooms: vec![room("random"), room("dm:alice:bob")],
            },
        ),
        Frame::new(Lagging {
            room: general.clone(),
            resume_from: Seq(2_001),
            head: Seq(9_876),
        }),
        Frame::new(CaughtUp {
            room: general.clone(),
            seq: Seq(9_876),
        }),
        Frame::request(
            30,
            SyncInbox {
                since: T0,
                after: Some(room("dm:alice:bob")),
                limit: 500,
            },
        ),
        Frame::request(
            30,
            InboxPage {
                rooms: vec![
                    InboxRoom {
                        room: general.clone(),
                        code: ErrorCode::Normal,
                        role: Role::Member,
                        stamp: T0 + 5,
                        head: Seq(1_043),
                        first: Seq(1),
                        read: Seq(1_040),
                        unread: 3,
                        first_unread: Seq(1_041),
                        last: vec![record(1_043, "bob", "laptop", b"see you")],
                    },
                    InboxRoom {
                        room: room("random"),
                        code: ErrorCode::NotMember,
                        role: Role::Member,
                        stamp: T0 + 9,
                        head: Seq(0),
                        first: Seq(0),
                        read: Seq(0),
                        unread: 0,
                        first_unread: Seq(0),
                        last: Vec::new(),
                    },
                ],
                has_more: true,
                cursor: T0 + 10,
            },
        ),
        Frame::new(Gap {
            room: general.clone(),
            from: Seq(5),
            to: Seq(9),
            reason: GapReason::Deleted,
        }),
        Frame::request(
            23,
            Publish {
                room: general.clone(),
                client_msg_id: 0x5eed_0001,
                kind: MessageKind::MESSAGE,
                refers_to: Some(Seq(1_041)),
                thread: Some(Seq(1_000)),
                payload: Bytes::from_static(b"{\"text\":\"hello, world \xf0\x9f\x91\x8b\"}"),
            },
        )
        .with_flags(flags::NO_REPLY),
        Frame::request(
            23,
            PublishAck {
                room: general.clone(),
                client_msg_id: 0x5eed_0001,
                seq: Seq(1_043),
                timestamp_us: T0 + 123,
                duplicate: false,
            },
        ),
        Frame::new(Event {
            room: general.clone(),
            event: EventRecord {
                kind: MessageKind::REACTION,
                refers_to: Some(Seq(1_041)),
                ..record(1_043, "bob", "bob-laptop", "👍".as_bytes())
            },
        }),
        Frame::new(EventBatch {
            room: general.clone(),
            events: vec![
                record(1, "alice", "alice-phone-7f3a", b"{\"text\":\"first!\"}"),
                record(2, "bob", "bob-laptop", b"{\"text\":\"welcome\"}"),
                EventRecord {
                    kind: MessageKind::EDIT,
                    refers_to: Some(Seq(2)),
                    thread: Some(Seq(1)),
                    ..record(3, "bob", "bob-laptop", b"{\"text\":\"welcome :)\"}")
                },
            ],
        })
        .with_flags(flags::REPLAY),
        Frame::request(
            24,
            HistoryRequest {
                room: general.clone(),
                direction: Direction::Before,
                anchor: Seq(1_000),
                limit: 50,
            },
        ),
        Frame::request(
            24,
            HistoryPage {
                room: general.clone(),
                has_more: true,
                first: Seq(1),
                events: vec![
                    record(998, "carol", "carol-web", b"{\"text\":\"lunch?\"}"),
                    EventRecord {
                        kind: MessageKind::DELETE,
                        refers_to: Some(Seq(998)),
                        ..record(999, "carol", "carol-web", b"")
                    },
                ],
            },
        )
        .with_flags(flags::REPLAY),
        Frame::request(
            25,
            CreateRoom {
                kind: RoomKind::Group,
                room: Some(room("rust-cafe")),
                peer: None,
                policy: JoinPolicy::InviteOnly,
                meta: meta(),
                invite: vec![user("bob"), user("carol")],
            },
        ),
        Frame::request(
            25,
            RoomInfo {
                room: room("rust-cafe"),
                kind: RoomKind::Group,
                policy: JoinPolicy::InviteOnly,
                meta: meta(),
                created_at_us: T0,
                head: Seq(0),
                first: Seq(1),
                member_count: 1,
                members: vec![
                    Member {
                        user: user("alice"),
                        role: Role::Owner,
                    },
                    Member {
                        user: user("bob"),
                        role: Role::Invited,
                    },
                    Member {
                        user: user("carol"),
                        role: Role::Invited,
                    },
                ],
            },
        ),
        Frame::request(
            26,
            JoinRoom {
                room: room("rust-cafe"),
            },
        ),
        Frame::request(
            27,
            LeaveRoom {
                room: room("random"),
            },
        ),
        Frame::request(
            28,
            InviteMember {
                room: room("rust-cafe"),
                user: user("dave@example.com"),
            },
        ),
        Frame::request(
            29,
            RemoveMember {
                room: room("rust-cafe"),
                user: user("mallory"),
            },
        ),
        Frame::request(
            30,
            GetRoomInfo {
                room: room("rust-cafe"),
            },
        ),
        Frame::request(
            31,
            UpdateRoom {
                room: room("rust-cafe"),
                meta: RoomMeta {
                    name: "Rust Café".into(),
                    topic: String::new(),
                    avatar_url: String::new(),
                },
            },
        ),
        Frame::request(
            32,
            SetRole {
                room: room("rust-cafe"),
                user: user("bob"),
                role: Role::Admin,
            },
        ),
        Frame::request(
            33,
            ListRooms {
                after: Some(room("general")),
                limit: 100,
            },
        ),
        Frame::request(
            33,
            RoomList {
                rooms: vec![
                    RoomSummary {
                        room: room("random"),
                        kind: RoomKind::Group,
                        name: "Random".into(),
                        head: Seq(77),
                        read: Seq(70),
                        unread: 7,
                        last_activity_us: T0 + 77,
                    },
                    RoomSummary {
                        room: room("dm:alice:bob"),
                        kind: RoomKind::Direct,
                        name: String::new(),
                        head: Seq(0),
                        read: Seq(0),
                        unread: 0,
                        last_activity_us: 0,
                    },
                ],
                has_more: false,
            },
        ),
        Frame::new(Typing {
            room: general.clone(),
            active: true,
        }),
        Frame::new(TypingEvent {
            room: general.clone(),
            users: vec![user("bob"), user("carol")],
        }),
        Frame::request(
            34,
            SetPresence {
                status: PresenceStatus::Away,
            },
        ),
        Frame::request(35, WatchPresence { enabled: true }),
        Frame::request(
            36,
            GetPresence {
                users: vec![user("bob"), user("carol"), user("dave@example.com")],
            },
        ),
        Frame::request(
            36,
            PresenceEvent {
                entries: vec![
                    PresenceEntry {
                        user: user("bob"),
                        status: PresenceStatus::Online,
                        last_seen_us: T0,
                    },
                    PresenceEntry {
                        user: user("carol"),
                        status: PresenceStatus::Offline,
                        last_seen_us: 0,
                    },
                ],
            },
        ),
        Frame::new(Receipt {
            room: general.clone(),
            kind: ReceiptKind::Read,
            seq: Seq(1_043),
        }),
        Frame::new(ReceiptEvent {
            room: general.clone(),
            entries: vec![
                ReceiptEntry {
                    user: user("bob"),
                    device: device("bob-laptop"),
                    kind: ReceiptKind::Delivered,
                    seq: Seq(1_043),
                },
                ReceiptEntry {
                    user: user("bob"),
                    device: device("bob-laptop"),
                    kind: ReceiptKind::Read,
                    seq: Seq(1_040),
                },
            ],
        }),
        Frame::request(
            37,
            GetMessageStatus {
                room: general.clone(),
                seq: Seq(1_043),
            },
        ),
        Frame::request(
            37,
            MessageStatus {
                room: general,
                seq: Seq(1_043),
                state: DeliveryState::Delivered,
                recipients: 2,
                delivered: 2,
                read: 1,
            },
        ),
        Frame {
            request_id: 0,
            flags: 0x80,
            body: Body::Extension {
                frame_type: 0xC3,
                body: Bytes::from_static(b"\x00\x01opaque extension body"),
            },
        },
    ]
}

/// Encodes a frame, checking `encoded_len` and `to_bytes` agree with it.
pub(crate) fn encode(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf).unwrap();
    assert_eq!(
        buf.len(),
        frame.encoded_len().unwrap(),
        "encoded_len of {frame:?}"
    );
    assert_eq!(
        buf.len() - HEADER_LEN,
        frame.body_len().unwrap(),
        "body_len of {frame:?}"
    );
    assert_eq!(frame.to_bytes().unwrap(), buf, "to_bytes of {frame:?}");
    buf.freeze()
}

/// Decodes frames from `bytes` until the buffer holds no complete frame or
/// an error occurs; returns what was decoded and the bytes left over.
pub(crate) fn decode_all(bytes: &[u8], max: u32) -> (Vec<Result<Frame, CodecError>>, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match Frame::decode(&mut buf, max) {
            Ok(Some(frame)) => out.push(Ok(frame)),
            Ok(None) => break,
            Err(e) => {
                out.push(Err(e));
                break;
            }
        }
    }
    (out, buf)
}

/// Parses hex, ignoring whitespace and `_`.
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace() && *b != b'_')
        .collect();
    let pairs = digits.chunks_exact(2);
    assert!(
        pairs.remainder().is_empty(),
        "odd number of hex digits in {s:?}"
    );
    pairs
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
        .collect()
}

/// Formats bytes as lowercase hex, for readable assertion failures.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
