//! QUIC: the accept loop. A connection's first bidirectional stream, which
//! the client opens, is its control stream; the session then opens the
//! event streams (protocol section 2.1).

use std::sync::Arc;

use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::session::serve_quic;
use crate::shared::Shared;
use crate::stats::Transport;

/// Accepts until shutdown. Admission control is shared with the other
/// listeners and decided from the first packet, before the QUIC handshake:
/// a refused connection gets QUIC's `CONNECTION_REFUSED` and costs no
/// handshake. The QUIC handshake, the opening of the control stream and
/// the `Hello` must all arrive within the handshake timeout from accept,
/// and an evicted handshake ends at once.
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
        let peer = incoming.remote_address();
        let ticket = match shared.admission.admit(peer.ip(), Transport::Quic) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                debug!(%peer, reason = refusal.label(), "connection refused");
                incoming.refuse();
                continue;
            }
        };
        let shared = shared.clone();
        tasks.spawn(async move {
            let _socket = shared.stats.socket(Transport::Quic);
            let open = async {
                let conn = incoming.await?;
                let (send, recv) = conn.accept_bi().await?;
                Ok::<_, quinn::ConnectionError>((conn, send, recv))
            };
            let opened = tokio::select! {
                r = tokio::time::timeout_at(ticket.deadline(), open) => r,
                _ = ticket.evicted() => {
                    debug!(%peer, "pending QUIC handshake evicted");
                    return;
                }
                _ = shared.shutdown.cancelled() => return,
            };
            match opened {
                Ok(Ok((conn, send, recv))) => {
                    serve_quic(conn, send, recv, peer, shared, ticket).await
                }
                Ok(Err(e)) => debug!(%peer, error = %e, "QUIC handshake failed"),
                Err(_) => debug!(%peer, "QUIC handshake timeout"),
            }
        });
    }
}
