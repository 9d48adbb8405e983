//! TCP, plain or with TLS, carrying the protocol directly or WebSocket
//! (`websocket.rs`): the accept loop, with admission control.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use confab_codec::ErrorCode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::websocket;
use crate::admission::Ticket;
use crate::session::{refuse, serve_connection, tune_tcp};
use crate::shared::Shared;
use crate::stats::Transport;

/// What a TCP listener's connections speak once accepted (and through TLS
/// if the listener has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Carrier {
    /// Confab frames on the byte stream.
    Frames,
    /// An HTTP upgrade to WebSocket, then one frame per binary message.
    WebSocket,
}

/// Accepts until shutdown. Each connection is admitted (or refused) as it
/// is accepted, before any TLS or HTTP work (see `crate::admission`). A
/// refused plain TCP connection gets `Error` and `Goodbye` with
/// `ServerBusy`, which cost a write; a refused TLS or WebSocket connection
/// is closed at once, without a handshake, since a refusal in its protocol
/// would cost the handshake it avoids.
/// Accept errors (such as running out of file descriptors) back off
/// instead of spinning. With `tls`, the TLS handshake runs in the
/// connection's task; it and the `Hello` must both arrive within the
/// handshake timeout from accept (with the WebSocket upgrade in between),
/// and an evicted handshake ends at once.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    carrier: Carrier,
    shared: Arc<Shared>,
    tasks: TaskTracker,
) {
    let transport = match (carrier, tls.is_some()) {
        (Carrier::Frames, false) => Transport::Tcp,
        (Carrier::Frames, true) => Transport::Tls,
        (Carrier::WebSocket, false) => Transport::WebSocket,
        (Carrier::WebSocket, true) => Transport::WebSocketTls,
    };
    let mut backoff = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shared.shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let ticket = match shared.admission.admit(peer.ip(), transport) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                debug!(%peer, reason = refusal.label(), "connection refused");
                if transport == Transport::Tcp {
                    tasks.spawn(refuse(stream, ErrorCode::ServerBusy, refusal.message()));
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tune_tcp(&stream);
        let shared = shared.clone();
        let tls = tls.clone();
        // Plain and TLS connections are separate task types, and each
        // session future is boxed once it starts, so a connection's task
        // holds only the state it is in (a future is as large as its
        // largest state: one task for both kinds took 16 KiB each).
        let Some(acceptor) = tls else {
            tasks.spawn(async move {
                let _socket = shared.stats.socket(transport);
                serve_stream(carrier, stream, peer, shared, ticket).await;
            });
            continue;
        };
        tasks.spawn(async move {
            let _socket = shared.stats.socket(transport);
            let handshake = tokio::select! {
                r = tokio::time::timeout_at(ticket.deadline(), acceptor.accept(stream)) => r,
                _ = ticket.evicted() => {
                    debug!(%peer, "pending TLS handshake evicted");
                    return;
                }
                _ = shared.shutdown.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => serve_stream(carrier, stream, peer, shared, ticket).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timeout"),
            }
        });
    }
}

/// Serves a byte stream that the embedder accepted (see
/// `BrokerHandle::serve_stream`) exactly as an accepted plain TCP
/// connection: admitted or refused with `Error` and `Goodbye`, then the
/// handshake and the session, in a task of `tasks`. After shutdown began
/// the stream is dropped, as the accept loop no longer accepts.
pub(crate) fn serve_accepted<S>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    tasks: &TaskTracker,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    if shared.shutdown.is_cancelled() {
        return;
    }
    let transport = Transport::Tcp;
    let ticket = match shared.admission.admit(peer.ip(), transport) {
        Ok(ticket) => ticket,
        Err(refusal) => {
            debug!(%peer, reason = refusal.label(), "connection refused");
            tasks.spawn(refuse(stream, ErrorCode::ServerBusy, refusal.message()));
            return;
        }
    };
    tasks.spawn(async move {
        let _socket = shared.stats.socket(transport);
        serve_stream(Carrier::Frames, stream, peer, shared, ticket).await;
    });
}

async fn serve_stream<S>(
    carrier: Carrier,
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    ticket: Ticket,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    match carrier {
        Carrier::Frames => Box::pin(serve_connection(stream, peer, shared, ticket)).await,
        Carrier::WebSocket => Box::pin(websocket::serve(stream, peer, shared, ticket)).await,
    }
}
