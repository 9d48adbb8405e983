//! # confab-compress
//!
//! Compression of frame bodies (protocol section 3.6), sans IO: the broker
//! and the SDK put a [`Compressor`] in front of each stream they write and a
//! [`Decompressor`] behind each stream they read, once the handshake agreed
//! on `Features::ZSTD`.
//!
//! One zstd *stream* per direction of a stream (on QUIC: per QUIC stream):
//! each compressed body is the output of the stream's context for that
//! body, flushed at the end of the frame, so that the receiver can decode
//! the frame at once, and so that small chat frames are compressed against
//! the frames that came before them (a 200-byte message shrinks because the
//! last one looked alike). Frames below a threshold are sent as they are
//! and do not touch the context.
//!
//! The receiver bounds what it inflates: a body that decompresses to more
//! than the frame size limit is refused as [`CodecError::FrameTooLarge`]
//! without ever holding more than the limit (plus one chunk); anything that
//! does not decompress is [`CodecError::BadCompression`].
//!
//! ```
//! use bytes::BytesMut;
//! use confab_codec::{ErrorCode, Frame, Goodbye};
//! use confab_compress::{decode, Compressor, Decompressor};
//!
//! let mut tx = Compressor::new(1, 64, 1 << 20).unwrap();
//! let mut rx = Decompressor::new();
//! let frame = Frame::new(Goodbye { code: ErrorCode::Normal, message: "hello ".repeat(40) });
//! let mut wire = BytesMut::new();
//! tx.encode(&frame, &mut wire).unwrap();
//! assert!(wire.len() < frame.encoded_len().unwrap());
//! let got = decode(&mut wire, 1 << 20, Some(&mut rx)).unwrap().unwrap();
//! assert_eq!(got, frame);
//! ```

use bytes::{Bytes, BytesMut};
use confab_codec::{flags, frame_type, CodecError, Frame, Header, HEADER_LEN};
use zstd::zstd_safe::{CCtx, CParameter, DCtx, DParameter, InBuffer, OutBuffer};

/// The window (log2 of bytes) a sender compresses with: how far back a
/// frame may refer to earlier bytes of its stream. 16 KiB holds dozens of
/// chat messages and keeps each side's context small (see
/// [`COMPRESSOR_MAX_BYTES`] and [`DECOMPRESSOR_MAX_BYTES`]).
pub const WINDOW_LOG: u32 = 14;

/// log2 of the entries of the compressor's hash and chain tables: 4096,
/// enough for a 16 KiB window, and what bounds the context at every level.
const TABLE_LOG: u32 = 12;

/// The largest window a receiver accepts (protocol 3.6): 32 KiB. A zstd
/// stream that asks for more is [`CodecError::BadCompression`], so a peer
/// cannot make the receiver reserve a large window.
pub const MAX_WINDOW_LOG: u32 = 15;

/// The compression levels a [`Compressor`] accepts: -7 (fastest) to 9.
/// Higher levels switch zstd to strategies with large extra tables and
/// gain nothing on chat-sized frames.
pub const LEVELS: std::ops::RangeInclusive<i32> = -7..=9;

/// An upper bound of a [`Compressor`]'s memory at any level of
/// [`LEVELS`] (zstd's own accounting, `ZSTD_sizeof_CCtx`, plus its
/// scratch space for one body of a few KiB): what a broker or device
/// budgets per compressing stream.
pub const COMPRESSOR_MAX_BYTES: usize = 192 << 10;

/// An upper bound of a [`Decompressor`]'s memory with the largest window
/// a peer may use ([`MAX_WINDOW_LOG`]), its output chunk included.
pub const DECOMPRESSOR_MAX_BYTES: usize = 256 << 10;

/// Bytes inflated per decoder call; what a receiver may hold beyond the
/// frame size limit before it refuses a body.
const CHUNK: usize = 16 << 10;

/// Byte counts of what went through a compressor or decompressor, for
/// metrics. Counts only frames that were compressed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Frames compressed (or decompressed).
    pub frames: u64,
    /// Their bodies uncompressed, in bytes.
    pub plain: u64,
    /// Their bodies compressed, in bytes.
    pub compressed: u64,
}

impl Totals {
    fn add(&mut self, plain: usize, compressed: usize) {
        self.frames += 1;
        self.plain += plain as u64;
        self.compressed += compressed as u64;
    }
}

/// The sending side of one compressed stream.
pub struct Compressor {
    zstd: CCtx<'static>,
    min_bytes: usize,
    max_frame_len: u32,
    scratch: Vec<u8>,
    totals: Totals,
}

impl std::fmt::Debug for Compressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compressor")
            .field("min_bytes", &self.min_bytes)
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

impl Compressor {
    /// A compressor at zstd `level` (1 is fast; negative levels faster
    /// still; at most 9, see [`LEVELS`]) that leaves bodies shorter than
    /// `min_bytes` alone and never produces a body longer than
    /// `max_frame_len`. Its memory stays under [`COMPRESSOR_MAX_BYTES`].
    ///
    /// # Errors
    /// If the level is outside [`LEVELS`], or zstd cannot allocate its
    /// context.
    pub fn new(level: i32, min_bytes: usize, max_frame_len: u32) -> std::io::Result<Self> {
        if !LEVELS.contains(&level) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("zstd level {level} is outside -7..=9"),
            ));
        }
        let mut zstd = CCtx::try_create()
            .ok_or_else(|| std::io::Error::other("cannot allocate a zstd context"))?;
        let params = [
            CParameter::CompressionLevel(level),
            CParameter::WindowLog(WINDOW_LOG),
            CParameter::HashLog(TABLE_LOG),
            CParameter::ChainLog(TABLE_LOG),
            // Nothing to check the sum against that the transport does not
            // check already, and the size is unknown in a stream.
            CParameter::ChecksumFlag(false),
            CParameter::ContentSizeFlag(false),
        ];
        for p in params {
            zstd.set_parameter(p).map_err(zstd_error)?;
        }
        Ok(Self {
            zstd,
            min_bytes,
            max_frame_len,
            scratch: Vec::new(),
            totals: Totals::default(),
        })
    }

    fn wants(&self, h: &Header) -> bool {
        worth_compressing(h, self.min_bytes, self.max_frame_len)
    }

    /// Appends one whole encoded frame (header and body) to `dst`, its body
    /// compressed if it is worth it: at least `min_bytes` long, sure to fit
    /// the frame size limit compressed, and neither `Hello` nor `Welcome`. Bytes that are not a whole
    /// frame are appended as they are.
    ///
    /// # Errors
    /// If zstd fails; the stream is then unusable (close the connection).
    pub fn push_frame(&mut self, frame: &[u8], dst: &mut BytesMut) -> std::io::Result<()> {
        let (Some(h), Some(body)) = (Header::peek(frame), frame.get(HEADER_LEN..)) else {
            dst.extend_from_slice(frame);
            return Ok(());
        };
        if body.len() != h.len as usize || !self.wants(&h) {
            dst.extend_from_slice(frame);
            return Ok(());
        }
        self.compress(body)?;
        let len = u32::try_from(self.scratch.len()).map_err(std::io::Error::other)?;
        Header {
            len,
            flags: h.flags | flags::COMPRESSED,
            ..h
        }
        .put(dst);
        dst.extend_from_slice(&self.scratch);
        self.totals.add(body.len(), self.scratch.len());
        Ok(())
    }

    /// Appends whole frames written back to back (what an outbox drains)
    /// to `dst`, each compressed or not by [`Compressor::push_frame`].
    ///
    /// # Errors
    /// As [`Compressor::push_frame`].
    pub fn push_frames(&mut self, mut frames: &[u8], dst: &mut BytesMut) -> std::io::Result<()> {
        while let Some(h) = Header::peek(frames) {
            let end = HEADER_LEN.saturating_add(h.len as usize).min(frames.len());
            let (one, rest) = frames.split_at(end);
            self.push_frame(one, dst)?;
            frames = rest;
        }
        // A partial header (never produced by an encoder): as it is.
        dst.extend_from_slice(frames);
        Ok(())
    }

    /// Encodes `frame` and appends it to `dst`, compressed when worth it.
    ///
    /// # Errors
    /// If the frame does not encode, or zstd fails.
    pub fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), EncodeError> {
        let plain = frame.to_bytes()?;
        self.push_frame(&plain, dst)?;
        Ok(())
    }

    /// The counts since the last call, which resets them.
    pub fn take_totals(&mut self) -> Totals {
        std::mem::take(&mut self.totals)
    }

    /// The memory this compressor holds, in bytes: zstd's context (as
    /// zstd accounts it) and the scratch space.
    pub fn memory(&self) -> usize {
        self.zstd.sizeof() + self.scratch.capacity()
    }

    /// Compresses `body` into `scratch` and flushes, so that the receiver
    /// can decode everything up to the end of the body.
    fn compress(&mut self, body: &[u8]) -> std::io::Result<()> {
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(body.len()) + 32);
        let mut input = InBuffer::around(body);
        while input.pos() < body.len() {
            if self.scratch.capacity() == self.scratch.len() {
                self.scratch.reserve(CHUNK);
            }
            let at = self.scratch.len();
            let mut out = OutBuffer::around_pos(&mut self.scratch, at);
            self.zstd
                .compress_stream(&mut out, &mut input)
                .map_err(zstd_error)?;
        }
        loop {
            if self.scratch.capacity() == self.scratch.len() {
                self.scratch.reserve(CHUNK);
            }
            let at = self.scratch.len();
            let mut out = OutBuffer::around_pos(&mut self.scratch, at);
            if self.zstd.flush_stream(&mut out).map_err(zstd_error)? == 0 {
                // The scratch space keeps the size of a large body only
                // until the next small one.
                if self.scratch.capacity() > CHUNK && self.scratch.len() < CHUNK {
                    self.scratch.shrink_to(CHUNK);
                }
                return Ok(());
            }
        }
    }
}

/// Whether a frame with this header is sent compressed by a
/// [`Compressor`] made with `min_bytes` and `max_frame_len`: a body of at
/// least `min_bytes` whose worst-case compressed size fits the frame size
/// limit, and never the handshake (`Hello`, `Welcome`), nor a frame
/// already compressed.
pub fn worth_compressing(h: &Header, min_bytes: usize, max_frame_len: u32) -> bool {
    let len = h.len as usize;
    len >= min_bytes
        && zstd::zstd_safe::compress_bound(len) <= max_frame_len as usize
        && h.flags & flags::COMPRESSED == 0
        && !matches!(h.frame_type, frame_type::Hello | frame_type::Welcome)
}

/// Whether any of the whole frames written back to back in `frames` is
/// [`worth_compressing`]: a sender that holds no context yet makes one
/// only for such a batch.
pub fn any_worth_compressing(mut frames: &[u8], min_bytes: usize, max_frame_len: u32) -> bool {
    while let Some(h) = Header::peek(frames) {
        if worth_compressing(&h, min_bytes, max_frame_len) {
            return true;
        }
        let end = HEADER_LEN.saturating_add(h.len as usize).min(frames.len());
        frames = frames.get(end..).unwrap_or_default();
    }
    false
}

/// A zstd error code as an I/O error.
fn zstd_error(code: usize) -> std::io::Error {
    std::io::Error::other(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
}

/// Why [`Compressor::encode`] failed.
#[derive(Debug)]
pub enum EncodeError {
    /// The frame does not encode.
    Codec(CodecError),
    /// zstd failed.
    Io(std::io::Error),
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EncodeError::Codec(e) => e.fmt(f),
            EncodeError::Io(e) => write!(f, "compression failed: {e}"),
        }
    }
}

impl std::error::Error for EncodeError {}

impl From<CodecError> for EncodeError {
    fn from(e: CodecError) -> Self {
        EncodeError::Codec(e)
    }
}

impl From<std::io::Error> for EncodeError {
    fn from(e: std::io::Error) -> Self {
        EncodeError::Io(e)
    }
}

/// The receiving side of one compressed stream. Its zstd context is made
/// on the first compressed frame.
#[derive(Default)]
pub struct Decompressor {
    zstd: Option<DCtx<'static>>,
    chunk: Vec<u8>,
    totals: Totals,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor")
            .field("started", &self.zstd.is_some())
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

impl Decompressor {
    /// A decompressor for a stream whose peer agreed on compression.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counts since the last call, which resets them.
    pub fn take_totals(&mut self) -> Totals {
        std::mem::take(&mut self.totals)
    }

    /// The memory this decompressor holds, in bytes: zstd's context (0
    /// before the first compressed frame) and the output chunk.
    pub fn memory(&self) -> usize {
        self.zstd.as_ref().map_or(0, DCtx::sizeof) + self.chunk.capacity()
    }

    /// Inflates one frame's compressed body, holding at most `max_len`
    /// bytes (plus one chunk) of output.
    ///
    /// # Errors
    /// [`CodecError::FrameTooLarge`] if the body inflates past `max_len`;
    /// [`CodecError::BadCompression`] if it is not the continuation of this
    /// stream's zstd data. Either way the stream is unusable.
    pub fn decompress(&mut self, body: &[u8], max_len: u32) -> Result<Bytes, CodecError> {
        let bad = |reason| CodecError::BadCompression { reason };
        let zstd = match &mut self.zstd {
            Some(z) => z,
            None => {
                let mut z = DCtx::try_create().ok_or(bad("cannot allocate a decoder"))?;
                z.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
                    .map_err(|_| bad("cannot bound the window"))?;
                self.zstd.insert(z)
            }
        };
        if self.chunk.len() != CHUNK {
            self.chunk = vec![0; CHUNK];
        }
        let max = max_len as usize;
        let mut plain = BytesMut::new();
        let mut input = InBuffer::around(body);
        loop {
            let mut out = OutBuffer::around(&mut self.chunk[..]);
            zstd.decompress_stream(&mut out, &mut input)
                .map_err(|_| bad("not valid zstd data for this stream"))?;
            let produced = out.pos();
            if plain.len().saturating_add(produced) > max {
                return Err(CodecError::FrameTooLarge {
                    len: (plain.len() + produced) as u64,
                    max: max_len,
                });
            }
            plain.extend_from_slice(self.chunk.get(..produced).unwrap_or_default());
            // All input read and the output not full: everything this
            // body holds has come out (zstd's streaming contract).
            if input.pos() == body.len() && produced < CHUNK {
                break;
            }
        }
        self.totals.add(plain.len(), body.len());
        Ok(plain.freeze())
    }
}

/// Decodes one frame from the front of `src`, like [`Frame::decode`], and
/// inflates a body sent with the `COMPRESSED` flag through `inflate`: the
/// stream's decompressor, or `None` where compression was not agreed on
/// (then the flag is [`CodecError::BadCompression`]). The flag is cleared
/// in the frame returned. The declared (compressed) length is checked
/// against `max_frame_len` before anything is buffered, and so is the
/// inflated length.
///
/// # Errors
/// As [`Frame::decode`], and [`Decompressor::decompress`].
pub fn decode(
    src: &mut BytesMut,
    max_frame_len: u32,
    inflate: Option<&mut Decompressor>,
) -> Result<Option<Frame>, CodecError> {
    let Some(h) = Header::peek(src) else {
        return Ok(None);
    };
    if h.flags & flags::COMPRESSED == 0 {
        return Frame::decode(src, max_frame_len);
    }
    h.check(max_frame_len)?;
    let total = HEADER_LEN + h.len as usize;
    if src.len() < total {
        return Ok(None);
    }
    let frame = src.split_to(total).freeze();
    let body = frame.slice(HEADER_LEN..);
    let Some(d) = inflate else {
        return Err(CodecError::BadCompression {
            reason: "COMPRESSED flag on a connection that did not agree on compression",
        });
    };
    let plain = d.decompress(&body, max_frame_len)?;
    let header = Header {
        len: u32::try_from(plain.len()).unwrap_or(u32::MAX),
        flags: h.flags & !flags::COMPRESSED,
        ..h
    };
    Frame::decode_body(header, plain).map(Some)
}

#[cfg(test)]
mod tests;
