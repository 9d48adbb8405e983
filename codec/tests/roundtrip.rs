//! Round trips of one realistic sample per frame type: encode then decode,
//! every truncated prefix is incomplete, every shortened body is a typed
//! error, and several frames in one buffer decode in order.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use common::{decode_all, encode, samples, ALL_TYPES};
use confab_codec::*;

#[test]
fn samples_cover_every_frame_type() {
    let samples = samples();
    for &(code, name) in ALL_TYPES {
        let matching: Vec<&Frame> = samples
            .iter()
            .filter(|f| f.body.frame_type() == code)
            .collect();
        assert_eq!(matching.len(), 1, "exactly one sample of type {code:#04x}");
        assert_eq!(matching[0].body.name(), name, "name of type {code:#04x}");
    }
    // Plus the extension sample, and nothing else.
    assert_eq!(samples.len(), ALL_TYPES.len() + 1);
    assert!(samples
        .iter()
        .any(|f| matches!(f.body, Body::Extension { .. })));
    // Codes are unique.
    let codes: BTreeSet<u8> = ALL_TYPES.iter().map(|&(c, _)| c).collect();
    assert_eq!(codes.len(), ALL_TYPES.len());
}

#[test]
fn frame_type_constants_match_the_registry() {
    let constants = [
        frame_type::Hello,
        frame_type::Welcome,
        frame_type::Goodbye,
        frame_type::Ping,
        frame_type::Pong,
        frame_type::Error,
        frame_type::Notice,
        frame_type::Ack,
        frame_type::RefreshToken,
        frame_type::RegisterPush,
        frame_type::Subscribe,
        frame_type::SubscribeAck,
        frame_type::Unsubscribe,
        frame_type::Lagging,
        frame_type::CaughtUp,
        frame_type::SyncInbox,
        frame_type::InboxPage,
        frame_type::Gap,
        frame_type::Publish,
        frame_type::PublishAck,
        frame_type::Event,
        frame_type::EventBatch,
        frame_type::HistoryRequest,
        frame_type::HistoryPage,
        frame_type::CreateRoom,
        frame_type::RoomInfo,
        frame_type::JoinRoom,
        frame_type::LeaveRoom,
        frame_type::InviteMember,
        frame_type::RemoveMember,
        frame_type::GetRoomInfo,
        frame_type::UpdateRoom,
        frame_type::SetRole,
        frame_type::ListRooms,
        frame_type::RoomList,
        frame_type::Typing,
        frame_type::TypingEvent,
        frame_type::SetPresence,
        frame_type::WatchPresence,
        frame_type::GetPresence,
        frame_type::PresenceEvent,
        frame_type::Receipt,
        frame_type::ReceiptEvent,
        frame_type::GetMessageStatus,
        frame_type::MessageStatus,
    ];
    let registry: Vec<u8> = ALL_TYPES.iter().map(|&(c, _)| c).collect();
    assert_eq!(constants.as_slice(), registry.as_slice());
    assert!(registry.iter().all(|&c| c < EXTENSION_TYPE_BASE));
}

/// A mandatory type byte that is not in the registry must be rejected. With
/// `samples_cover_every_frame_type`, this makes sure no frame type exists
/// that has no sample: a new one would decode an empty body as something
/// other than `UnknownFrameType`.
#[test]
fn every_other_mandatory_type_is_unknown() {
    let known: BTreeSet<u8> = ALL_TYPES.iter().map(|&(c, _)| c).collect();
    for t in 0..EXTENSION_TYPE_BASE {
        if known.contains(&t) {
            continue;
        }
        let header = Header {
            len: 0,
            frame_type: t,
            flags: 0,
            request_id: 0,
        };
        assert_eq!(
            Frame::decode_body(header, Bytes::new()),
            Err(CodecError::UnknownFrameType { frame_type: t })
        );
    }
}

#[test]
fn every_sample_round_trips() {
    for frame in samples() {
        let bytes = encode(&frame);
        let header = Header::peek(&bytes).unwrap();
        assert_eq!(header.len as usize, bytes.len() - HEADER_LEN);
        assert_eq!(header.frame_type, frame.body.frame_type());
        assert_eq!(header.flags, frame.flags);
        assert_eq!(header.request_id, frame.request_id);

        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN)
            .unwrap()
            .unwrap();
        assert_eq!(decoded, frame);
        assert!(buf.is_empty(), "{} left bytes behind", frame.body.name());

        // The body alone decodes the same way.
        let body = bytes.slice(HEADER_LEN..);
        assert_eq!(Frame::decode_body(header, body).unwrap(), frame);
    }
}

#[test]
fn decode_with_the_exact_max_frame_len() {
    for frame in samples() {
        let bytes = encode(&frame);
        let body_len = u32::try_from(bytes.len() - HEADER_LEN).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        assert_eq!(
            Frame::decode(&mut buf, body_len).unwrap().as_ref(),
            Some(&frame)
        );
        if body_len > 0 {
            let mut buf = BytesMut::from(&bytes[..]);
            assert_eq!(
                Frame::decode(&mut buf, body_len - 1),
                Err(CodecError::FrameTooLarge {
                    len: u64::from(body_len),
                    max: body_len - 1,
                })
            );
            assert_eq!(buf.len(), bytes.len(), "nothing consumed");
        }
    }
}

#[test]
fn every_truncated_prefix_is_incomplete() {
    for frame in samples() {
        let bytes = encode(&frame);
        for cut in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..cut]);
            assert_eq!(
                Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN),
                Ok(None),
                "{} cut at {cut}",
                frame.body.name()
            );
            assert_eq!(&buf[..], &bytes[..cut], "nothing consumed");
        }
    }
}

/// A body cut short (with a header that agrees with the cut) is a typed
/// `Truncated` error: every field of every frame is mandatory.
#[test]
fn every_shortened_body_is_truncated() {
    for frame in samples() {
        if matches!(frame.body, Body::Extension { .. }) {
            continue;
        }
        let bytes = encode(&frame);
        let header = Header::peek(&bytes).unwrap();
        let body = bytes.slice(HEADER_LEN..);
        for cut in 0..body.len() {
            let short = Header {
                len: u32::try_from(cut).unwrap(),
                ..header
            };
            // Through the top-level decoder, as a peer would send it.
            let mut wire = BytesMut::new();
            short.put(&mut wire);
            wire.extend_from_slice(&body[..cut]);
            let result = Frame::decode(&mut wire, DEFAULT_MAX_FRAME_LEN);
            assert!(
                matches!(result, Err(CodecError::Truncated { .. })),
                "{} body cut at {cut}: {result:?}",
                frame.body.name()
            );
            assert!(wire.is_empty(), "the malformed frame is consumed");
        }
    }
}

#[test]
fn concatenated_frames_decode_in_order() {
    let samples = samples();
    // Every window of two and three consecutive samples, so every frame type
    // is followed by another one in the same buffer.
    for n in [2, 3] {
        for window in samples.windows(n) {
            let mut buf = BytesMut::new();
            for frame in window {
                frame.encode(&mut buf).unwrap();
            }
            for frame in window {
                assert_eq!(
                    Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN)
                        .unwrap()
                        .as_ref(),
                    Some(frame)
                );
            }
            assert!(buf.is_empty());
            assert_eq!(Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN), Ok(None));
        }
    }
}

#[test]
fn all_samples_in_one_buffer_then_a_partial_frame() {
    let samples = samples();
    let mut stream = BytesMut::new();
    for frame in &samples {
        frame.encode(&mut stream).unwrap();
    }
    let partial = encode(&samples[0]);
    stream.extend_from_slice(&partial[..partial.len() - 1]);

    let (decoded, rest) = decode_all(&stream, DEFAULT_MAX_FRAME_LEN);
    let decoded: Vec<Frame> = decoded.into_iter().map(Result::unwrap).collect();
    assert_eq!(decoded, samples);
    assert_eq!(&rest[..], &partial[..partial.len() - 1]);
}

/// Feeding a stream one byte at a time yields the same frames as feeding it
/// whole: a frame appears exactly when its last byte arrives.
#[test]
fn byte_at_a_time_stream() {
    let samples = samples();
    let mut stream = Vec::new();
    let mut ends = BTreeSet::new();
    for frame in &samples {
        stream.extend_from_slice(&encode(frame));
        ends.insert(stream.len());
    }
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for (i, &b) in stream.iter().enumerate() {
        buf.extend_from_slice(&[b]);
        match Frame::decode(&mut buf, DEFAULT_MAX_FRAME_LEN).unwrap() {
            Some(frame) => {
                assert!(ends.contains(&(i + 1)), "frame completed early at {i}");
                decoded.push(frame);
            }
            None => assert!(!ends.contains(&(i + 1)), "frame missing at {i}"),
        }
    }
    assert_eq!(decoded, samples);
    assert!(buf.is_empty());
}

#[test]
fn encode_appends_to_existing_bytes() {
    for frame in samples() {
        let mut buf = BytesMut::from(&b"prefix"[..]);
        frame.encode(&mut buf).unwrap();
        assert_eq!(&buf[..6], b"prefix");
        assert_eq!(&buf[6..], &encode(&frame)[..]);
    }
}

#[test]
fn event_records_round_trip_alone() {
    for frame in samples() {
        let events = match frame.body {
            Body::Event(e) => vec![e.event],
            Body::EventBatch(b) => b.events,
            Body::HistoryPage(p) => p.events,
            _ => continue,
        };
        for event in events {
            let mut buf = BytesMut::new();
            event.encode(&mut buf).unwrap();
            assert_eq!(buf.len(), event.encoded_len());
            assert_eq!(EventRecord::decode(buf.freeze()).unwrap(), event);
        }
    }
}

#[test]
fn event_record_in_room_builds_an_event() {
    let record = common::record(7, "alice", "phone", b"x");
    let event = record.clone().in_room(common::room("general"));
    assert_eq!(event.room.as_str(), "general");
    assert_eq!(event.event, record);
}

#[test]
fn frame_constructors() {
    let f = Frame::new(Ping { nonce: 1 });
    assert_eq!((f.request_id, f.flags), (0, 0));
    let f = Frame::request(9, Ping { nonce: 1 })
        .with_flags(flags::NO_REPLY)
        .with_flags(flags::REPLAY);
    assert_eq!((f.request_id, f.flags), (9, 0x03));
    assert_eq!(f.body, Body::Ping(Ping { nonce: 1 }));
}
