//! Compressed frames (protocol 3.6) from a hostile peer: arbitrary bytes
//! decoded as a stream of frames through one stream's decompressor must
//! never panic, never hand out a body over the limit, and respect the
//! decoder's consumption contract. And what our own compressor produces
//! from arbitrary frames must decode back to those frames.

#![no_main]

use bytes::{Bytes, BytesMut};
use confab_codec::{Body, CodecError, Frame, Header, HEADER_LEN};
use confab_compress::{decode, Compressor, Decompressor};
use libfuzzer_sys::fuzz_target;

/// A small limit so that zip bombs and oversized frames are exercised.
const MAX_FRAME_LEN: u32 = 16 * 1024;

fn hostile(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut rx = Decompressor::new();
    loop {
        let before = buf.len();
        let header = Header::peek(&buf);
        match decode(&mut buf, MAX_FRAME_LEN, Some(&mut rx)) {
            Ok(None) => {
                assert_eq!(buf.len(), before);
                break;
            }
            Ok(Some(frame)) => {
                let header = header.expect("a frame needs a header");
                assert_eq!(before - buf.len(), HEADER_LEN + header.len as usize);
                let len = frame.encoded_len().unwrap_or(usize::MAX);
                assert!(len <= HEADER_LEN + MAX_FRAME_LEN as usize, "{len}");
            }
            // Refused from the header alone: nothing consumed; a real peer
            // is closed, and so is the stream here.
            Err(CodecError::FrameTooLarge { .. }) if buf.len() == before => break,
            // Anything else is fatal to the stream (the contexts disagree).
            Err(_) => break,
        }
    }
}

fn round_trip(data: &[u8]) {
    let Some((&level, rest)) = data.split_first() else {
        return;
    };
    let level = i32::from(level % 17) - 7;
    let mut tx = Compressor::new(level, 16, MAX_FRAME_LEN).expect("levels -7..=9 are valid");
    let mut rx = Decompressor::new();
    let mut wire = BytesMut::new();
    let frames: Vec<Frame> = rest
        .split(|b| *b == 0xFF)
        .map(|chunk| {
            Frame::new(Body::Extension {
                frame_type: 0x90,
                body: Bytes::copy_from_slice(chunk),
            })
        })
        .collect();
    for f in &frames {
        tx.encode(f, &mut wire).expect("our frames encode");
    }
    for f in &frames {
        let got = decode(&mut wire, MAX_FRAME_LEN, Some(&mut rx)).expect("our own stream decodes");
        assert_eq!(got.as_ref(), Some(f));
    }
    assert!(wire.is_empty());
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 0 => hostile(rest),
        Some((_, rest)) => round_trip(rest),
        None => {}
    }
});
