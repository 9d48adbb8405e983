//! What one writer sends per write: a batch of frames taken off the
//! outbox, and how it is written.
//!
//! On a transport that takes vectored writes (TCP, TLS), a batch is the
//! queued frames' own handles, written with one `writev` per batch: the
//! frames the fan-out encoded once are shared by every recipient until the
//! socket takes them, and a device's writer holds no copy of them. That is
//! what keeps a busy connection's memory small (with 10,000 subscribers,
//! each writer used to copy up to `write_batch_bytes` into a buffer of
//! its own). Compressed streams and transports without vectored writes
//! (WebSocket, QUIC streams) copy the batch into one buffer, as they must
//! transform or frame it anyway; that buffer is sized by what the batch
//! needs and given back when the writer goes idle.

use std::io::IoSlice;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::compression::{Compression, Deflate};
use super::writer::{cancelled, rest_of_frame, Progress};
use crate::fanout::{Drained, Outbox, Source};

/// Frame handles a batch keeps room for between writes; a larger list is
/// given back when the writer goes idle.
const IDLE_FRAMES: usize = 32;

/// Buffer bytes the copying path keeps between writes when idle.
const IDLE_BUF: usize = 16 << 10;

/// Most frames per batch, and so slices per vectored write call (Linux's
/// `IOV_MAX` is 1,024). With chat-sized frames (~200 bytes) a batch is
/// ~25 KiB: few enough handles for a busy device's writer to hold 4 KiB.
const MAX_SLICES: usize = 128;

/// One stream's batch of frames to write.
pub(super) struct Batch {
    /// The frames of the batch, each starting at a frame boundary and
    /// holding whole frames.
    frames: Vec<Bytes>,
    /// The copying path's buffer (compression, or no vectored writes).
    buf: BytesMut,
    deflate: Deflate,
    /// Whether to copy the batch into `buf` rather than write the frames'
    /// own handles.
    copy: bool,
}

/// How far a batch has been written: frame `index`, byte `offset` in it.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Cursor {
    index: usize,
    offset: usize,
}

impl Batch {
    /// A batch for a stream that compresses with `compression` (if any)
    /// and takes vectored writes if `vectored`.
    pub(super) fn new(compression: Option<Compression>, vectored: bool) -> Self {
        Self {
            copy: compression.is_some() || !vectored,
            frames: Vec::new(),
            buf: BytesMut::new(),
            deflate: Deflate::new(compression),
        }
    }

    /// Takes the next batch of `source`, about `max_bytes`, off the outbox.
    ///
    /// # Errors
    /// If compression fails: the stream cannot go on.
    pub(super) fn fill(
        &mut self,
        outbox: &Outbox,
        source: Source,
        max_bytes: usize,
    ) -> std::io::Result<Drained> {
        self.frames.clear();
        if !self.copy {
            return Ok(outbox.drain_frames(source, &mut self.frames, max_bytes, MAX_SLICES));
        }
        let drained = self
            .deflate
            .drain(outbox, source, &mut self.buf, max_bytes)?;
        if drained == Drained::Frames {
            // `split` keeps the allocation: once the write is done and the
            // handle dropped, the next batch reuses it.
            self.frames.push(self.buf.split().freeze());
        }
        Ok(drained)
    }

    /// Lets go of the frames written (the fan-out's shared buffers).
    pub(super) fn clear(&mut self) {
        self.frames.clear();
    }

    /// Gives back what a burst grew (called when the writer goes idle).
    pub(super) fn release(&mut self) {
        self.frames.clear();
        if self.frames.capacity() > IDLE_FRAMES {
            self.frames = Vec::new();
        }
        if self.buf.capacity() > IDLE_BUF {
            self.buf = BytesMut::new();
        }
    }

    /// Writes the batch from `at` on, advancing `at` by what each write
    /// call accepts. As [`super::writer::write_progress`]: the timeout
    /// measures lack of progress, and `at` is exact even when `stop`
    /// interrupts a write (`write_vectored` is cancel safe).
    pub(super) async fn write<W: AsyncWrite + Unpin>(
        &self,
        wr: &mut W,
        at: &mut Cursor,
        timeout: Duration,
        stop: Option<&CancellationToken>,
    ) -> Progress {
        loop {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            let mut offset = at.offset;
            for frame in self.frames.iter().skip(at.index) {
                let Some(rest) = frame.get(offset..).filter(|r| !r.is_empty()) else {
                    offset = 0;
                    continue;
                };
                let Some(slot) = slices.get_mut(n) else {
                    break;
                };
                *slot = IoSlice::new(rest);
                n += 1;
                offset = 0;
            }
            let Some(slices) = slices.get(..n).filter(|s| !s.is_empty()) else {
                return Progress::Done;
            };
            let step = tokio::select! {
                biased;
                _ = cancelled(stop) => return Progress::Stopped,
                r = tokio::time::timeout(timeout, wr.write_vectored(slices)) => r,
            };
            match step {
                Ok(Ok(0)) => return Progress::Failed(std::io::ErrorKind::WriteZero.into()),
                Ok(Ok(written)) => self.advance(at, written),
                Ok(Err(e)) => return Progress::Failed(e),
                Err(_) => return Progress::Stalled,
            }
        }
    }

    /// Moves `at` forward by `written` bytes.
    fn advance(&self, at: &mut Cursor, mut written: usize) {
        while written > 0 {
            let Some(frame) = self.frames.get(at.index) else {
                return;
            };
            let left = frame.len().saturating_sub(at.offset);
            if written < left {
                at.offset += written;
                return;
            }
            written -= left;
            at.index += 1;
            at.offset = 0;
        }
    }

    /// What must still be sent from `at` so that the stream does not end
    /// inside a frame: the rest of the frame `at` falls into.
    pub(super) fn rest_of_frame(&self, at: Cursor) -> Bytes {
        match self.frames.get(at.index) {
            Some(frame) if at.offset > 0 => rest_of_frame(frame, at.offset),
            _ => Bytes::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    /// A writer that takes at most `max` bytes per call, vectored or not.
    struct Trickle {
        got: Vec<u8>,
        max: usize,
        vectored: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let n = buf.len().min(self.max);
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.max - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
                if n == self.max {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            self.vectored
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn ping(nonce: u64) -> Bytes {
        confab_codec::Frame::new(confab_codec::Ping { nonce })
            .to_bytes()
            .expect("encode")
    }

    /// Every byte arrives once and in order, whatever each write call
    /// takes, on both paths, and a batch over the slice limit goes in
    /// several calls.
    #[tokio::test]
    async fn partial_writes_send_every_byte_once_in_order() {
        for vectored in [true, false] {
            for max in [1, 7, 100, 1 << 20] {
                let outbox = Outbox::new(1 << 12, Arc::default());
                let sent: Vec<Bytes> = (0..300).map(ping).collect();
                for f in &sent {
                    outbox.push_control(f.clone());
                }
                let mut batch = Batch::new(None, vectored);
                let mut wr = Trickle {
                    got: Vec::new(),
                    max,
                    vectored,
                };
                while batch.fill(&outbox, Source::All, 1 << 20).expect("fill") == Drained::Frames {
                    let mut at = Cursor::default();
                    let p = batch
                        .write(&mut wr, &mut at, Duration::from_secs(5), None)
                        .await;
                    assert!(matches!(p, Progress::Done), "{p:?}");
                    batch.clear();
                }
                assert_eq!(wr.got, sent.concat(), "vectored {vectored}, max {max}");
            }
        }
    }

    /// The rest of the frame in flight is found from the cursor, on a
    /// frame boundary it is nothing.
    #[test]
    fn the_rest_of_the_frame_comes_from_the_cursor() {
        let outbox = Outbox::new(16, Arc::default());
        let (a, b) = (ping(1), ping(2));
        outbox.push_control(a.clone());
        outbox.push_control(b.clone());
        let mut batch = Batch::new(None, true);
        assert_eq!(
            batch.fill(&outbox, Source::All, 1 << 20).expect("fill"),
            Drained::Frames
        );
        let mut at = Cursor::default();
        assert!(batch.rest_of_frame(at).is_empty());
        batch.advance(&mut at, a.len() + 3);
        assert_eq!(batch.rest_of_frame(at), b.slice(3..));
        batch.advance(&mut at, b.len() - 3);
        assert!(batch.rest_of_frame(at).is_empty());
    }

    /// Idle, a batch that a burst grew gives its memory back.
    #[test]
    fn an_idle_batch_gives_back_what_a_burst_grew() {
        let outbox = Outbox::new(1 << 12, Arc::default());
        for n in 0..1000 {
            outbox.push_control(ping(n));
        }
        for vectored in [true, false] {
            let mut batch = Batch::new(None, vectored);
            batch.fill(&outbox, Source::All, 1 << 14).expect("fill");
            batch.release();
            assert!(batch.frames.capacity() <= IDLE_FRAMES);
            assert!(batch.buf.capacity() <= IDLE_BUF);
        }
    }
}
