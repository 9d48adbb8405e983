//! Golden byte layouts. Each test spells out, byte by byte, the wire form of a
//! frame as specified by protocol v1, so that the layout can never change
//! silently. The expected bytes were written by hand from the specification,
//! not produced by the codec.
//!
//! Header: u32 body length, u8 type, u8 flags, u32 request id (big-endian).
//! Ids: u8 length + UTF-8. Strings: u16 length + UTF-8. Payloads: u32
//! length + bytes. Lists: u16 count + items. `Option<Seq>`: u64, 0 = none.
//! Optional ids: length 0 = none. bool: one byte. `StartAt`: u8 mode + u64.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::{device, hex, room, to_hex, user};
use confab_codec::*;

/// Asserts `frame` encodes to exactly `expected` (hex, one field per line)
/// and that those bytes decode back to `frame`.
fn golden(frame: Frame, expected: &[&str]) {
    let expected = hex(&expected.concat());
    let mut buf = BytesMut::new();
    frame.encode(&mut buf).unwrap();
    assert_eq!(
        to_hex(&buf),
        to_hex(&expected),
        "layout of {} changed",
        frame.body.name()
    );
    assert_eq!(frame.encoded_len().unwrap(), expected.len());

    let mut buf = BytesMut::from(&expected[..]);
    let decoded = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN)
        .unwrap()
        .unwrap();
    assert_eq!(decoded, frame);
    assert!(buf.is_empty());
}

const GENERAL: &str = "07 67656e6572616c"; // id "general"

#[test]
fn header() {
    let header = Header {
        len: 0x0102_0304,
        frame_type: 0x22,
        flags: 0x02,
        request_id: 0xa0b0_c0d0,
    };
    let mut buf = BytesMut::new();
    header.put(&mut buf);
    assert_eq!(to_hex(&buf), "01020304_22_02_a0b0c0d0".replace('_', ""));
    assert_eq!(Header::peek(&buf), Some(header));
    assert_eq!(Header::peek(&buf[..HEADER_LEN - 1]), None);
    assert_eq!(HEADER_LEN, 10);
}

#[test]
fn hello() {
    golden(
        Frame::request(
            1,
            Hello {
                min_version: 1,
                max_version: 1,
                token: "alice:phone".into(),
                device: device("phone"),
                client_name: "confab-cli/0.1".into(),
                resume: vec![SubscribeItem {
                    room: room("general"),
                    start: StartAt::From(Seq(42)),
                }],
                features: Default::default(),
            },
        ),
        &[
            "0000003a 01 00 00000001",     // header: 58-byte body, Hello, request 1
            "0001",                        // min_version
            "0001",                        // max_version
            "000b 616c6963653a70686f6e65", // token "alice:phone"
            "05 70686f6e65",               // device "phone"
            "000e 636f6e6661622d636c692f302e31", // client_name "confab-cli/0.1"
            "0001",                        // resume: 1 item
            GENERAL,                       //   room
            "01 000000000000002a",         //   start: from 42
        ],
    );
}

#[test]
fn welcome() {
    golden(
        Frame::request(
            1,
            Welcome {
                version: 1,
                session_id: 0x0102_0304_0506_0708,
                user: user("alice"),
                server_time_us: 1_700_000_000_000_000,
                max_frame_len: 1 << 20,
                max_payload_len: 1 << 16,
                max_rooms: 1_000,
                heartbeat_ms: 15_000,
                idle_timeout_ms: 45_000,
                features: Default::default(),
            },
        ),
        &[
            "0000002c 02 00 00000001", // header: 44-byte body, Welcome, request 1
            "0001",                    // version
            "0102030405060708",        // session_id
            "05 616c696365",           // user "alice"
            "00060a24181e4000",        // server_time_us
            "00100000",                // max_frame_len
            "00010000",                // max_payload_len
            "000003e8",                // max_rooms
            "00003a98",                // heartbeat_ms
            "0000afc8",                // idle_timeout_ms
        ],
    );
}

#[test]
fn goodbye() {
    golden(
        Frame::new(Goodbye {
            code: ErrorCode::ShuttingDown,
            message: "bye".into(),
        }),
        &[
            "00000007 03 00 00000000", // header
            "002a",                    // code 42
            "0003 627965",             // message "bye"
        ],
    );
}

#[test]
fn ping_and_pong() {
    golden(
        Frame::new(Ping {
            nonce: 0x0102_0304_0506_0708,
        }),
        &["00000008 04 00 00000000", "0102030405060708"],
    );
    golden(
        Frame::request(0xffff_fffe, Pong { nonce: 1 }),
        &["00000008 05 00 fffffffe", "0000000000000001"],
    );
}

#[test]
fn error_frame() {
    golden(
        Frame::request(
            9,
            ErrorFrame {
                code: ErrorCode::RateLimited,
                retry_after_ms: 250,
                message: "slow down".into(),
            },
        ),
        &[
            "00000011 06 00 00000009", // header: 17-byte body, Error, request 9
            "001e",                    // code 30
            "000000fa",                // retry_after_ms
            "0009 736c6f7720646f776e", // message "slow down"
        ],
    );
}

#[test]
fn notice_with_multibyte_utf8() {
    golden(
        Frame::new(Notice {
            level: NoticeLevel::Info,
            code: ErrorCode::Normal,
            text: "café".into(),
        }),
        &[
            "0000000a 07 00 00000000",
            "01",              // level Info
            "0000",            // code Normal
            "0005 636166c3a9", // text "café": the length counts bytes
        ],
    );
}

#[test]
fn ack() {
    golden(Frame::request(13, Ack {}), &["00000000 08 00 0000000d"]);
}

#[test]
fn subscribe() {
    golden(
        Frame::request(
            15,
            Subscribe {
                items: vec![
                    SubscribeItem {
                        room: room("general"),
                        start: StartAt::From(Seq(43)),
                    },
                    SubscribeItem {
                        room: room("secret"),
                        start: StartAt::Live,
                    },
                ],
            },
        ),
        &[
            "00000023 10 00 0000000f",
            "0002", // 2 items
            GENERAL,
            "01 000000000000002b", // from 43
            "06 736563726574",
            "00 0000000000000000", // "secret", live
        ],
    );
}

#[test]
fn subscribe_ack() {
    golden(
        Frame::request(
            5,
            SubscribeAck {
                results: vec![
                    SubscribeResult {
                        room: room("general"),
                        code: ErrorCode::Normal,
                        head: Seq(42),
                        first: Seq(1),
                    },
                    SubscribeResult {
                        room: room("secret"),
                        code: ErrorCode::NotMember,
                        head: Seq(0),
                        first: Seq(0),
                    },
                ],
            },
        ),
        &[
            "00000035 11 00 00000005",
            "0002", // 2 results
            GENERAL,
            "0000",             // Normal
            "000000000000002a", // head
            "0000000000000001", // first
            "06 736563726574",  // "secret"
            "0016",             // NotMember (22)
            "0000000000000000",
            "0000000000000000",
        ],
    );
}

#[test]
fn publish() {
    golden(
        Frame::request(
            7,
            Publish {
                room: room("general"),
                client_msg_id: 3,
                kind: MessageKind::MESSAGE,
                refers_to: Some(Seq(41)),
                thread: None,
                payload: Bytes::from_static(b"hi!"),
            },
        )
        .with_flags(flags::NO_REPLY),
        &[
            "00000028 20 01 00000007", // header: 40-byte body, Publish, NO_REPLY, request 7
            GENERAL,
            "0000000000000003", // client_msg_id
            "01",               // kind MESSAGE
            "0000000000000029", // refers_to 41
            "0000000000000000", // thread: none
            "00000003 686921",  // payload "hi!"
        ],
    );
}

#[test]
fn event() {
    golden(
        Frame::new(Event {
            room: room("general"),
            event: EventRecord {
                seq: Seq(42),
                timestamp_us: 1_700_000_000_000_001,
                sender: user("alice"),
                device: device("phone"),
                client_msg_id: 3,
                kind: MessageKind::MESSAGE,
                refers_to: Some(Seq(41)),
                thread: None,
                payload: Bytes::from_static(b"hi!"),
            },
        }),
        &[
            "00000044 22 00 00000000", // header: 68-byte body, Event
            GENERAL,
            "000000000000002a", // seq
            "00060a24181e4001", // timestamp_us
            "05 616c696365",    // sender "alice"
            "05 70686f6e65",    // device "phone"
            "0000000000000003", // client_msg_id
            "01",               // kind
            "0000000000000029", // refers_to
            "0000000000000000", // thread
            "00000003 686921",  // payload
        ],
    );
}

#[test]
fn event_batch() {
    golden(
        Frame::new(EventBatch {
            room: room("general"),
            events: vec![
                EventRecord {
                    seq: Seq(1),
                    timestamp_us: 1_000,
                    sender: user("bob"),
                    device: device("d1"),
                    client_msg_id: 0,
                    kind: MessageKind::MESSAGE,
                    refers_to: None,
                    thread: None,
                    payload: Bytes::from_static(b"a"),
                },
                EventRecord {
                    seq: Seq(2),
                    timestamp_us: 2_000,
                    sender: user("alice"),
                    device: device("phone"),
                    client_msg_id: 9,
                    kind: MessageKind::REACTION,
                    refers_to: Some(Seq(1)),
                    thread: Some(Seq(1)),
                    payload: Bytes::from_static(b"+1"),
                },
            ],
        })
        .with_flags(flags::REPLAY),
        &[
            "0000007a 23 02 00000000", // header: 122-byte body, EventBatch, REPLAY
            GENERAL,
            "0002", // 2 events
            // event 1
            "0000000000000001 00000000000003e8",
            "03 626f62 02 6431",
            "0000000000000000 01 0000000000000000 0000000000000000",
            "00000001 61",
            // event 2
            "0000000000000002 00000000000007d0",
            "05 616c696365 05 70686f6e65",
            "0000000000000009 04 0000000000000001 0000000000000001",
            "00000002 2b31",
        ],
    );
}

#[test]
fn history_request() {
    golden(
        Frame::request(
            11,
            HistoryRequest {
                room: room("general"),
                direction: Direction::Before,
                anchor: Seq(100),
                limit: 50,
            },
        ),
        &[
            "00000013 24 00 0000000b",
            GENERAL,
            "01",               // Before
            "0000000000000064", // anchor 100
            "0032",             // limit 50
        ],
    );
}

#[test]
fn create_room() {
    golden(
        Frame::request(
            12,
            CreateRoom {
                kind: RoomKind::Group,
                room: Some(room("team")),
                peer: None,
                policy: JoinPolicy::InviteOnly,
                meta: RoomMeta {
                    name: "Team".into(),
                    topic: String::new(),
                    avatar_url: String::new(),
                },
                invite: vec![user("bob"), user("carol")],
            },
        ),
        &[
            "0000001e 30 00 0000000c",
            "02",                           // Group
            "04 7465616d",                  // room "team"
            "00",                           // peer: none
            "02",                           // InviteOnly
            "0004 5465616d",                // name "Team"
            "0000",                         // topic ""
            "0000",                         // avatar_url ""
            "0002 03 626f62 05 6361726f6c", // invite bob, carol
        ],
    );
    golden(
        Frame::request(
            14,
            CreateRoom {
                kind: RoomKind::Direct,
                room: None,
                peer: Some(user("bob")),
                policy: JoinPolicy::Open,
                meta: RoomMeta {
                    name: String::new(),
                    topic: String::new(),
                    avatar_url: String::new(),
                },
                invite: vec![],
            },
        ),
        &[
            "0000000f 30 00 0000000e",
            "01",             // Direct
            "00",             // room: none
            "03 626f62",      // peer "bob"
            "01",             // Open
            "0000 0000 0000", // empty meta
            "0000",           // no invites
        ],
    );
}

#[test]
fn list_rooms() {
    golden(
        Frame::request(
            16,
            ListRooms {
                after: None,
                limit: 20,
            },
        ),
        &["00000003 39 00 00000010", "00", "0014"],
    );
}

#[test]
fn typing() {
    golden(
        Frame::new(Typing {
            room: room("general"),
            active: true,
        }),
        &["00000009 40 00 00000000", GENERAL, "01"],
    );
}

#[test]
fn receipt() {
    golden(
        Frame::new(Receipt {
            room: room("general"),
            kind: ReceiptKind::Read,
            seq: Seq(42),
        }),
        &[
            "00000011 50 00 00000000",
            GENERAL,
            "02",               // Read
            "000000000000002a", // seq 42
        ],
    );
}

#[test]
fn extension_keeps_type_flags_and_body() {
    golden(
        Frame {
            request_id: 3,
            flags: 0x40,
            body: Body::Extension {
                frame_type: 0x80,
                body: Bytes::from_static(b"abc"),
            },
        },
        &["00000003 80 40 00000003", "616263"],
    );
}

#[test]
fn error_code_values_are_stable() {
    let expected: &[(ErrorCode, u16, &str)] = &[
        (ErrorCode::Normal, 0, "Normal"),
        (ErrorCode::MalformedFrame, 1, "MalformedFrame"),
        (ErrorCode::FrameTooLarge, 2, "FrameTooLarge"),
        (ErrorCode::UnsupportedVersion, 3, "UnsupportedVersion"),
        (ErrorCode::UnknownFrameType, 4, "UnknownFrameType"),
        (ErrorCode::ProtocolViolation, 5, "ProtocolViolation"),
        (ErrorCode::InvalidRequest, 6, "InvalidRequest"),
        (ErrorCode::Unsupported, 7, "Unsupported"),
        (ErrorCode::Unauthenticated, 10, "Unauthenticated"),
        (ErrorCode::TokenExpired, 11, "TokenExpired"),
        (ErrorCode::Forbidden, 12, "Forbidden"),
        (ErrorCode::NoSuchRoom, 20, "NoSuchRoom"),
        (ErrorCode::RoomExists, 21, "RoomExists"),
        (ErrorCode::NotMember, 22, "NotMember"),
        (ErrorCode::TooManyRooms, 23, "TooManyRooms"),
        (ErrorCode::RoomFull, 24, "RoomFull"),
        (ErrorCode::HistoryTruncated, 25, "HistoryTruncated"),
        (ErrorCode::NoSuchMessage, 26, "NoSuchMessage"),
        (ErrorCode::RateLimited, 30, "RateLimited"),
        (ErrorCode::PayloadTooLarge, 31, "PayloadTooLarge"),
        (ErrorCode::SlowConsumer, 40, "SlowConsumer"),
        (ErrorCode::Timeout, 41, "Timeout"),
        (ErrorCode::ShuttingDown, 42, "ShuttingDown"),
        (ErrorCode::ServerBusy, 43, "ServerBusy"),
        (ErrorCode::SessionReplaced, 44, "SessionReplaced"),
        (ErrorCode::Internal, 50, "Internal"),
        (ErrorCode::StorageFull, 51, "StorageFull"),
        (ErrorCode::Unknown, 0xffff, "Unknown"),
    ];
    assert_eq!(ErrorCode::ALL.len(), expected.len());
    for (&code, &(want, value, name)) in ErrorCode::ALL.iter().zip(expected) {
        assert_eq!(code, want);
        assert_eq!(code as u16, value);
        assert_eq!(code.as_str(), name);
        assert_eq!(ErrorCode::from_u16(value), code);
    }
}

#[test]
fn enum_values_are_stable() {
    fn check<T: Copy + std::fmt::Debug + PartialEq>(all: &[T], want: &[T], as_u8: fn(T) -> u8) {
        assert_eq!(all, want);
        let values: Vec<u8> = all.iter().map(|&v| as_u8(v)).collect();
        let expected: Vec<u8> = (1..=u8::try_from(all.len()).unwrap()).collect();
        assert_eq!(values, expected, "{all:?} are numbered 1, 2, ...");
    }
    check(
        NoticeLevel::ALL,
        &[NoticeLevel::Info, NoticeLevel::Warning],
        |v| v as u8,
    );
    check(
        Direction::ALL,
        &[Direction::Before, Direction::After],
        |v| v as u8,
    );
    check(RoomKind::ALL, &[RoomKind::Direct, RoomKind::Group], |v| {
        v as u8
    });
    check(
        JoinPolicy::ALL,
        &[JoinPolicy::Open, JoinPolicy::InviteOnly],
        |v| v as u8,
    );
    check(
        Role::ALL,
        &[Role::Owner, Role::Admin, Role::Member, Role::Invited],
        |v| v as u8,
    );
    check(
        PresenceStatus::ALL,
        &[
            PresenceStatus::Online,
            PresenceStatus::Away,
            PresenceStatus::Offline,
        ],
        |v| v as u8,
    );
    check(
        ReceiptKind::ALL,
        &[ReceiptKind::Delivered, ReceiptKind::Read],
        |v| v as u8,
    );
    check(
        DeliveryState::ALL,
        &[
            DeliveryState::Sent,
            DeliveryState::Delivered,
            DeliveryState::Read,
        ],
        |v| v as u8,
    );
    let kinds = [
        (MessageKind::MESSAGE, 1),
        (MessageKind::EDIT, 2),
        (MessageKind::DELETE, 3),
        (MessageKind::REACTION, 4),
        (MessageKind::SYSTEM, 5),
        (MessageKind::MEMBER_JOINED, 6),
        (MessageKind::MEMBER_LEFT, 7),
        (MessageKind::MEMBER_INVITED, 8),
        (MessageKind::MEMBER_REMOVED, 9),
        (MessageKind::ROOM_UPDATED, 10),
        (MessageKind::FIRST_CUSTOM, 128),
    ];
    for (kind, value) in kinds {
        assert_eq!(kind.0, value);
    }
}

#[test]
fn protocol_constants() {
    assert_eq!(PROTOCOL_VERSION, 2);
    assert_eq!(MIN_PROTOCOL_VERSION, 1);
    assert_eq!(DEFAULT_MAX_FRAME_LEN, 1_048_576);
    assert_eq!(EXTENSION_TYPE_BASE, 0x80);
    assert_eq!(flags::NO_REPLY, 0x01);
    assert_eq!(flags::REPLAY, 0x02);
}
