//! Plain TCP: the accept loop, with admission control.

use std::sync::Arc;
use std::time::Duration;

use confab_codec::ErrorCode;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::server::Shared;
use crate::session::{refuse, serve_connection};

/// Accepts until shutdown. Each connection needs a permit of the
/// `max_connections` semaphore; without one it gets `ServerBusy` and is
/// closed. Accept errors (such as running out of file descriptors) back off
/// instead of spinning.
pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, tasks: TaskTracker) {
    let permits = Arc::new(Semaphore::new(shared.config.limits.max_connections));
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
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let shared = shared.clone();
                tasks.spawn(async move {
                    serve_connection(stream, peer.to_string(), shared).await;
                    drop(permit);
                });
            }
            Err(_) => {
                debug!(%peer, "connection limit reached");
                tasks.spawn(refuse(
                    stream,
                    ErrorCode::ServerBusy,
                    "connection limit reached",
                ));
            }
        }
    }
}
