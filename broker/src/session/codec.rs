//! The tokio-util adapter around the sans-IO codec, and the receiving side
//! of compression (protocol 3.6).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use confab_codec::{CodecError, ErrorCode, Frame, HEADER_LEN};
use confab_compress::Decompressor;
use tokio_util::codec::{Decoder, Encoder};

use crate::shared::ContextSlot;
use crate::stats::Stats;

/// Frames in, frames out. Reserves buffer space for a frame only after its
/// declared length passed the limit. Once compression was agreed on in
/// the handshake, bodies sent with the `COMPRESSED` flag are inflated,
/// within the same limit; before, that flag is a malformed frame.
#[derive(Debug)]
pub struct FrameCodec {
    max_frame_len: u32,
    inflate: Option<(Decompressor, Arc<Stats>, ContextSlot)>,
}

impl FrameCodec {
    /// A codec that refuses frames with bodies over `max_frame_len` bytes.
    pub fn new(max_frame_len: u32) -> Self {
        Self {
            max_frame_len,
            inflate: None,
        }
    }

    /// Accepts compressed frames from now on (after `Welcome` granted
    /// `ZSTD`), counting their bytes in `stats`; the decompressor's
    /// `slot` in the broker's budget is held as long as the codec.
    pub(crate) fn enable_decompression(&mut self, stats: Arc<Stats>, slot: ContextSlot) {
        self.inflate = Some((Decompressor::new(), stats, slot));
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
    /// The peer broke a rule of its transport's framing (on WebSocket: a
    /// message that is not exactly one frame, or a text message).
    #[error("{message}")]
    Transport {
        /// The protocol's code for it.
        code: ErrorCode,
        /// What was wrong.
        message: String,
    },
    /// The socket failed.
    #[error(transparent)]
    Io(std::io::Error),
}

impl From<std::io::Error> for WireError {
    fn from(e: std::io::Error) -> Self {
        match confab_ws::violation(&e) {
            Some(v) => WireError::Transport {
                code: v.code,
                message: v.message.clone(),
            },
            None => WireError::Io(e),
        }
    }
}

impl WireError {
    /// The `Error` the peer gets for it (code and message), unless the
    /// socket itself failed and nobody would read one.
    pub fn refusal(&self) -> Option<(ErrorCode, String)> {
        match self {
            WireError::Codec(e) => Some((e.code(), e.to_string())),
            WireError::Transport { code, message } => Some((*code, message.clone())),
            WireError::Io(_) => None,
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let decoded = match &mut self.inflate {
            Some((d, stats, _)) => {
                let frame = confab_compress::decode(src, self.max_frame_len, Some(d))?;
                let t = d.take_totals();
                if t.frames > 0 {
                    stats.inflated_in.fetch_add(t.compressed, Ordering::Relaxed);
                    stats.inflated_out.fetch_add(t.plain, Ordering::Relaxed);
                }
                frame
            }
            None => confab_compress::decode(src, self.max_frame_len, None)?,
        };
        match decoded {
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
