//! The operations HTTP server (axum): `/metrics`, `/healthz`, `/readyz`,
//! and the admin endpoints the `confab admin` CLI calls on a running
//! broker, which needs the storage's single writer for them.
//!
//! Admin requests are refused unless they come from a loopback address
//! or, when `admin.token_file` is set, carry its token as a bearer token
//! (then from any address).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::shared::Shared;

/// How often the exporter's histograms are compacted between scrapes, so
/// that samples do not pile up when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A bound, not yet serving, operations endpoint.
#[derive(Debug)]
pub(crate) struct OpsServer {
    listener: TcpListener,
    pub(crate) addr: SocketAddr,
    token: Option<Arc<[u8]>>,
}

/// Binds `addr` and reads the admin token, if one is configured.
pub(crate) async fn bind(addr: SocketAddr, token_file: PathBuf) -> std::io::Result<OpsServer> {
    let token = if token_file.as_os_str().is_empty() {
        None
    } else {
        let text = tokio::fs::read_to_string(&token_file).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("admin.token_file {}: {e}", token_file.display()),
            )
        })?;
        let token = text.trim_end_matches(['\r', '\n']).as_bytes();
        if token.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("admin.token_file {} is empty", token_file.display()),
            ));
        }
        Some(Arc::from(token))
    };
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    Ok(OpsServer {
        listener,
        addr,
        token,
    })
}

#[derive(Clone)]
struct Ops {
    shared: Arc<Shared>,
    handle: Option<PrometheusHandle>,
    /// Set once every listener accepts; cleared when shutdown starts.
    ready: Arc<AtomicBool>,
    token: Option<Arc<[u8]>>,
}

/// Serves the endpoint until shutdown, with a task compacting the
/// histograms every few seconds.
pub(crate) fn spawn(
    server: OpsServer,
    shared: Arc<Shared>,
    handle: Option<PrometheusHandle>,
    ready: Arc<AtomicBool>,
    tasks: &TaskTracker,
) {
    let shutdown = shared.shutdown.clone();
    if let Some(h) = handle.clone() {
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => h.run_upkeep(),
                    _ = shutdown.cancelled() => break,
                }
            }
        });
    }
    let state = Ops {
        shared,
        handle,
        ready,
        token: server.token,
    };
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/admin/backup", post(backup))
        .route("/admin/compact", post(compact))
        .with_state(state);
    let addr = server.addr;
    tasks.spawn(async move {
        info!(%addr, "operations endpoint listening (/metrics, /healthz, /readyz, /admin)");
        let served = axum::serve(
            server.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
        if let Err(e) = served {
            warn!(error = %e, "operations endpoint failed");
        }
    });
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let Some(handle) = ops.handle else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "another metrics recorder is installed in this process; scrape its exporter\n",
        )
            .into_response();
    };
    crate::ops::export(&ops.shared);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when the listeners accept, shutdown has not begun, and the
/// storage answers a read.
async fn readyz(State(ops): State<Ops>) -> (StatusCode, String) {
    if ops.shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    if !ops.ready.load(Ordering::Acquire) {
        return (StatusCode::SERVICE_UNAVAILABLE, "starting\n".into());
    }
    let log = ops.shared.log.clone();
    match tokio::task::spawn_blocking(move || log.meta_get(b"\0readyz")).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".into()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage unavailable: {e}\n"),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage probe: {e}\n"),
        ),
    }
}

/// Whether an admin request may proceed.
fn admitted(ops: &Ops, peer: SocketAddr, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    match &ops.token {
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::as_bytes)
                .unwrap_or_default();
            if constant_time_eq(given, token) {
                Ok(())
            } else {
                Err((
                    StatusCode::UNAUTHORIZED,
                    "bad or missing admin token\n".into(),
                ))
            }
        }
        None if peer.ip().is_loopback() => Ok(()),
        None => Err((
            StatusCode::FORBIDDEN,
            "admin endpoints serve loopback peers only unless admin.token_file is set\n".into(),
        )),
    }
}

/// Compares without an early exit, so timing does not reveal the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /admin/backup` with the destination directory (on the broker's
/// host, must not exist) as the body: a consistent checkpoint.
async fn backup(
    State(ops): State<Ops>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    if let Err(refused) = admitted(&ops, peer, &headers) {
        return refused;
    }
    let dest = PathBuf::from(body.trim());
    if !dest.is_absolute() {
        return (
            StatusCode::BAD_REQUEST,
            "the backup destination must be an absolute path\n".into(),
        );
    }
    let log = ops.shared.log.clone();
    let target = dest.clone();
    match tokio::task::spawn_blocking(move || log.checkpoint(&target)).await {
        Ok(Ok(())) => {
            info!(dest = %dest.display(), %peer, "backup written");
            (
                StatusCode::OK,
                format!("backup written to {}\n", dest.display()),
            )
        }
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("backup failed: {e}\n"),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("backup task: {e}\n"),
        ),
    }
}

/// `POST /admin/compact`: a full manual compaction.
async fn compact(
    State(ops): State<Ops>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> (StatusCode, String) {
    if let Err(refused) = admitted(&ops, peer, &headers) {
        return refused;
    }
    let log = ops.shared.log.clone();
    match tokio::task::spawn_blocking(move || log.compact()).await {
        Ok(Ok(())) => {
            info!(%peer, "manual compaction done");
            (StatusCode::OK, "compaction done\n".into())
        }
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("compaction failed: {e}\n"),
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("compaction task: {e}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
