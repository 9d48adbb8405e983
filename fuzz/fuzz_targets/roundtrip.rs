//! Whatever decodes must re-encode to a canonical form that is stable:
//! decode(encode(f)) == f and encode(decode(encode(f))) == encode(f).
//!
//! The raw input itself may differ from the canonical bytes: bytes after the
//! last known field are ignored, unknown error codes become `Unknown`, a
//! live `StartAt` drops its sequence, and so on.

#![no_main]

use bytes::BytesMut;
use confab_codec::{Frame, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME_LEN: u32 = 64 * 1024;

fn encode(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    frame
        .encode(&mut buf)
        .expect("a decoded frame always re-encodes");
    assert_eq!(Ok(buf.len()), frame.encoded_len());
    buf
}

fuzz_target!(|data: &[u8]| {
    let mut input = BytesMut::from(data);
    while let Ok(Some(first)) = Frame::decode(&mut input, MAX_FRAME_LEN) {
        let canonical = encode(&first);
        assert!(canonical.len() >= HEADER_LEN);

        let mut buf = canonical.clone();
        let second = Frame::decode(&mut buf, MAX_FRAME_LEN)
            .expect("canonical bytes decode")
            .expect("canonical bytes are a whole frame");
        assert!(buf.is_empty(), "canonical bytes are exactly one frame");
        assert_eq!(second, first);
        assert_eq!(encode(&second), canonical, "canonical form is stable");
    }
});
