//! The tokio-util adapter around the sans-IO codec.

use bytes::BytesMut;
use confab_codec::{CodecError, Frame, HEADER_LEN};
use tokio_util::codec::{Decoder, Encoder};

/// Frames in, frames out. Reserves buffer space for a frame only after its
/// declared length passed the limit.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame_len: u32,
}

impl FrameCodec {
    /// A codec that refuses frames with bodies over `max_frame_len` bytes.
    pub fn new(max_frame_len: u32) -> Self {
        Self { max_frame_len }
    }

    /// Changes the limit for the frames still to come (the session raises
    /// it from the `Hello` limit to `max_frame_len` at `Welcome`).
    pub fn set_max_frame_len(&mut self, max_frame_len: u32) {
        self.max_frame_len = max_frame_len;
    }
}

/// A codec or IO failure on a connection.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The peer sent something that is not a valid frame.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match Frame::decode(src, self.max_frame_len)? {
            Some(frame) => Ok(Some(frame)),
            None => {
                if let Some(h) = confab_codec::Header::peek(src) {
                    // The length passed the limit check inside decode.
                    let total = HEADER_LEN + h.len as usize;
                    src.reserve(total.saturating_sub(src.len()));
                }
                Ok(None)
            }
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), WireError> {
        frame.encode(dst)?;
        Ok(())
    }
}
