//! TCP, plain or with TLS: the accept loop, with admission control.

use std::sync::Arc;
use std::time::Duration;

use confab_codec::ErrorCode;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::session::{refuse, serve_connection, tune_tcp};
use crate::shared::Shared;
use crate::stats::Transport;

/// Accepts until shutdown. Each connection is admitted (or refused) as it
/// is accepted, before any TLS work (see `crate::admission`). A refused
/// plain TCP connection gets `Error` and `Goodbye` with `ServerBusy`, which
/// cost a write; a refused TLS connection is closed at once, without a
/// handshake, since a TLS refusal would cost the handshake it avoids.
/// Accept errors (such as running out of file descriptors) back off
/// instead of spinning. With `tls`, the TLS handshake runs in the
/// connection's task; it and the `Hello` must both arrive within the
/// handshake timeout from accept, and an evicted handshake ends at once.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    tasks: TaskTracker,
) {
    let transport = if tls.is_some() {
        Transport::Tls
    } else {
        Transport::Tcp
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
                if tls.is_none() {
                    tasks.spawn(refuse(stream, ErrorCode::ServerBusy, refusal.message()));
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tune_tcp(&stream);
        let shared = shared.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let _socket = shared.stats.socket(transport);
            let Some(acceptor) = tls else {
                serve_connection(stream, peer, shared, ticket).await;
                return;
            };
            let handshake = tokio::select! {
                r = tokio::time::timeout_at(ticket.deadline(), acceptor.accept(stream)) => r,
                _ = ticket.evicted() => {
                    debug!(%peer, "pending TLS handshake evicted");
                    return;
                }
                _ = shared.shutdown.cancelled() => return,
            };
            match handshake {
                Ok(Ok(stream)) => serve_connection(stream, peer, shared, ticket).await,
                Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => debug!(%peer, "TLS handshake timeout"),
            }
        });
    }
}
