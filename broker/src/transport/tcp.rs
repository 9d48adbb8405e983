//! TCP, plain or with TLS: the accept loop, with admission control.

use std::net::SocketAddr;
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

/// Accepts until shutdown. Each connection needs a permit of the
/// `max_connections` semaphore (shared by every listener); without one it
/// gets `ServerBusy` and is closed. Accept errors (such as running out of
/// file descriptors) back off instead of spinning. With `tls`, the TLS
/// handshake runs in the connection's task, within the handshake timeout.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    tasks: TaskTracker,
) {
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
        let _ = stream.set_nodelay(true);
        tune_tcp(&stream);
        let permit = shared.conn_permits.clone().try_acquire_owned().ok();
        let shared = shared.clone();
        let tls = tls.clone();
        tasks.spawn(async move {
            let transport = if tls.is_some() {
                Transport::Tls
            } else {
                Transport::Tcp
            };
            let _socket = shared.stats.socket(transport);
            if permit.is_none() {
                debug!(%peer, "connection limit reached");
            }
            match tls {
                None => serve(stream, permit.is_some(), peer, shared).await,
                Some(acceptor) => {
                    let handshake = tokio::select! {
                        r = tokio::time::timeout(shared.config.handshake_timeout(), acceptor.accept(stream)) => r,
                        _ = shared.shutdown.cancelled() => return,
                    };
                    match handshake {
                        Ok(Ok(stream)) => serve(stream, permit.is_some(), peer, shared).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timeout"),
                    }
                }
            }
            drop(permit);
        });
    }
}

async fn serve<S>(stream: S, admitted: bool, peer: SocketAddr, shared: Arc<Shared>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    if admitted {
        serve_connection(stream, peer, shared).await;
    } else {
        refuse(stream, ErrorCode::ServerBusy, "connection limit reached").await;
    }
}
