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

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use confab_codec::ErrorCode;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tracing::{debug, info};

use super::writer::{WriterCtx, WriterEnd};
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

/// Drains the outbox into the control stream and the event streams until
/// the outbox is finished or a stream fails.
pub(crate) async fn write_loop(q: QuicEgress, ctx: WriterCtx) -> WriterEnd {
    let QuicEgress { conn, control } = q;
    // Replies before events when both wait, as on a byte stream.
    let _ = control.set_priority(1);
    let mut lanes = FuturesUnordered::new();
    lanes.push(drain_lane(
        Some(control),
        conn.clone(),
        Source::Control,
        &ctx,
    ));
    for lane in 0..ctx.outbox.event_lanes() {
        lanes.push(drain_lane(None, conn.clone(), Source::Events(lane), &ctx));
    }
    let mut end = WriterEnd::Finished;
    while let Some(lane_end) = lanes.next().await {
        if lane_end != WriterEnd::Finished {
            end = lane_end;
            break;
        }
    }
    drop(lanes);
    ctx.outbox.abort();
    ctx.done.cancel();
    let code = match end {
        WriterEnd::Finished => CLOSE_NORMAL,
        WriterEnd::SlowConsumer => ErrorCode::SlowConsumer as u16 as u32,
        WriterEnd::SocketError => ErrorCode::Internal as u16 as u32,
    };
    conn.close(quinn::VarInt::from(code), b"");
    end
}

/// Drains one source into one stream (opened on first use when `stream`
/// is None).
async fn drain_lane(
    mut stream: Option<quinn::SendStream>,
    conn: quinn::Connection,
    source: Source,
    ctx: &WriterCtx,
) -> WriterEnd {
    let outbox: &Arc<Outbox> = &ctx.outbox;
    let mut buf = BytesMut::with_capacity(ctx.batch_bytes * 2);
    loop {
        match outbox.drain(source, &mut buf, ctx.batch_bytes) {
            Drained::Frames => {
                let s = match stream.as_mut() {
                    Some(s) => s,
                    None => match tokio::time::timeout(ctx.slow_timeout, conn.open_uni()).await {
                        Ok(Ok(s)) => stream.insert(s),
                        Ok(Err(e)) => {
                            debug!(session_id = ctx.session_id, error = %e, "cannot open an event stream");
                            return WriterEnd::SocketError;
                        }
                        Err(_) => return slow(ctx, source),
                    },
                };
                match tokio::time::timeout(ctx.slow_timeout, s.write_all(&buf)).await {
                    Ok(Ok(())) => buf.clear(),
                    Ok(Err(e)) => {
                        debug!(session_id = ctx.session_id, ?source, error = %e, "write failed");
                        return WriterEnd::SocketError;
                    }
                    Err(_) => return slow(ctx, source),
                }
            }
            Drained::Empty => outbox.ready_for(source).await,
            Drained::Finished => {
                if let Some(mut s) = stream {
                    let _ = s.finish();
                    let _ = tokio::time::timeout(FINISH_GRACE, s.stopped()).await;
                }
                return WriterEnd::Finished;
            }
        }
    }
}

fn slow(ctx: &WriterCtx, source: Source) -> WriterEnd {
    info!(
        session_id = ctx.session_id,
        ?source,
        timeout_ms = ctx.slow_timeout.as_millis() as u64,
        "slow consumer: a stream accepted nothing in time, disconnecting"
    );
    WriterEnd::SlowConsumer
}
