#![allow(clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use confab_codec::{
    flags, Ack, Body, DeviceId, ErrorCode, Event, EventRecord, Frame, Goodbye, Header, MessageKind,
    Ping, RoomId, Seq, UserId, Welcome, HEADER_LEN,
};

use super::*;

const MAX: u32 = 1 << 20;

fn event(seq: u64, text: &str) -> Frame {
    Frame::new(Event {
        room: RoomId::new("general").unwrap(),
        event: EventRecord {
            seq: Seq(seq),
            client_msg_id: seq,
            sender: UserId::new("alice").unwrap(),
            device: DeviceId::new("phone").unwrap(),
            timestamp_us: 1_700_000_000_000_000 + seq,
            kind: MessageKind::MESSAGE,
            refers_to: None,
            thread: None,
            payload: Bytes::from(format!(
                "{{\"type\":\"text\",\"body\":\"{text} number {seq}\",\"mentions\":[]}}"
            )),
        },
    })
}

fn decode_all(wire: &mut BytesMut, d: &mut Decompressor) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Some(f) = decode(wire, MAX, Some(d)).unwrap() {
        out.push(f);
    }
    assert!(wire.is_empty(), "a torn frame is left");
    out
}

#[test]
fn many_frames_round_trip_through_one_stream_and_shrink() {
    let mut tx = Compressor::new(1, 64, MAX).unwrap();
    let mut rx = Decompressor::new();
    let frames: Vec<Frame> = (1..=500)
        .map(|i| match i % 7 {
            0 => Frame::new(Ping { nonce: i }),
            1 => Frame::request(i as u32, Ack {}),
            _ => event(i, "see you at the station at noon, bring the tickets"),
        })
        .collect();
    let mut wire = BytesMut::new();
    let mut plain_len = 0;
    for f in &frames {
        plain_len += f.encoded_len().unwrap();
        tx.encode(f, &mut wire).unwrap();
    }
    let totals = tx.take_totals();
    assert!(totals.frames > 0 && totals.frames < 500, "{totals:?}");
    assert!(
        wire.len() * 3 < plain_len,
        "{} bytes for {plain_len} plain: chat frames compress against earlier ones",
        wire.len()
    );
    let got = decode_all(&mut wire, &mut rx);
    assert_eq!(got, frames, "the COMPRESSED flag is cleared on decode");
    assert_eq!(rx.take_totals().frames, totals.frames);
}

#[test]
fn frames_are_decodable_one_at_a_time_as_they_arrive() {
    let mut tx = Compressor::new(3, 32, MAX).unwrap();
    let mut rx = Decompressor::new();
    for i in 1..=50 {
        let f = event(i, "hello there");
        let mut wire = BytesMut::new();
        tx.encode(&f, &mut wire).unwrap();
        let h = Header::peek(&wire).unwrap();
        assert_ne!(h.flags & flags::COMPRESSED, 0);
        // Byte by byte: nothing before the whole frame is in.
        let mut buf = BytesMut::new();
        for (n, b) in wire.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let got = decode(&mut buf, MAX, Some(&mut rx)).unwrap();
            if n + 1 < wire.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(got.unwrap(), f);
            }
        }
    }
}

#[test]
fn small_frames_and_the_handshake_are_sent_as_they_are() {
    let mut tx = Compressor::new(1, 128, MAX).unwrap();
    let small = Frame::new(Goodbye {
        code: ErrorCode::Normal,
        message: "x".repeat(96),
    });
    let welcome = Frame::request(
        1,
        Welcome {
            version: 2,
            session_id: 1,
            user: UserId::new("u".repeat(100)).unwrap(),
            server_time_us: 0,
            max_frame_len: MAX,
            max_payload_len: 1000,
            max_rooms: 10,
            heartbeat_ms: 1000,
            idle_timeout_ms: 3000,
            features: Default::default(),
        },
    );
    for f in [&small, &welcome] {
        let plain = f.to_bytes().unwrap();
        let mut wire = BytesMut::new();
        tx.encode(f, &mut wire).unwrap();
        assert_eq!(&wire[..], &plain[..], "{}", f.body.name());
    }
    assert_eq!(tx.take_totals(), Totals::default());
    let big = Frame::new(Goodbye {
        code: ErrorCode::Normal,
        message: "x".repeat(128),
    });
    let mut wire = BytesMut::new();
    tx.encode(&big, &mut wire).unwrap();
    assert_ne!(Header::peek(&wire).unwrap().flags & flags::COMPRESSED, 0);
}

#[test]
fn a_batch_of_frames_is_compressed_frame_by_frame() {
    let mut tx = Compressor::new(1, 64, MAX).unwrap();
    let mut rx = Decompressor::new();
    let frames: Vec<Frame> = (1..=20)
        .map(|i| {
            if i % 2 == 0 {
                Frame::new(Ping { nonce: i })
            } else {
                event(i, "batched")
            }
        })
        .collect();
    let mut batch = BytesMut::new();
    for f in &frames {
        f.encode(&mut batch).unwrap();
    }
    let mut wire = BytesMut::new();
    tx.push_frames(&batch, &mut wire).unwrap();
    assert_eq!(decode_all(&mut wire, &mut rx), frames);
}

#[test]
fn incompressible_bodies_still_fit_the_limit() {
    // A body that only fits uncompressed is sent uncompressed.
    let max = 4096u32;
    let mut tx = Compressor::new(1, 16, max).unwrap();
    let mut rx = Decompressor::new();
    let mut noise = vec![0u8; max as usize - 8];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in &mut noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let f = Frame::new(Body::Extension {
        frame_type: 0x90,
        body: Bytes::from(noise),
    });
    let mut wire = BytesMut::new();
    tx.encode(&f, &mut wire).unwrap();
    let h = Header::peek(&wire).unwrap();
    assert!(h.len <= max);
    assert_eq!(h.flags & flags::COMPRESSED, 0);
    assert_eq!(decode(&mut wire, max, Some(&mut rx)).unwrap().unwrap(), f);
}

/// A compressed frame with the given header fields and compressed body.
fn raw(frame_type: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    Header {
        len: body.len() as u32,
        frame_type,
        flags: flags::COMPRESSED,
        request_id: 0,
    }
    .put(&mut b);
    b.extend_from_slice(body);
    b
}

#[test]
fn a_zip_bomb_is_too_large_and_never_inflated_past_the_limit() {
    let max = 64 << 10;
    // 16 MiB of zeros, compressed within the allowed window: a few KiB.
    let zeros = Frame::new(Body::Extension {
        frame_type: 0x90,
        body: Bytes::from(vec![0u8; 16 << 20]),
    });
    let mut tx = Compressor::new(9, 0, u32::MAX).unwrap();
    let mut wire = BytesMut::new();
    tx.encode(&zeros, &mut wire).unwrap();
    let bomb = wire.split_off(HEADER_LEN);
    assert!(bomb.len() < 8192, "{}", bomb.len());
    let mut wire = raw(0x04, &bomb);
    let mut rx = Decompressor::new();
    let err = decode(&mut wire, max, Some(&mut rx)).unwrap_err();
    match err {
        CodecError::FrameTooLarge { len, max: m } => {
            assert_eq!(m, max);
            assert!(len > u64::from(max) && len <= u64::from(max) + CHUNK as u64);
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    assert_eq!(
        err_code(&mut raw(0x04, &bomb), max),
        ErrorCode::FrameTooLarge
    );
    // A window over the limit is refused before anything is inflated.
    let big_window = zstd::bulk::compress(&vec![0u8; 16 << 20], 19).unwrap();
    assert_eq!(
        err_code(&mut raw(0x04, &big_window), MAX),
        ErrorCode::MalformedFrame
    );
}

fn err_code(wire: &mut BytesMut, max: u32) -> ErrorCode {
    decode(wire, max, Some(&mut Decompressor::new()))
        .unwrap_err()
        .code()
}

#[test]
fn garbage_and_unnegotiated_flags_are_malformed() {
    let mut wire = raw(0x04, b"this is not zstd at all, not even close");
    let err = decode(&mut wire, MAX, Some(&mut Decompressor::new())).unwrap_err();
    assert!(matches!(err, CodecError::BadCompression { .. }), "{err:?}");
    assert_eq!(err.code(), ErrorCode::MalformedFrame);
    // A valid zstd stream whose body is not a valid Ping.
    let short = zstd::bulk::compress(b"abc", 1).unwrap();
    assert_eq!(
        err_code(&mut raw(0x04, &short), MAX),
        ErrorCode::MalformedFrame
    );
    // The flag where compression was not agreed on.
    let mut tx = Compressor::new(1, 8, MAX).unwrap();
    let mut wire = BytesMut::new();
    tx.encode(&event(1, "no deal"), &mut wire).unwrap();
    let err = decode(&mut wire, MAX, None).unwrap_err();
    assert!(matches!(err, CodecError::BadCompression { .. }), "{err:?}");
    // A declared length over the limit is refused from the header.
    let mut big = raw(0x04, &[0u8; 100]);
    assert!(matches!(
        decode(&mut big, 50, None),
        Err(CodecError::FrameTooLarge { len: 100, .. })
    ));
    // Uncompressed frames are untouched without a decompressor.
    let mut plain = BytesMut::from(&Frame::new(Ping { nonce: 3 }).to_bytes().unwrap()[..]);
    assert!(decode(&mut plain, MAX, None).unwrap().is_some());
}

/// Compresses `bodies` with a raw zstd context configured by `params`,
/// flushing after each and ending the zstd frame after those listed in
/// `ends`: what another implementation may send (protocol 3.6).
fn foreign_stream(params: &[CParameter], bodies: &[&[u8]], ends: &[usize]) -> Vec<Vec<u8>> {
    let mut c = CCtx::create();
    for p in params {
        c.set_parameter(*p).unwrap();
    }
    bodies
        .iter()
        .enumerate()
        .map(|(i, body)| {
            let mut out = Vec::with_capacity(2 * body.len() + 64);
            let mut input = InBuffer::around(body);
            let mut ob = OutBuffer::around(&mut out);
            while input.pos() < body.len() {
                c.compress_stream(&mut ob, &mut input).unwrap();
            }
            if ends.contains(&i) {
                while c.end_stream(&mut ob).unwrap() != 0 {}
            } else {
                while c.flush_stream(&mut ob).unwrap() != 0 {}
            }
            out
        })
        .collect()
}

#[test]
fn a_window_larger_than_allowed_is_refused() {
    let body = Frame::new(Ping { nonce: 1 }).to_bytes().unwrap();
    let params = [
        CParameter::CompressionLevel(1),
        CParameter::WindowLog(MAX_WINDOW_LOG + 1),
        CParameter::ContentSizeFlag(false),
    ];
    let out = foreign_stream(&params, &[&body[HEADER_LEN..]], &[]);
    assert_eq!(
        err_code(&mut raw(0x04, &out[0]), MAX),
        ErrorCode::MalformedFrame
    );
}

/// A sender may end its zstd frame after a body and start a new one with
/// the next (protocol 3.6): the receiver reads on.
#[test]
fn a_sender_may_end_and_restart_its_zstd_frame() {
    let frames: Vec<Frame> = (1..=4).map(|i| event(i, &"restart ".repeat(30))).collect();
    let encoded: Vec<Bytes> = frames.iter().map(|f| f.to_bytes().unwrap()).collect();
    let bodies: Vec<&[u8]> = encoded.iter().map(|b| &b[HEADER_LEN..]).collect();
    let params = [
        CParameter::CompressionLevel(3),
        CParameter::WindowLog(MAX_WINDOW_LOG),
        CParameter::ContentSizeFlag(false),
    ];
    let pieces = foreign_stream(&params, &bodies, &[0, 2]);
    let mut d = Decompressor::new();
    for (piece, (frame, plain)) in pieces.iter().zip(frames.iter().zip(&encoded)) {
        let h = Header::peek(plain).unwrap();
        let mut wire = BytesMut::new();
        Header {
            len: piece.len() as u32,
            flags: h.flags | flags::COMPRESSED,
            ..h
        }
        .put(&mut wire);
        wire.extend_from_slice(piece);
        assert_eq!(
            decode(&mut wire, MAX, Some(&mut d)).unwrap().as_ref(),
            Some(frame)
        );
    }
}

/// Memory per context stays under the documented bounds at every level,
/// with bodies up to the size of the window and more, and for a receiver
/// whose peer uses the largest window allowed (docs/operations.md,
/// "Compression", quotes these bounds).
#[test]
fn contexts_stay_under_their_bounds() {
    let sizes = [40usize, 300, 2_000, 12_000, 40_000, 200];
    for level in LEVELS {
        let mut tx = Compressor::new(level, 64, MAX).unwrap();
        let mut rx = Decompressor::new();
        for (i, size) in sizes.iter().enumerate() {
            let mut text = String::new();
            let mut w = i;
            while text.len() < *size {
                text.push_str(&format!("word{} ", (w * 7919) % 1000));
                w += 1;
            }
            let frame = event(i as u64 + 1, &text);
            let mut wire = BytesMut::new();
            tx.encode(&frame, &mut wire).unwrap();
            assert_eq!(decode(&mut wire, MAX, Some(&mut rx)).unwrap(), Some(frame));
        }
        println!(
            "level {level}: compressor {} bytes, decompressor {} bytes",
            tx.memory(),
            rx.memory()
        );
        assert!(
            tx.memory() <= COMPRESSOR_MAX_BYTES,
            "level {level}: compressor {} bytes",
            tx.memory()
        );
        assert!(
            rx.memory() <= DECOMPRESSOR_MAX_BYTES,
            "level {level}: decompressor {} bytes",
            rx.memory()
        );
    }
    // A foreign sender at the largest window the protocol allows.
    let body: Vec<u8> = (0..100_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    let params = [
        CParameter::CompressionLevel(3),
        CParameter::WindowLog(MAX_WINDOW_LOG),
        CParameter::ContentSizeFlag(false),
    ];
    let pieces = foreign_stream(&params, &[&body[..], &body[..]], &[]);
    let mut rx = Decompressor::new();
    for piece in &pieces {
        assert_eq!(rx.decompress(piece, MAX).unwrap().len(), body.len());
    }
    println!("32 KiB window: decompressor {} bytes", rx.memory());
    assert!(
        rx.memory() <= DECOMPRESSOR_MAX_BYTES,
        "decompressor {} bytes",
        rx.memory()
    );
    // Levels outside the range are refused, not silently changed.
    assert!(Compressor::new(10, 64, MAX).is_err());
    assert!(Compressor::new(-8, 64, MAX).is_err());
}
