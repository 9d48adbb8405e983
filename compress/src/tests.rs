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
    let mut tx = Compressor::new(19, 0, u32::MAX).unwrap();
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

#[test]
fn a_window_larger_than_allowed_is_refused() {
    let mut big = Encoder::new(1).unwrap();
    big.set_parameter(CParameter::WindowLog(MAX_WINDOW_LOG + 3))
        .unwrap();
    big.set_parameter(CParameter::ContentSizeFlag(false))
        .unwrap();
    let body = Frame::new(Ping { nonce: 1 }).to_bytes().unwrap();
    let mut out = Vec::with_capacity(1024);
    let mut input = InBuffer::around(&body[HEADER_LEN..]);
    let mut ob = OutBuffer::around(&mut out);
    big.run(&mut input, &mut ob).unwrap();
    big.flush(&mut ob).unwrap();
    assert_eq!(
        err_code(&mut raw(0x04, &out), MAX),
        ErrorCode::MalformedFrame
    );
}

/// The memory of one context each way, as zstd accounts it, after a few
/// frames (docs/operations.md, "Compression", quotes these).
#[test]
fn contexts_stay_small() {
    use zstd::zstd_safe::{CCtx, DCtx, InBuffer as In, OutBuffer as Out};
    let mut c = CCtx::create();
    c.set_parameter(CParameter::CompressionLevel(1)).unwrap();
    c.set_parameter(CParameter::WindowLog(WINDOW_LOG)).unwrap();
    let mut d = DCtx::create();
    d.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .unwrap();
    let body = event(1, "measure me").to_bytes().unwrap();
    let mut wire = vec![0u8; 4096];
    let mut plain = vec![0u8; 4096];
    for _ in 0..10 {
        let mut out = Out::around(&mut wire[..]);
        let mut input = In::around(&body[..]);
        c.compress_stream2(
            &mut out,
            &mut input,
            zstd::zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush,
        )
        .unwrap();
        let n = out.pos();
        let mut o = Out::around(&mut plain[..]);
        let mut i = In::around(&wire[..n]);
        d.decompress_stream(&mut o, &mut i).unwrap();
        assert_eq!(o.pos(), body.len());
    }
    let (cs, ds) = (c.sizeof(), d.sizeof());
    println!("compressor {cs} bytes, decompressor {ds} bytes");
    assert!(cs < 2 << 20 && ds < 1 << 20, "{cs} {ds}");
}
