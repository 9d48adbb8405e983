//! The writer half of a connection: drains the outbox into the transport.
//! On a byte stream, one task writes many frames per write call; on QUIC,
//! see `quic_writer.rs`.
//!
//! Slow consumers (protocol 11.4). A device is cut only when its transport
//! accepts **no byte at all** for the slow-consumer timeout while the writer
//! has bytes for it: every write call that the socket takes even one byte
//! of starts the timeout again. A device that reads, however slowly, is
//! never cut; its rooms fall behind and catch up from the log instead.
//!
//! When a device is cut, the writer releases the session at once (the
//! outbox is emptied and the session ends its subscriptions), then says
//! goodbye within a bounded grace period: it writes the rest of the frame
//! the socket was in the middle of, so the stream never ends inside a
//! frame, then `Goodbye{SlowConsumer}`, then shuts its side down (a FIN,
//! after TLS's close_notify). The session then drains what the peer still
//! sends until it closes too, so that closing never turns into a reset that
//! would destroy the frames still waiting in the peer's receive buffer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use confab_codec::{ErrorCode, ErrorFrame, Frame, Goodbye, Header, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::batch::{Batch, Cursor};
use super::compression::Compression;
use super::connection::reject;
use super::quic_writer::{self, QuicEgress};
use crate::fanout::{Drained, Outbox, Source};

/// Why the writer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// The outbox was closed and everything in it was sent.
    Finished,
    /// The socket failed.
    SocketError,
    /// The transport accepted nothing for the slow-consumer timeout; the
    /// device was cut (and offered a `Goodbye{SlowConsumer}`).
    SlowConsumer,
}

/// Where a session's outbound frames go.
pub(crate) enum Egress<W> {
    /// One byte stream for everything (TCP, TLS).
    Stream(W),
    /// A QUIC connection: its control stream, and event streams it opens.
    Quic(QuicEgress),
}

/// What a writer needs besides its transport.
pub(crate) struct WriterCtx {
    pub(crate) outbox: Arc<Outbox>,
    /// Most bytes per write call.
    pub(crate) batch_bytes: usize,
    /// A stream that accepts nothing this long ends the connection.
    pub(crate) slow_timeout: Duration,
    pub(crate) session_id: u64,
    /// Cancelled when the writer stops, whatever the reason.
    pub(crate) done: CancellationToken,
    /// Set when the connection agreed on compression (protocol 3.6).
    pub(crate) compression: Option<Compression>,
}

impl<W: AsyncWrite + Send + Unpin + 'static> Egress<W> {
    /// Refuses the connection before a session exists: `Error`, `Goodbye`,
    /// then a bounded wait for the bytes to leave, and close.
    pub(crate) async fn reject(&mut self, request_id: u32, code: ErrorCode, message: &str) {
        let error = ErrorFrame {
            code,
            retry_after_ms: 0,
            message: message.to_owned(),
        };
        self.reject_with(request_id, error).await;
    }

    /// [`Egress::reject`] with a complete `Error` (for example one with a
    /// `retry_after_ms`).
    pub(crate) async fn reject_with(&mut self, request_id: u32, error: ErrorFrame) {
        let code = error.code;
        match self {
            Egress::Stream(wr) => reject(wr, request_id, error).await,
            Egress::Quic(q) => {
                reject(&mut q.control, request_id, error).await;
                q.close_after_control(code).await;
            }
        }
    }

    /// Starts the writer task.
    pub(crate) fn spawn_writer(self, ctx: WriterCtx) -> JoinHandle<WriterEnd> {
        match self {
            Egress::Stream(wr) => tokio::spawn(write_loop(wr, ctx)),
            Egress::Quic(q) => tokio::spawn(quic_writer::write_loop(q, ctx)),
        }
    }
}

/// Drains the whole outbox, control first, into one byte stream.
async fn write_loop<W: AsyncWrite + Unpin>(mut wr: W, ctx: WriterCtx) -> WriterEnd {
    let mut batch = Batch::new(ctx.compression.clone(), wr.is_write_vectored());
    // Whether bytes went in since the last flush. The flush matters for TLS,
    // which may hold the tail of a write in its session buffer; on plain TCP
    // it does nothing. It is done when the outbox runs dry, not after every
    // write: TLS sends what the socket takes on every write already, and a
    // flush shows no progress until it is complete.
    let mut unflushed = false;
    let end = loop {
        let drained = match batch.fill(&ctx.outbox, Source::All, ctx.batch_bytes) {
            Ok(d) => d,
            Err(e) => {
                debug!(session_id = ctx.session_id, error = %e, "compression failed");
                break WriterEnd::SocketError;
            }
        };
        match drained {
            Drained::Frames => {
                let mut at = Cursor::default();
                match batch.write(&mut wr, &mut at, ctx.slow_timeout, None).await {
                    Progress::Done => {
                        batch.clear();
                        unflushed = true;
                    }
                    Progress::Failed(e) => {
                        debug!(session_id = ctx.session_id, error = %e, "write failed");
                        break WriterEnd::SocketError;
                    }
                    // (There is no stop token here: `Stopped` does not happen.)
                    Progress::Stalled | Progress::Stopped => {
                        let tail = batch.rest_of_frame(at);
                        // Only the tail is kept through the goodbye.
                        drop(batch);
                        return cut_stream(wr, &ctx, tail).await;
                    }
                }
            }
            Drained::Empty => {
                if unflushed {
                    match tokio::time::timeout(ctx.slow_timeout, wr.flush()).await {
                        Ok(Ok(())) => unflushed = false,
                        Ok(Err(e)) => {
                            debug!(session_id = ctx.session_id, error = %e, "flush failed");
                            break WriterEnd::SocketError;
                        }
                        // Every frame was handed over whole: nothing to complete.
                        Err(_) => {
                            drop(batch);
                            return cut_stream(wr, &ctx, Bytes::new()).await;
                        }
                    }
                }
                // Idle: what a burst grew goes back before waiting (the
                // outbox's queues did so in the drain that found nothing).
                batch.release();
                ctx.outbox.ready().await;
            }
            Drained::Finished => {
                let _ = tokio::time::timeout(SHUTDOWN_WAIT, wr.shutdown()).await;
                break WriterEnd::Finished;
            }
        }
    };
    ctx.outbox.abort();
    ctx.done.cancel();
    end
}

/// The most bytes an accepted TCP socket keeps queued but not yet sent
/// (`TCP_NOTSENT_LOWAT`, Linux).
///
/// Without it the kernel lets a writer fill a send buffer that autotunes up
/// to megabytes, and wakes it only when a third of that buffer is free: a
/// device reading a few KiB/s would look, to the writer, as if it accepted
/// nothing for many seconds, and be cut although it reads. With it the
/// writer is woken each time the unsent bytes fall under half of this, that
/// is every ~8 KiB the device reads: that is the granularity at which the
/// slow-consumer timeout sees progress. It also keeps what a stalled socket
/// holds in the kernel small, and replies from queueing behind megabytes.
/// Bytes in flight are not limited, so throughput is not either.
pub(crate) const TCP_NOTSENT_LOWAT: u32 = 16 << 10;

/// Sets [`TCP_NOTSENT_LOWAT`] on an accepted socket (a no-op where the
/// option does not exist).
pub(crate) fn tune_tcp(stream: &tokio::net::TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(TCP_NOTSENT_LOWAT) {
        debug!(error = %e, "cannot set TCP_NOTSENT_LOWAT");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = stream;
}

/// How long shutting down the write side may take once nothing else is to
/// be sent.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// Ends a byte-stream session whose socket accepted nothing for the
/// timeout: releases the session, then sends `tail` (the rest of the frame
/// in flight) and `Goodbye{SlowConsumer}` within one more timeout of no
/// progress, and shuts the write side down.
async fn cut_stream<W: AsyncWrite + Unpin>(mut wr: W, ctx: &WriterCtx, tail: Bytes) -> WriterEnd {
    slow_consumer(ctx, "the socket");
    let farewell = with_goodbye(tail);
    let mut written = 0;
    let sent = write_progress(&mut wr, &farewell, &mut written, ctx.slow_timeout, None).await;
    let flushed = matches!(sent, Progress::Done)
        && matches!(
            tokio::time::timeout(ctx.slow_timeout, wr.flush()).await,
            Ok(Ok(()))
        );
    debug!(
        session_id = ctx.session_id,
        goodbye_sent = flushed,
        "slow consumer: farewell"
    );
    let _ = tokio::time::timeout(SHUTDOWN_WAIT, wr.shutdown()).await;
    WriterEnd::SlowConsumer
}

/// Records a slow-consumer cut and releases the session: the outbox is
/// emptied (and refuses frames from now on) and the session is told, so it
/// ends its subscriptions while the writer says goodbye.
pub(super) fn slow_consumer(ctx: &WriterCtx, what: &str) {
    info!(
        session_id = ctx.session_id,
        timeout_ms = ctx.slow_timeout.as_millis() as u64,
        "slow consumer: {what} accepted nothing for the timeout, disconnecting"
    );
    ctx.outbox
        .stats()
        .slow_consumer_disconnects
        .fetch_add(1, Ordering::Relaxed);
    ctx.outbox.abort();
    ctx.done.cancel();
}

/// `tail`, then an encoded `Goodbye{SlowConsumer}`.
pub(super) fn with_goodbye(tail: Bytes) -> Bytes {
    let goodbye = Frame::new(Goodbye {
        code: ErrorCode::SlowConsumer,
        message: "the connection accepted nothing for the slow-consumer timeout".into(),
    });
    let mut out = BytesMut::with_capacity(tail.len() + 128);
    out.put_slice(&tail);
    // A Goodbye with a short message always encodes.
    let _ = goodbye.encode(&mut out);
    out.freeze()
}

/// The bytes of `buf` (whole frames back to back) from `written` to the
/// end of the frame that `written` falls into: what must still be sent so
/// that the stream does not end inside a frame.
pub(super) fn rest_of_frame(buf: &[u8], written: usize) -> Bytes {
    let mut end = 0usize;
    while end < written {
        let Some(h) = buf.get(end..).and_then(Header::peek) else {
            break;
        };
        end = end
            .saturating_add(HEADER_LEN)
            .saturating_add(h.len as usize);
    }
    let end = end.min(buf.len());
    Bytes::copy_from_slice(buf.get(written..end).unwrap_or_default())
}

/// How a write of a whole buffer went.
#[derive(Debug)]
pub(super) enum Progress {
    /// Every byte was accepted.
    Done,
    /// No byte was accepted for the timeout.
    Stalled,
    /// `stop` was cancelled between two writes.
    Stopped,
    /// The transport failed.
    Failed(std::io::Error),
}

/// Writes `data[*written..]`, advancing `written` by what each write call
/// accepts. The timeout measures lack of progress: it starts again with
/// every write that the transport takes at least one byte of. `write` is
/// cancel safe, so `written` is exact even when `stop` interrupts it.
pub(super) async fn write_progress<W: AsyncWrite + Unpin>(
    wr: &mut W,
    data: &[u8],
    written: &mut usize,
    timeout: Duration,
    stop: Option<&CancellationToken>,
) -> Progress {
    while let Some(rest) = data.get(*written..).filter(|r| !r.is_empty()) {
        let step = tokio::select! {
            biased;
            _ = cancelled(stop) => return Progress::Stopped,
            r = tokio::time::timeout(timeout, wr.write(rest)) => r,
        };
        match step {
            Ok(Ok(0)) => return Progress::Failed(std::io::ErrorKind::WriteZero.into()),
            Ok(Ok(n)) => *written += n,
            Ok(Err(e)) => return Progress::Failed(e),
            Err(_) => return Progress::Stalled,
        }
    }
    Progress::Done
}

/// Waits for `stop`, forever without one.
pub(super) async fn cancelled(stop: Option<&CancellationToken>) {
    match stop {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

/// Waits for the writer after the outbox was closed. A writer still
/// draining after `grace` is abandoned (its outbox aborted), unless it has
/// already stopped taking frames (`done`): it is then saying goodbye to a
/// slow consumer, which it bounds itself. A writer that panicked or was
/// abandoned counts as a socket error.
pub(crate) async fn join(
    mut writer: JoinHandle<WriterEnd>,
    outbox: &Outbox,
    done: &CancellationToken,
    grace: Duration,
) -> WriterEnd {
    tokio::select! {
        r = &mut writer => return r.unwrap_or(WriterEnd::SocketError),
        _ = tokio::time::sleep(grace) => {}
    }
    if done.is_cancelled() {
        return writer.await.unwrap_or(WriterEnd::SocketError);
    }
    outbox.abort();
    WriterEnd::SocketError
}

/// After a slow-consumer cut (the write side is shut down): reads and
/// discards what the peer still sends until it closes, for at most `max`.
/// Closing a TCP socket with unread received bytes sends a reset, and a
/// reset makes the peer drop what it has not read yet, the `Goodbye`
/// included; a peer that read everything closes its side, and then ours
/// closes cleanly.
pub(crate) async fn linger<R: AsyncRead + Unpin>(
    rd: &mut R,
    max: Duration,
    shutdown: &CancellationToken,
) {
    // On the heap, and only now: a buffer in the future itself would make
    // every connection's task 4 KiB larger for its whole life.
    let mut sink = vec![0u8; 4096];
    let drain = async {
        while let Ok(n) = rd.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(max, drain) => {}
        _ = shutdown.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confab_codec::{Body, Ping};
    use tokio::io::DuplexStream;

    fn ping(nonce: u64) -> Bytes {
        Frame::new(Ping { nonce }).to_bytes().expect("encode")
    }

    fn ctx(outbox: &Arc<Outbox>, slow_timeout: Duration) -> WriterCtx {
        WriterCtx {
            outbox: outbox.clone(),
            batch_bytes: 4096,
            slow_timeout,
            session_id: 1,
            done: CancellationToken::new(),
            compression: None,
        }
    }

    /// Decodes every frame of `bytes`; panics on a torn or invalid one.
    fn frames(mut bytes: BytesMut) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = Frame::decode(&mut bytes, 1 << 20).expect("valid frames") {
            out.push(f);
        }
        assert!(
            bytes.is_empty(),
            "{} bytes of a torn frame at the end",
            bytes.len()
        );
        out
    }

    async fn read_to_end(rd: &mut DuplexStream) -> BytesMut {
        let mut all = BytesMut::new();
        while rd.read_buf(&mut all).await.expect("read") > 0 {}
        all
    }

    #[test]
    fn the_rest_of_the_frame_in_flight_is_found_from_the_headers() {
        let (a, b) = (ping(1), ping(2));
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&a);
        buf.extend_from_slice(&b);
        assert!(rest_of_frame(&buf, 0).is_empty(), "nothing started");
        assert!(rest_of_frame(&buf, a.len()).is_empty(), "at a boundary");
        assert_eq!(rest_of_frame(&buf, a.len() + 3), b.slice(3..));
        assert_eq!(rest_of_frame(&buf, 1), a.slice(1..));
        let farewell = with_goodbye(a.slice(4..));
        let mut whole = BytesMut::from(&a[..4]);
        whole.extend_from_slice(&farewell);
        let got = frames(whole);
        assert!(matches!(got[0].body, Body::Ping(_)));
        match &got[1].body {
            Body::Goodbye(g) => assert_eq!(g.code, ErrorCode::SlowConsumer),
            other => panic!("expected Goodbye, got {other:?}"),
        }
    }

    /// A peer that reads nothing: cut after the timeout; when it reads
    /// again it gets whole frames, the Goodbye, then the end of the stream.
    #[tokio::test]
    async fn a_peer_that_reads_nothing_gets_whole_frames_goodbye_and_eof() {
        let outbox = Arc::new(Outbox::new(1 << 16, Arc::default()));
        for n in 0..2000 {
            outbox.push_control(ping(n));
        }
        let (wr, mut rd) = tokio::io::duplex(1000);
        let ctx = ctx(&outbox, Duration::from_millis(200));
        let done = ctx.done.clone();
        let writer = tokio::spawn(write_loop(wr, ctx));
        tokio::time::timeout(Duration::from_secs(10), done.cancelled())
            .await
            .expect("cut");
        assert_eq!(outbox.depth(), 0, "the session's queue is released at once");
        assert_eq!(
            outbox
                .stats()
                .slow_consumer_disconnects
                .load(Ordering::Relaxed),
            1
        );
        let got = frames(read_to_end(&mut rd).await);
        assert_eq!(writer.await.expect("joined"), WriterEnd::SlowConsumer);
        let (last, rest) = got.split_last().expect("frames");
        assert!(matches!(&last.body, Body::Goodbye(g) if g.code == ErrorCode::SlowConsumer));
        assert!(rest.iter().all(|f| matches!(f.body, Body::Ping(_))));
        assert!(rest.len() < 2000, "cut before everything went");
    }

    /// A peer that reads a few bytes at a time, so slowly that one batch
    /// takes many timeouts but never idle for one, is never cut.
    #[tokio::test]
    async fn a_peer_that_reads_slowly_is_never_cut() {
        let outbox = Arc::new(Outbox::new(1 << 16, Arc::default()));
        let sent: Vec<Bytes> = (0..40).map(ping).collect();
        for f in &sent {
            outbox.push_control(f.clone());
        }
        outbox.close();
        let total: usize = sent.iter().map(Bytes::len).sum();
        let (wr, mut rd) = tokio::io::duplex(16);
        let ctx = ctx(&outbox, Duration::from_millis(500));
        let writer = tokio::spawn(write_loop(wr, ctx));
        let mut got = BytesMut::new();
        let mut chunk = [0u8; 16];
        // 16 bytes every 50 ms: the one batch takes over 2 s, 4 timeouts.
        while got.len() < total {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let n = rd.read(&mut chunk).await.expect("read");
            assert!(n > 0, "the writer ended the stream early");
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(writer.await.expect("joined"), WriterEnd::Finished);
        assert_eq!(frames(got).len(), sent.len());
    }
}
