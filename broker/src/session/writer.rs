//! The writer half of a connection: drains the outbox into the socket, many
//! frames per write.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

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

pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    outbox: Arc<Outbox>,
    batch_bytes: usize,
    slow_timeout: Duration,
    session_id: u64,
    done: CancellationToken,
) -> WriterEnd {
    let mut buf = BytesMut::with_capacity(batch_bytes * 2);
    let end = loop {
        match outbox.drain_into(&mut buf, batch_bytes) {
            Drained::Frames => match tokio::time::timeout(slow_timeout, wr.write_all(&buf)).await {
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
