//! Malformed input: every kind of bad frame gives a typed `CodecError`,
//! never a panic, and hostile lengths are rejected before anything is
//! buffered or allocated.

#![allow(clippy::unwrap_used)]

mod common;

use bytes::{BufMut, Bytes, BytesMut};
use common::{decode_all, encode, hex, samples};
use confab_codec::*;

/// A frame with the given type, flags 0, request id 1 and raw body bytes.
fn raw_frame(frame_type: u8, body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    Header {
        len: u32::try_from(body.len()).unwrap(),
        frame_type,
        flags: 0,
        request_id: 1,
    }
    .put(&mut buf);
    buf.extend_from_slice(body);
    buf
}

/// Decodes one raw frame that must be rejected, checks the whole frame was
/// consumed, and returns the error.
fn reject(frame_type: u8, body: &[u8]) -> CodecError {
    let mut buf = raw_frame(frame_type, body);
    let err = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap_err();
    assert!(buf.is_empty(), "a malformed frame is consumed whole");
    err
}

/// Decodes one raw frame that must be accepted.
fn accept(frame_type: u8, body: &[u8]) -> Frame {
    let mut buf = raw_frame(frame_type, body);
    let frame = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN)
        .unwrap()
        .unwrap();
    assert!(buf.is_empty());
    frame
}

// ---------------------------------------------------------------------------
// Frame length

#[test]
fn oversized_length_is_rejected_from_the_header_alone() {
    for (declared, max) in [
        (1_025, 1_024),
        (DEFAULT_MAX_FRAME_LEN + 1, DEFAULT_MAX_FRAME_LEN),
        (u32::MAX, DEFAULT_MAX_FRAME_LEN),
        (u32::MAX, u32::MAX - 1),
        (1, 0),
    ] {
        let mut buf = BytesMut::new();
        Header {
            len: declared,
            frame_type: frame_type::Publish,
            flags: 0,
            request_id: 7,
        }
        .put(&mut buf);
        assert_eq!(buf.len(), HEADER_LEN, "only the header has arrived");
        let err = Frame::decode(&mut buf, max).unwrap_err();
        assert_eq!(
            err,
            CodecError::FrameTooLarge {
                len: u64::from(declared),
                max,
            }
        );
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        assert_eq!(buf.len(), HEADER_LEN, "nothing consumed");
    }
}

#[test]
fn header_check() {
    let header = |len| Header {
        len,
        frame_type: 1,
        flags: 0,
        request_id: 0,
    };
    assert_eq!(header(100).check(100), Ok(()));
    assert_eq!(
        header(101).check(100),
        Err(CodecError::FrameTooLarge { len: 101, max: 100 })
    );
    assert_eq!(header(u32::MAX).check(u32::MAX), Ok(()));
}

#[test]
fn length_at_the_maximum_is_accepted() {
    let frame = Frame::new(Ping { nonce: 1 });
    let mut buf = BytesMut::new();
    frame.encode(&mut buf).unwrap();
    assert_eq!(Frame::decode(&mut buf, 8), Ok(Some(frame)));
}

#[test]
fn a_huge_declared_length_below_the_maximum_just_waits() {
    let mut buf = BytesMut::new();
    Header {
        len: u32::MAX,
        frame_type: frame_type::Ping,
        flags: 0,
        request_id: 0,
    }
    .put(&mut buf);
    buf.put_u64(1);
    assert_eq!(Frame::decode(&mut buf, u32::MAX), Ok(None));
    assert_eq!(buf.len(), HEADER_LEN + 8);
}

// ---------------------------------------------------------------------------
// Frame types

#[test]
fn unknown_mandatory_type() {
    for t in [0x00, 0x0B, 0x0F, 0x18, 0x26, 0x54, 0x7F] {
        let err = reject(t, b"whatever");
        assert_eq!(err, CodecError::UnknownFrameType { frame_type: t });
        assert_eq!(err.code(), ErrorCode::UnknownFrameType);
    }
}

#[test]
fn unknown_extension_type_is_skippable() {
    for t in [0x80, 0x81, 0xC0, 0xFE, 0xFF] {
        let mut buf = raw_frame(t, b"\x01\x02\x03");
        buf.extend_from_slice(&encode(&Frame::new(Ping { nonce: 5 })));
        let ext = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN)
            .unwrap()
            .unwrap();
        assert_eq!(ext.request_id, 1);
        assert_eq!(
            ext.body,
            Body::Extension {
                frame_type: t,
                body: Bytes::from_static(b"\x01\x02\x03"),
            }
        );
        assert_eq!(ext.body.frame_type(), t);
        assert_eq!(ext.body.name(), "Extension");
        // The frame after it is intact.
        assert_eq!(
            Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN),
            Ok(Some(Frame::new(Ping { nonce: 5 })))
        );
    }
    // An empty extension body is fine too.
    assert_eq!(
        accept(0x90, b"").body,
        Body::Extension {
            frame_type: 0x90,
            body: Bytes::new(),
        }
    );
}

// ---------------------------------------------------------------------------
// Strings and ids

#[test]
fn bad_utf8_in_a_string() {
    // Goodbye { code, message }: message starts at offset 2.
    let err = reject(frame_type::Goodbye, &hex("0000 0002 c328"));
    assert_eq!(
        err,
        CodecError::InvalidUtf8 {
            field: "message",
            offset: 2,
        }
    );
    assert_eq!(err.code(), ErrorCode::MalformedFrame);

    // Hello: token at offset 4, a lone continuation byte.
    let err = reject(
        frame_type::Hello,
        &hex("0001 0001 0001 80 05 7068 6f6e 65 0000 0000"),
    );
    assert_eq!(
        err,
        CodecError::InvalidUtf8 {
            field: "token",
            offset: 4,
        }
    );

    // RoomMeta.topic of UpdateRoom: an overlong encoding of '/'.
    let err = reject(
        frame_type::UpdateRoom,
        &hex("04 7465616d 0001 41 0002 c0af 0000"),
    );
    assert_eq!(
        err,
        CodecError::InvalidUtf8 {
            field: "topic",
            offset: 8,
        }
    );
}

#[test]
fn bad_utf8_in_an_id() {
    // JoinRoom { room }: a UTF-16 surrogate encoded in UTF-8.
    let err = reject(frame_type::JoinRoom, &hex("03 eda080"));
    assert_eq!(
        err,
        CodecError::InvalidUtf8 {
            field: "room",
            offset: 0,
        }
    );
    // An optional id (ListRooms.after).
    let err = reject(frame_type::ListRooms, &hex("01 ff 0014"));
    assert_eq!(
        err,
        CodecError::InvalidUtf8 {
            field: "after",
            offset: 0,
        }
    );
}

#[test]
fn invalid_ids() {
    // Empty room id.
    assert_eq!(
        reject(frame_type::JoinRoom, &hex("00")),
        CodecError::InvalidId { field: "room" }
    );
    // Control characters.
    assert_eq!(
        reject(frame_type::JoinRoom, &hex("03 61 0a 62")),
        CodecError::InvalidId { field: "room" }
    );
    assert_eq!(
        reject(frame_type::JoinRoom, &hex("02 61 7f")),
        CodecError::InvalidId { field: "room" }
    );
    // U+0085 (NEL) is a control character too.
    assert_eq!(
        reject(frame_type::JoinRoom, &hex("03 61 c285")),
        CodecError::InvalidId { field: "room" }
    );
    // 129 bytes: one more than a room id may have.
    let mut body = vec![129u8];
    body.extend(std::iter::repeat_n(b'r', 129));
    assert_eq!(
        reject(frame_type::JoinRoom, &body),
        CodecError::InvalidId { field: "room" }
    );
    // 65 bytes: one more than a device id may have (Hello.device).
    let mut body = hex("0001 0001 0000");
    body.push(65);
    body.extend(std::iter::repeat_n(b'd', 65));
    body.extend(hex("0000 0000"));
    assert_eq!(
        reject(frame_type::Hello, &body),
        CodecError::InvalidId { field: "device" }
    );
    // A user id inside a list (TypingEvent.users).
    assert_eq!(
        reject(frame_type::TypingEvent, &hex("01 61 0002 01 62 01 0a")),
        CodecError::InvalidId { field: "users" }
    );
    // An optional id that is present but invalid (CreateRoom.peer).
    assert_eq!(
        reject(
            frame_type::CreateRoom,
            &hex("01 00 01 09 01 0000 0000 0000 0000")
        ),
        CodecError::InvalidId { field: "peer" }
    );
    assert_eq!(
        CodecError::InvalidId { field: "room" }.code(),
        ErrorCode::MalformedFrame
    );
}

#[test]
fn ids_at_their_maximum_length_are_accepted() {
    let mut body = vec![128u8];
    body.extend(std::iter::repeat_n(b'r', 128));
    let frame = accept(frame_type::JoinRoom, &body);
    let Body::JoinRoom(join) = frame.body else {
        panic!("not a JoinRoom: {frame:?}");
    };
    assert_eq!(join.room.as_str().len(), RoomId::MAX_LEN);
}

#[test]
fn id_constructors_validate() {
    assert!(RoomId::new("").is_err());
    assert!(RoomId::new("a\tb").is_err());
    assert!(RoomId::new("r".repeat(128)).is_ok());
    assert!(RoomId::new("r".repeat(129)).is_err());
    assert!(UserId::new("u".repeat(128)).is_ok());
    assert!(UserId::new("u".repeat(129)).is_err());
    assert!(DeviceId::new("d".repeat(64)).is_ok());
    assert_eq!(
        DeviceId::new("d".repeat(65)),
        Err(CodecError::InvalidId { field: "device" })
    );
    // Non-ASCII is fine; the limit counts bytes.
    assert!(UserId::new("ü".repeat(64)).is_ok());
    assert!(UserId::new("ü".repeat(65)).is_err());
    let id: RoomId = "general".parse().unwrap();
    assert_eq!(id.to_string(), "general");
    assert_eq!(id.as_bytes(), b"general");
    assert_eq!(RoomId::try_from("general").unwrap(), id);
    assert_eq!(RoomId::try_from(String::from("general")).unwrap(), id);
    assert_eq!(AsRef::<str>::as_ref(&id), "general");
}

#[test]
fn empty_optional_ids_are_none() {
    let frame = accept(frame_type::ListRooms, &hex("00 0014"));
    assert_eq!(
        frame.body,
        Body::ListRooms(ListRooms {
            after: None,
            limit: 20,
        })
    );
}

// ---------------------------------------------------------------------------
// Short fields and lists

#[test]
fn short_fixed_fields() {
    // Ping needs 8 bytes.
    assert_eq!(
        reject(frame_type::Ping, &hex("01020304050607")),
        CodecError::Truncated {
            field: "nonce",
            offset: 0,
        }
    );
    // Welcome cut in the middle of server_time_us (at offset 2+8+6 = 16).
    assert_eq!(
        reject(
            frame_type::Welcome,
            &hex("0001 0102030405060708 05 616c696365 0000")
        ),
        CodecError::Truncated {
            field: "server_time_us",
            offset: 16,
        }
    );
    // An empty body where fields are expected.
    assert!(matches!(
        reject(frame_type::Receipt, b""),
        CodecError::Truncated { field: "room", .. }
    ));
}

#[test]
fn length_prefix_longer_than_the_body() {
    // A string that claims 5 bytes with 2 left.
    assert!(matches!(
        reject(frame_type::RefreshToken, &hex("0005 6162")),
        CodecError::Truncated { field: "token", .. }
    ));
    // An id that claims 255 bytes.
    assert!(matches!(
        reject(frame_type::JoinRoom, &hex("ff 6162")),
        CodecError::Truncated { field: "room", .. }
    ));
    // A payload that claims 4 GiB.
    let mut body = hex("07 67656e6572616c 0000000000000001 01 0000000000000000 0000000000000000");
    body.extend(hex("ffffffff 686921"));
    assert_eq!(
        reject(frame_type::Publish, &body),
        CodecError::Truncated {
            field: "payload",
            offset: 33,
        }
    );
}

/// A count that cannot fit in the rest of the body is rejected at the
/// count itself (offset of the count), before a vector is allocated for it
/// and before any item is read.
#[test]
fn list_count_larger_than_the_body() {
    // 65535 rooms, 2 bytes left (one room needs at least 2).
    assert_eq!(
        reject(frame_type::Unsubscribe, &hex("ffff 0161")),
        CodecError::Truncated {
            field: "rooms",
            offset: 0,
        }
    );
    // Two rooms announced, one present: still rejected at the count.
    assert_eq!(
        reject(frame_type::Unsubscribe, &hex("0002 0161")),
        CodecError::Truncated {
            field: "rooms",
            offset: 0,
        }
    );
    // 65535 event records in an EventBatch whose body is tiny.
    assert_eq!(
        reject(frame_type::EventBatch, &hex("07 67656e6572616c ffff 00")),
        CodecError::Truncated {
            field: "events",
            offset: 8,
        }
    );
    // The same with a large body: each record needs at least 57 bytes.
    let mut body = hex("07 67656e6572616c ffff");
    body.resize(body.len() + 57 * 1000, 0);
    assert_eq!(
        reject(frame_type::EventBatch, &body),
        CodecError::Truncated {
            field: "events",
            offset: 8,
        }
    );
    // A count whose items fit by size but are malformed is an item error.
    assert_eq!(
        reject(frame_type::Unsubscribe, &hex("0002 0161 00 00")),
        CodecError::InvalidId { field: "rooms" }
    );
}

#[test]
fn empty_lists_are_fine() {
    let frame = accept(frame_type::Unsubscribe, &hex("0000"));
    assert_eq!(frame.body, Body::Unsubscribe(Unsubscribe { rooms: vec![] }));
}

// ---------------------------------------------------------------------------
// Enumerations and booleans

#[test]
fn bad_enum_values() {
    // HistoryRequest.direction = 3.
    assert_eq!(
        reject(
            frame_type::HistoryRequest,
            &hex("07 67656e6572616c 03 0000000000000000 0032")
        ),
        CodecError::InvalidValue {
            field: "direction",
            offset: 8,
            value: 3,
        }
    );
    // Direction 0 is not defined either.
    assert!(matches!(
        reject(
            frame_type::HistoryRequest,
            &hex("07 67656e6572616c 00 0000000000000000 0032")
        ),
        CodecError::InvalidValue {
            field: "direction",
            value: 0,
            ..
        }
    ));
    // SetPresence.status = 0xff.
    assert_eq!(
        reject(frame_type::SetPresence, &hex("ff")),
        CodecError::InvalidValue {
            field: "status",
            offset: 0,
            value: 255,
        }
    );
    // SetRole.role = 5.
    assert_eq!(
        reject(frame_type::SetRole, &hex("01 72 01 75 05")),
        CodecError::InvalidValue {
            field: "role",
            offset: 4,
            value: 5,
        }
    );
    // StartAt mode 2 in Subscribe.
    assert_eq!(
        reject(
            frame_type::Subscribe,
            &hex("0001 01 72 02 0000000000000001")
        ),
        CodecError::InvalidValue {
            field: "start",
            offset: 4,
            value: 2,
        }
    );
    assert_eq!(
        CodecError::InvalidValue {
            field: "x",
            offset: 0,
            value: 0
        }
        .code(),
        ErrorCode::MalformedFrame
    );
}

#[test]
fn bad_bool() {
    assert_eq!(
        reject(frame_type::WatchPresence, &hex("02")),
        CodecError::InvalidValue {
            field: "enabled",
            offset: 0,
            value: 2,
        }
    );
    assert_eq!(
        reject(frame_type::Typing, &hex("01 72 ff")),
        CodecError::InvalidValue {
            field: "active",
            offset: 2,
            value: 255,
        }
    );
}

#[test]
fn open_value_sets_are_not_errors() {
    // An error code this version does not know maps to Unknown.
    let frame = accept(frame_type::Goodbye, &hex("1234 0000"));
    assert_eq!(
        frame.body,
        Body::Goodbye(Goodbye {
            code: ErrorCode::Unknown,
            message: String::new(),
        })
    );
    // Message kinds are an open set.
    let frame = accept(
        frame_type::Publish,
        &hex("01 72 0000000000000000 c8 0000000000000000 0000000000000000 00000000"),
    );
    let Body::Publish(publish) = frame.body else {
        panic!("not a Publish: {frame:?}");
    };
    assert_eq!(publish.kind, MessageKind(200));
    assert!(publish.kind.client_publishable());
    // StartAt::Live ignores its sequence.
    let frame = accept(
        frame_type::Subscribe,
        &hex("0001 01 72 00 00000000000000ff"),
    );
    assert_eq!(
        frame.body,
        Body::Subscribe(Subscribe {
            items: vec![SubscribeItem {
                room: RoomId::new("r").unwrap(),
                start: StartAt::Live,
            }],
        })
    );
}

#[test]
fn message_kind_helpers() {
    let publishable: Vec<u8> = (0..=255u8)
        .filter(|&k| MessageKind(k).client_publishable())
        .collect();
    let mut expected = vec![1, 2, 3, 4];
    expected.extend(128..=255);
    assert_eq!(publishable, expected);
    let needs: Vec<u8> = (0..=255u8)
        .filter(|&k| MessageKind(k).needs_reference())
        .collect();
    assert_eq!(needs, [2, 3, 4]);
}

// ---------------------------------------------------------------------------
// Forward compatibility

/// `Hello` and `Welcome` end with an appended field (`features`), written
/// only when not empty: give it a value so that the bytes appended below
/// come after it.
fn with_features(mut f: Frame) -> Frame {
    match &mut f.body {
        Body::Hello(h) => h.features = Features::ZSTD,
        Body::Welcome(w) => w.features = Features::ZSTD,
        _ => {}
    }
    f
}

#[test]
fn an_absent_or_short_features_field_reads_as_none() {
    for frame in samples() {
        if !matches!(frame.body, Body::Hello(_) | Body::Welcome(_)) {
            continue;
        }
        let bytes = encode(&frame);
        for extra in [&b""[..], b"\x01", b"\x01\x02\x03"] {
            let mut body = bytes[HEADER_LEN..].to_vec();
            body.extend_from_slice(extra);
            let mut buf = BytesMut::new();
            Header {
                len: u32::try_from(body.len()).unwrap(),
                ..Header::peek(&bytes).unwrap()
            }
            .put(&mut buf);
            buf.extend_from_slice(&body);
            let got = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN)
                .unwrap()
                .unwrap();
            let features = match got.body {
                Body::Hello(h) => h.features,
                Body::Welcome(w) => w.features,
                _ => unreachable!(),
            };
            assert_eq!(features, Features::NONE);
        }
    }
}

#[test]
fn trailing_bytes_are_ignored() {
    for frame in samples() {
        if matches!(frame.body, Body::Extension { .. }) {
            continue;
        }
        let frame = with_features(frame);
        let bytes = encode(&frame);
        let mut body = bytes[HEADER_LEN..].to_vec();
        body.extend_from_slice(b"\x00\x01future fields\xff");
        let mut buf = BytesMut::new();
        Header {
            len: u32::try_from(body.len()).unwrap(),
            ..Header::peek(&bytes).unwrap()
        }
        .put(&mut buf);
        buf.extend_from_slice(&body);
        // A second frame follows, to check the extra bytes were consumed.
        buf.extend_from_slice(&bytes);
        assert_eq!(
            Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN)
                .unwrap()
                .as_ref(),
            Some(&frame)
        );
        assert_eq!(
            Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN)
                .unwrap()
                .as_ref(),
            Some(&frame)
        );
        assert!(buf.is_empty());
    }
}

#[test]
fn unknown_flag_bits_are_kept() {
    let frame = Frame::new(Ping { nonce: 9 }).with_flags(0xfc);
    let bytes = encode(&frame);
    assert_eq!(bytes[5], 0xfc);
    let mut buf = BytesMut::from(&bytes[..]);
    let decoded = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN)
        .unwrap()
        .unwrap();
    assert_eq!(decoded.flags, 0xfc);
}

// ---------------------------------------------------------------------------
// Stream behaviour around errors

#[test]
fn frames_after_a_malformed_one_still_decode() {
    let mut buf = raw_frame(frame_type::Ping, b"short");
    buf.extend_from_slice(&encode(&Frame::new(Pong { nonce: 2 })));
    assert!(matches!(
        Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN),
        Err(CodecError::Truncated { .. })
    ));
    assert_eq!(
        Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN),
        Ok(Some(Frame::new(Pong { nonce: 2 })))
    );
}

#[test]
fn an_empty_buffer_is_incomplete() {
    let mut buf = BytesMut::new();
    assert_eq!(Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN), Ok(None));
    assert_eq!(Frame::decode(&mut buf, 0), Ok(None));
}

#[test]
fn error_messages_are_readable() {
    let cases = [
        (
            CodecError::FrameTooLarge { len: 9, max: 8 },
            "frame body of 9 bytes exceeds the limit of 8 bytes",
        ),
        (
            CodecError::UnknownFrameType { frame_type: 0x7f },
            "unknown frame type 0x7f",
        ),
        (
            CodecError::Truncated {
                field: "room",
                offset: 3,
            },
            "field `room` is truncated at body offset 3",
        ),
        (
            CodecError::InvalidUtf8 {
                field: "token",
                offset: 4,
            },
            "field `token` at body offset 4 is not valid UTF-8",
        ),
        (
            CodecError::InvalidId { field: "user" },
            "field `user` is not a valid identifier",
        ),
    ];
    for (err, text) in cases {
        assert_eq!(err.to_string(), text);
    }
}

// ---------------------------------------------------------------------------
// Encoding errors

#[test]
fn encoding_fails_cleanly_on_oversized_fields() {
    let too_long = "x".repeat(usize::from(u16::MAX) + 1);
    let frame = Frame::new(RefreshToken {
        token: too_long.clone(),
    });
    let mut buf = BytesMut::from(&b"keep"[..]);
    assert_eq!(
        frame.encode(&mut buf),
        Err(CodecError::FieldTooLong {
            field: "token",
            len: too_long.len(),
            max: 65_535,
        })
    );
    assert_eq!(&buf[..], b"keep", "nothing is written on failure");
    assert!(frame.encoded_len().is_err());
    assert!(frame.to_bytes().is_err());

    // The longest string that fits is fine.
    let frame = Frame::new(RefreshToken {
        token: "x".repeat(usize::from(u16::MAX)),
    });
    let bytes = encode(&frame);
    let mut buf = BytesMut::from(&bytes[..]);
    assert_eq!(
        Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN),
        Ok(Some(frame))
    );

    // A list with more than 65535 items.
    let frame = Frame::new(Unsubscribe {
        rooms: vec![RoomId::new("r").unwrap(); 65_536],
    });
    let mut buf = BytesMut::new();
    assert!(matches!(
        frame.encode(&mut buf),
        Err(CodecError::FieldTooLong { field: "rooms", .. })
    ));
    assert!(buf.is_empty());
}

#[test]
fn encoding_rejects_some_seq_zero() {
    // Option<Seq> encodes None as 0, so Some(Seq(0)) has no wire form.
    let frame = Frame::new(Publish {
        room: RoomId::new("r").unwrap(),
        client_msg_id: 0,
        kind: MessageKind::EDIT,
        refers_to: Some(Seq(0)),
        thread: None,
        payload: Bytes::new(),
    });
    let mut buf = BytesMut::new();
    assert!(matches!(
        frame.encode(&mut buf),
        Err(CodecError::InvalidValue {
            field: "refers_to",
            value: 0,
            ..
        })
    ));
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------------------
// Garbage

/// xorshift64*: a tiny deterministic generator, so garbage tests need no
/// extra dependency and always test the same inputs.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

/// Checks the decoder's contract on arbitrary input: it never panics,
/// `Ok(None)` consumes nothing, `FrameTooLarge` consumes nothing, any other
/// result consumes exactly one whole frame, and decoded frames re-encode.
fn decode_checked(input: &[u8], max: u32) -> usize {
    let mut buf = BytesMut::from(input);
    let mut frames = 0;
    loop {
        let before = buf.len();
        let header = Header::peek(&buf);
        match Frame::decode(&mut buf, max) {
            Ok(None) => {
                assert_eq!(buf.len(), before);
                return frames;
            }
            Err(CodecError::FrameTooLarge { .. }) => {
                assert_eq!(buf.len(), before);
                return frames;
            }
            Ok(Some(frame)) => {
                let header = header.unwrap();
                assert_eq!(before - buf.len(), HEADER_LEN + header.len as usize);
                let canonical = encode(&frame);
                assert!(canonical.len() <= HEADER_LEN + header.len as usize);
                let mut again = BytesMut::from(&canonical[..]);
                assert_eq!(Frame::decode(&mut again, max), Ok(Some(frame)));
                frames += 1;
            }
            Err(_) => {
                let header = header.unwrap();
                assert_eq!(before - buf.len(), HEADER_LEN + header.len as usize);
                // The stream would be closed here; keep going anyway to
                // exercise more input.
            }
        }
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = XorShift(0x0c0f_fab0_1234_5678);
    for _ in 0..20_000 {
        let len = rng.below(200);
        let mut input: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        // Make plausible headers common: a small length and a known type.
        if input.len() >= HEADER_LEN && rng.below(4) != 0 {
            let body = u32::try_from(rng.below(input.len() - HEADER_LEN + 1)).unwrap();
            input[..4].copy_from_slice(&body.to_be_bytes());
            input[4] = common::ALL_TYPES[rng.below(common::ALL_TYPES.len())].0;
        }
        decode_checked(&input, 4096);
    }
}

#[test]
fn mutated_valid_frames_never_panic() {
    let mut rng = XorShift(0xdead_beef_cafe_f00d);
    let encoded: Vec<Bytes> = samples().iter().map(encode).collect();
    let mut decoded = 0;
    for _ in 0..20_000 {
        let mut input = encoded[rng.below(encoded.len())].to_vec();
        for _ in 0..=rng.below(4) {
            let i = rng.below(input.len());
            match rng.below(3) {
                // Flip bits in place.
                0 => input[i] ^= 1 << rng.below(8),
                // Replace with a random byte, but keep the header length.
                1 if i >= 4 => input[i] = rng.byte(),
                // Shift the body by dropping or inserting a byte, then fix
                // up the header length so the frame stays well framed.
                _ => {
                    if i >= HEADER_LEN && rng.below(2) == 0 {
                        input.remove(i);
                    } else if i >= HEADER_LEN {
                        input.insert(i, rng.byte());
                    }
                    let body = u32::try_from(input.len() - HEADER_LEN).unwrap();
                    input[..4].copy_from_slice(&body.to_be_bytes());
                }
            }
        }
        decoded += decode_checked(&input, DEFAULT_MAX_FRAME_LEN);
    }
    // Many mutations (in payloads, counters, timestamps...) keep a frame valid.
    assert!(decoded > 1_000, "only {decoded} mutated frames decoded");
}

#[test]
fn decode_all_stops_at_the_first_error() {
    let mut stream = encode(&Frame::new(Ping { nonce: 1 })).to_vec();
    stream.extend_from_slice(&raw_frame(0x7f, b""));
    stream.extend_from_slice(&encode(&Frame::new(Ping { nonce: 2 })));
    let (results, rest) = decode_all(&stream, DEFAULT_MAX_FRAME_LEN);
    assert_eq!(
        results,
        vec![
            Ok(Frame::new(Ping { nonce: 1 })),
            Err(CodecError::UnknownFrameType { frame_type: 0x7f }),
        ]
    );
    assert_eq!(rest.len(), HEADER_LEN + 8);
}
