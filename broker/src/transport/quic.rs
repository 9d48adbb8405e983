//! QUIC: the accept loop. A connection's first bidirectional stream, which
//! the client opens, is its control stream; the session then opens the
//! event streams (protocol section 2.1).

use std::sync::Arc;

use confab_codec::ErrorCode;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::session::{refuse_quic, serve_quic};
use crate::shared::Shared;

/// Accepts until shutdown. Admission control is shared with the other
/// listeners: without a permit, the connection is answered `ServerBusy` on
/// its control stream and closed. The QUIC handshake and the opening of the
/// control stream must both complete within the handshake timeout.
pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    tasks: TaskTracker,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shared.shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else {
            break;
        };
        let permit = shared.conn_permits.clone().try_acquire_owned().ok();
        let shared = shared.clone();
        tasks.spawn(async move {
            let _socket = shared.stats.socket(crate::stats::Transport::Quic);
            let peer = incoming.remote_address();
            let open = async {
                let conn = incoming.await?;
                let (send, recv) = conn.accept_bi().await?;
                Ok::<_, quinn::ConnectionError>((conn, send, recv))
            };
            let opened = tokio::select! {
                r = tokio::time::timeout(shared.config.handshake_timeout(), open) => r,
                _ = shared.shutdown.cancelled() => return,
            };
            match opened {
                Ok(Ok((conn, send, recv))) => {
                    if permit.is_some() {
                        serve_quic(conn, send, recv, peer, shared).await;
                    } else {
                        debug!(%peer, "connection limit reached");
                        refuse_quic(
                            conn,
                            send,
                            ErrorCode::ServerBusy,
                            "connection limit reached",
                        )
                        .await;
                    }
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "QUIC handshake failed"),
                Err(_) => debug!(%peer, "QUIC handshake timeout"),
            }
            drop(permit);
        });
    }
}
