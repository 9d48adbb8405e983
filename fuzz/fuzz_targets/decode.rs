//! Decodes arbitrary bytes as a stream of frames: must never panic, and
//! must respect the decoder's consumption contract.

#![no_main]

use bytes::BytesMut;
use confab_codec::{CodecError, Frame, Header, HEADER_LEN};
use libfuzzer_sys::fuzz_target;

/// A small limit so that oversized frames are exercised too.
const MAX_FRAME_LEN: u32 = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        let header = Header::peek(&buf);
        match Frame::decode(&mut buf, MAX_FRAME_LEN) {
            // Incomplete: nothing consumed.
            Ok(None) => {
                assert_eq!(buf.len(), before);
                break;
            }
            // Rejected from the header alone: nothing consumed.
            Err(CodecError::FrameTooLarge { len, max }) => {
                assert_eq!(max, MAX_FRAME_LEN);
                assert!(len > u64::from(MAX_FRAME_LEN));
                assert_eq!(buf.len(), before);
                break;
            }
            // A whole frame, good or bad, is consumed.
            Ok(Some(_)) | Err(_) => {
                let header = header.expect("a frame needs a header");
                assert_eq!(before - buf.len(), HEADER_LEN + header.len as usize);
                // A real peer closes the stream on an error; go on anyway to
                // reach more of the input.
            }
        }
    }
});
