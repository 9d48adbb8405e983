//! The tokio-util adapter around the sans-IO codec: a few lines that let
//! `FramedRead`/`FramedWrite` speak Confab frames, compressed or not
//! (protocol 3.6).

use bytes::BytesMut;
use confab_codec::{Frame, Header, HEADER_LEN};
use confab_compress::{Compressor, Decompressor, EncodeError};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::ClientError;

/// zstd level of what the SDK compresses: the fastest useful one, for
/// phones.
const LEVEL: i32 = 1;

/// Frames in, frames out. Buffer space for a frame is reserved only after
/// its declared length passed the limit check. Each instance serves one
/// direction of one stream, and so holds that stream's compression
/// context once compression was agreed on.
#[derive(Debug)]
pub(crate) struct FrameCodec {
    max_frame_len: u32,
    inflate: Option<Decompressor>,
    deflate: Option<Compressor>,
}

impl FrameCodec {
    /// A codec that refuses incoming frames with bodies over `max_frame_len`.
    pub(crate) fn new(max_frame_len: u32) -> Self {
        Self {
            max_frame_len,
            inflate: None,
            deflate: None,
        }
    }

    /// Reads compressed frames from now on (the `Welcome` granted `ZSTD`).
    pub(crate) fn enable_decompression(&mut self) {
        self.inflate = Some(Decompressor::new());
    }

    /// Compresses the frames written from now on whose bodies have at
    /// least `min_bytes`, never past `max_frame_len` (the `Welcome`'s).
    ///
    /// # Errors
    /// If zstd cannot make its context.
    pub(crate) fn enable_compression(
        &mut self,
        min_bytes: usize,
        max_frame_len: u32,
    ) -> std::io::Result<()> {
        self.deflate = Some(Compressor::new(LEVEL, min_bytes, max_frame_len)?);
        Ok(())
    }

    /// Changes the receive limit (after `Welcome` announced the broker's).
    pub(crate) fn set_max_frame_len(&mut self, max_frame_len: u32) {
        self.max_frame_len = max_frame_len;
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ClientError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ClientError> {
        match confab_compress::decode(src, self.max_frame_len, self.inflate.as_mut())? {
            Some(frame) => Ok(Some(frame)),
            None => {
                if let Some(h) = Header::peek(src) {
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
    type Error = ClientError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ClientError> {
        match &mut self.deflate {
            Some(z) => z.encode(&frame, dst).map_err(|e| match e {
                EncodeError::Codec(e) => ClientError::Codec(e),
                EncodeError::Io(e) => ClientError::from(e),
            }),
            None => {
                frame.encode(dst)?;
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use confab_codec::{CodecError, Ping, DEFAULT_MAX_FRAME_LEN};

    use super::*;

    #[test]
    fn round_trip_byte_by_byte() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME_LEN);
        let frame = Frame::new(Ping { nonce: 9 });
        let mut wire = BytesMut::new();
        codec.encode(frame.clone(), &mut wire).unwrap();
        codec.encode(frame.clone(), &mut wire).unwrap();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for b in wire.iter() {
            buf.extend_from_slice(&[*b]);
            while let Some(f) = codec.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![frame.clone(), frame]);
    }

    #[test]
    fn oversized_frames_are_refused_before_buffering() {
        let mut codec = FrameCodec::new(4);
        let mut wire = BytesMut::new();
        codec
            .encode(Frame::new(Ping { nonce: 1 }), &mut wire)
            .unwrap();
        let mut header_only = BytesMut::from(&wire[..HEADER_LEN]);
        let err = codec.decode(&mut header_only).unwrap_err();
        assert!(matches!(
            err,
            ClientError::Codec(CodecError::FrameTooLarge { .. })
        ));
        codec.set_max_frame_len(8);
        assert!(codec.decode(&mut wire).unwrap().is_some());
    }
}
