//! The writer half of a connection: drains the outbox into the transport.
//! On a byte stream, one task writes many frames per write call; on QUIC,
//! see `quic_writer.rs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use confab_codec::{ErrorCode, ErrorFrame};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::connection::reject;
use super::quic_writer::{self, QuicEgress};
use crate::fanout::{Drained, Outbox};

/// Why the writer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriterEnd {
    /// The outbox was closed and everything in it was sent.
    Finished,
    /// The socket failed.
    SocketError,
    /// The socket accepted nothing for the slow-consumer timeout.
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
    let WriterCtx {
        outbox,
        batch_bytes,
        slow_timeout,
        session_id,
        done,
    } = ctx;
    let mut buf = BytesMut::with_capacity(batch_bytes * 2);
    let end = loop {
        match outbox.drain_into(&mut buf, batch_bytes) {
            // The flush matters for TLS, which may hold the tail of a write
            // in its session buffer; on plain TCP it does nothing.
            Drained::Frames => match tokio::time::timeout(slow_timeout, async {
                wr.write_all(&buf).await?;
                wr.flush().await
            })
            .await
            {
                Ok(Ok(())) => buf.clear(),
                Ok(Err(e)) => {
                    debug!(session_id, error = %e, "write failed");
                    break WriterEnd::SocketError;
                }
                Err(_) => {
                    info!(
                        session_id,
                        timeout_ms = slow_timeout.as_millis() as u64,
                        "slow consumer: socket accepted nothing in time, disconnecting"
                    );
                    break WriterEnd::SlowConsumer;
                }
            },
            Drained::Empty => outbox.ready().await,
            Drained::Finished => {
                let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
                break WriterEnd::Finished;
            }
        }
    };
    outbox.abort();
    done.cancel();
    end
}
