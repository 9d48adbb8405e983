//! Feeding a stream in arbitrary chunks must give exactly the frames and
//! errors that decoding it all at once gives, in the same order, and leave
//! the same bytes behind.
//!
//! Input layout: the first byte gives the number `n` (0..=15) of chunk-size
//! bytes that follow; the rest is the stream, fed in chunks whose sizes
//! cycle through those `n` bytes (0 is an empty chunk, a decode call with no
//! new data). With `n = 0`, or only zero sizes, the stream is fed one byte at
//! a time.

#![no_main]

use bytes::BytesMut;
use confab_codec::{CodecError, Frame};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME_LEN: u32 = 64 * 1024;

type Outcome = Result<Frame, CodecError>;

/// Decodes what is buffered until it is incomplete or an error occurs.
/// Returns true if the stream must be closed (an error).
fn drain(buf: &mut BytesMut, out: &mut Vec<Outcome>) -> bool {
    loop {
        match Frame::decode(buf, MAX_FRAME_LEN) {
            Ok(Some(frame)) => out.push(Ok(frame)),
            Ok(None) => return false,
            Err(e) => {
                out.push(Err(e));
                return true;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n & 0x0f).min(rest.len());
    let (sizes, stream) = rest.split_at(n);
    // All-zero sizes would never make progress: feed byte by byte instead.
    let sizes = if sizes.iter().all(|&s| s == 0) {
        &[][..]
    } else {
        sizes
    };

    // All at once.
    let mut whole = BytesMut::from(stream);
    let mut expected = Vec::new();
    drain(&mut whole, &mut expected);

    // In chunks.
    let mut chunked = BytesMut::new();
    let mut got = Vec::new();
    let mut pending = stream;
    let mut closed = false;
    let mut i = 0;
    while !closed && !pending.is_empty() {
        let size = sizes
            .get(i % sizes.len().max(1))
            .map_or(1, |&s| usize::from(s));
        i += 1;
        let (chunk, tail) = pending.split_at(size.min(pending.len()));
        pending = tail;
        chunked.extend_from_slice(chunk);
        closed = drain(&mut chunked, &mut got);
    }

    assert_eq!(got, expected);
    if !closed {
        assert_eq!(chunked, whole, "same bytes left over");
    }
});
