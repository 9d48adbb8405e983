//! The writer of a QUIC connection: frames are routed to streams.
//!
//! - The control lane (replies, `SubscribeAck`, `Goodbye`, ...) goes on the
//!   bidirectional control stream the client opened, at a higher priority.
//! - Each event lane goes on its own unidirectional stream, opened by the
//!   broker when the lane first has something to send. A room always uses
//!   the same lane, so its events stay in order; a stalled or lossy stream
//!   holds back only the rooms of its own lane.
//!
//! Every lane is drained by its own future, all polled by one task. When the
//! outbox is closed and drained, every stream is finished and the
//! connection closed once the peer acknowledged the data (or left), within
//! [`FINISH_GRACE`].
//!
//! Slow consumers: each stream is judged on its own. A stream that has
//! bytes waiting and accepts none of them for the slow-consumer timeout
//! (its QUIC flow-control credit stays exhausted: the device does not read
//! it) ends the connection; a stream that takes bytes, however few, is
//! progress. Per stream, because a device must read every stream (protocol
//! 2.1): one that reads its control stream but never an event stream would
//! otherwise hold that stream's rooms stalled for as long as it stays.
//! On a cut every lane stops at its next step; the control stream gets the
//! rest of its frame in flight and `Goodbye{SlowConsumer}`, is finished,
//! and the connection is closed once the peer acknowledged it (code 0) or
//! after one more timeout (code `SlowConsumer`). Event streams are not
//! finished: the connection close ends them, so a frame cut short on one
//! is never followed by a clean end of stream.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use confab_codec::ErrorCode;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::batch::{Batch, Cursor};
use super::writer::{
    cancelled, slow_consumer, with_goodbye, write_progress, Progress, WriterCtx, WriterEnd,
};
use crate::fanout::{Drained, Outbox, Source};

/// How long finished streams may take to be acknowledged before the
/// connection is closed anyway.
const FINISH_GRACE: Duration = Duration::from_secs(2);

/// QUIC application close code after a `Goodbye` (protocol section 2.1).
const CLOSE_NORMAL: u32 = 0;

/// A QUIC connection and its control stream.
pub(crate) struct QuicEgress {
    pub(crate) conn: quinn::Connection,
    pub(crate) control: quinn::SendStream,
}

impl QuicEgress {
    /// After a refusal was written on the control stream: finish it, wait
    /// (briefly) for the peer to have it, and close the connection.
    pub(crate) async fn close_after_control(&mut self, code: ErrorCode) {
        let _ = self.control.finish();
        let _ = tokio::time::timeout(FINISH_GRACE, self.control.stopped()).await;
        self.conn
            .close(quinn::VarInt::from(code as u16), code.as_str().as_bytes());
    }
}

/// How one lane's drain ended.
struct LaneEnd {
    source: Source,
    /// `Finished` also for a lane told to stop.
    end: WriterEnd,
    /// The lane's stream, when it was opened and not finished.
    stream: Option<quinn::SendStream>,
    /// The rest of the frame in flight on that stream.
    tail: Bytes,
}

/// Drains the outbox into the control stream and the event streams until
/// the outbox is finished or a stream fails or stalls.
pub(crate) async fn write_loop(q: QuicEgress, ctx: WriterCtx) -> WriterEnd {
    let QuicEgress { conn, control } = q;
    // Replies before events when both wait, as on a byte stream.
    let _ = control.set_priority(1);
    let stop = CancellationToken::new();
    let mut lanes = FuturesUnordered::new();
    lanes.push(drain_lane(
        Some(control),
        conn.clone(),
        Source::Control,
        &ctx,
        &stop,
    ));
    for lane in 0..ctx.outbox.event_lanes() {
        lanes.push(drain_lane(
            None,
            conn.clone(),
            Source::Events(lane),
            &ctx,
            &stop,
        ));
    }
    let mut end = WriterEnd::Finished;
    let mut control = None;
    // Kept unfinished until the connection is closed (dropping a quinn
    // stream finishes it).
    let mut streams = Vec::new();
    while let Some(lane) = lanes.next().await {
        if lane.end != WriterEnd::Finished && end == WriterEnd::Finished {
            end = lane.end;
            stop.cancel();
            if end == WriterEnd::SlowConsumer {
                slow_consumer(&ctx, "a QUIC stream");
            }
        }
        match (lane.source, lane.stream) {
            (Source::Control, Some(s)) => control = Some((s, lane.tail)),
            (_, Some(s)) => streams.push(s),
            (_, None) => {}
        }
    }
    drop(lanes);
    ctx.outbox.abort();
    ctx.done.cancel();
    let code = match end {
        WriterEnd::Finished => CLOSE_NORMAL,
        WriterEnd::SlowConsumer => match control {
            Some((stream, tail)) => farewell(stream, tail, &ctx).await,
            None => slow_consumer_code(),
        },
        WriterEnd::SocketError => ErrorCode::Internal as u16 as u32,
    };
    conn.close(quinn::VarInt::from(code), b"");
    drop(streams);
    end
}

fn slow_consumer_code() -> u32 {
    ErrorCode::SlowConsumer as u16 as u32
}

/// Completes the control stream's frame in flight, sends
/// `Goodbye{SlowConsumer}` and finishes the stream, within one more
/// slow-consumer timeout of no progress. Returns the close code: 0 if the
/// peer acknowledged the `Goodbye`.
async fn farewell(mut control: quinn::SendStream, tail: Bytes, ctx: &WriterCtx) -> u32 {
    let bytes = with_goodbye(tail);
    let mut written = 0;
    let sent = write_progress(&mut control, &bytes, &mut written, ctx.slow_timeout, None).await;
    if !matches!(sent, Progress::Done) || control.finish().is_err() {
        return slow_consumer_code();
    }
    match tokio::time::timeout(ctx.slow_timeout, control.stopped()).await {
        Ok(Ok(None)) => CLOSE_NORMAL,
        _ => slow_consumer_code(),
    }
}

/// Drains one source into one stream (opened on first use when `stream`
/// is None), until the source is finished, the stream fails or stalls, or
/// `stop` is cancelled.
async fn drain_lane(
    mut stream: Option<quinn::SendStream>,
    conn: quinn::Connection,
    source: Source,
    ctx: &WriterCtx,
    stop: &CancellationToken,
) -> LaneEnd {
    let outbox: &Arc<Outbox> = &ctx.outbox;
    // One compression context per stream (protocol 3.6): the client
    // decodes each stream on its own. QUIC streams copy what they are
    // given, so the batch is copied once, into a buffer given back when
    // the lane goes idle.
    let mut batch = Batch::new(ctx.compression.clone(), false);
    let ended = |end, stream, tail| LaneEnd {
        source,
        end,
        stream,
        tail,
    };
    loop {
        if stop.is_cancelled() {
            return ended(WriterEnd::Finished, stream, Bytes::new());
        }
        let drained = match batch.fill(outbox, source, ctx.batch_bytes) {
            Ok(d) => d,
            Err(e) => {
                debug!(session_id = ctx.session_id, ?source, error = %e, "compression failed");
                return ended(WriterEnd::SocketError, stream, Bytes::new());
            }
        };
        match drained {
            Drained::Frames => {
                let s = match stream.as_mut() {
                    Some(s) => s,
                    None => {
                        let opened = tokio::select! {
                            biased;
                            _ = stop.cancelled() => return ended(WriterEnd::Finished, None, Bytes::new()),
                            r = tokio::time::timeout(ctx.slow_timeout, conn.open_uni()) => r,
                        };
                        match opened {
                            Ok(Ok(s)) => stream.insert(s),
                            Ok(Err(e)) => {
                                debug!(session_id = ctx.session_id, error = %e, "cannot open an event stream");
                                return ended(WriterEnd::SocketError, None, Bytes::new());
                            }
                            Err(_) => {
                                debug!(
                                    session_id = ctx.session_id,
                                    ?source,
                                    "no stream credit for the timeout"
                                );
                                return ended(WriterEnd::SlowConsumer, None, Bytes::new());
                            }
                        }
                    }
                };
                let mut at = Cursor::default();
                match batch.write(s, &mut at, ctx.slow_timeout, Some(stop)).await {
                    Progress::Done => batch.clear(),
                    Progress::Failed(e) => {
                        debug!(session_id = ctx.session_id, ?source, error = %e, "write failed");
                        return ended(WriterEnd::SocketError, stream, Bytes::new());
                    }
                    Progress::Stalled => {
                        debug!(session_id = ctx.session_id, ?source, "stream stalled");
                        let tail = batch.rest_of_frame(at);
                        return ended(WriterEnd::SlowConsumer, stream, tail);
                    }
                    Progress::Stopped => {
                        let tail = batch.rest_of_frame(at);
                        return ended(WriterEnd::Finished, stream, tail);
                    }
                }
            }
            Drained::Empty => {
                batch.release();
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => {}
                    _ = outbox.ready_for(source) => {}
                }
            }
            Drained::Finished => {
                if let Some(mut s) = stream {
                    let _ = s.finish();
                    tokio::select! {
                        _ = cancelled(Some(stop)) => {}
                        _ = tokio::time::timeout(FINISH_GRACE, s.stopped()) => {}
                    }
                }
                return ended(WriterEnd::Finished, None, Bytes::new());
            }
        }
    }
}
