//! WebSocket (`ws://`, and `wss://` over TLS) for browsers: the HTTP
//! upgrade with its checks, then the same session as TCP.
//!
//! The TCP accept loop (`tcp.rs`) admits the connection and, for `wss://`,
//! runs the TLS handshake; this module then answers the HTTP upgrade
//! (tungstenite) and serves the session over a [`WsStream`], which carries
//! one frame per binary message (protocol section 2.3). Before the upgrade
//! the request must be `GET /ws`, offer the `confab.v1` subprotocol and,
//! when it has an `Origin` (every browser sends one), come from an allowed
//! origin; otherwise it gets an HTTP error (403 for the origin) and no
//! session. The upgrade, the TLS handshake before it and the `Hello` after
//! it share the connection's handshake deadline.
//!
//! Until the first message (the `Hello`) has arrived whole, the socket is
//! read through a [`Capped`] budget: the HTTP request (at most 64 KiB,
//! tungstenite's own limit) and then `admission.max_hello_len` plus the
//! frame and WebSocket headers, so that a connection that has not
//! authenticated costs no more buffer than on TCP, whatever length a
//! WebSocket header declares.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use confab_codec::HEADER_LEN;
use confab_ws::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use confab_ws::tungstenite::http::{header, HeaderValue, StatusCode};
use confab_ws::{Capped, WsStream, PATH, SUBPROTOCOL};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

use crate::admission::Ticket;
use crate::config::WebSocketConfig;
use crate::session::serve_connection;
use crate::shared::Shared;

/// Bytes the HTTP upgrade request may take (tungstenite refuses a request
/// past 64 KiB itself; this is the same bound plus room for a pipelined
/// start of the first message).
const UPGRADE_BUDGET: usize = 64 * 1024 + 4096;

/// The most a WebSocket frame header adds (2 + 8 length + 4 mask).
const WS_HEADER_MAX: usize = 14;

/// Answers the upgrade of an admitted (and, for `wss://`, TLS-wrapped)
/// connection, then serves its session.
// The callback's error type is tungstenite's HTTP response.
#[allow(clippy::result_large_err)]
pub(crate) async fn serve<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>, ticket: Ticket)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let cfg = &shared.config;
    let ws_config = confab_ws::config(cfg.limits.max_frame_len, cfg.delivery.write_batch_bytes);
    let capped = Capped::new(stream, UPGRADE_BUDGET);
    let switch = capped.lift_switch();
    let origins = cfg.websocket.clone();
    let check = move |req: &Request, resp: Response| check_upgrade(&origins, req, resp);
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(capped, check, Some(ws_config));
    let upgraded = tokio::select! {
        r = tokio::time::timeout_at(ticket.deadline(), upgrade) => r,
        _ = ticket.evicted() => {
            debug!(%peer, "pending WebSocket upgrade evicted");
            return;
        }
        _ = shared.shutdown.cancelled() => return,
    };
    let mut ws = match upgraded {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "WebSocket upgrade failed");
            metrics::counter!("confab_websocket_upgrades_refused_total").increment(1);
            return;
        }
        Err(_) => {
            debug!(%peer, "WebSocket upgrade timeout");
            metrics::counter!("confab_websocket_upgrades_refused_total").increment(1);
            return;
        }
    };
    let hello_budget = shared.admission.max_hello_len() as usize + HEADER_LEN + WS_HEADER_MAX;
    ws.get_mut().set_budget(hello_budget);
    let stream = WsStream::new(ws)
        .lift_after_first_message(switch)
        .with_keepalive(Duration::from_millis(cfg.websocket.ping_interval_ms));
    serve_connection(stream, peer, shared, ticket).await;
}

/// The checks before the upgrade: path, origin, subprotocol.
// The error type is tungstenite's HTTP response (its `Callback` trait).
#[allow(clippy::result_large_err)]
fn check_upgrade(
    cfg: &WebSocketConfig,
    req: &Request,
    mut resp: Response,
) -> Result<Response, ErrorResponse> {
    if req.uri().path() != PATH {
        return Err(refusal(
            StatusCode::NOT_FOUND,
            format!("the Confab WebSocket endpoint is {PATH}"),
        ));
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let allowed = origin.to_str().is_ok_and(|o| cfg.allows_origin(o));
        if !allowed {
            metrics::counter!("confab_websocket_origin_refused_total").increment(1);
            return Err(refusal(
                StatusCode::FORBIDDEN,
                "this origin may not connect (websocket.allowed_origins)".into(),
            ));
        }
    }
    let offered = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL);
    if !offered {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            format!("offer the `{SUBPROTOCOL}` WebSocket subprotocol"),
        ));
    }
    resp.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(resp)
}

fn refusal(status: StatusCode, message: String) -> ErrorResponse {
    let mut resp = ErrorResponse::new(Some(message));
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, origin: Option<&str>, protocol: Option<&str>) -> Request {
        let mut b = Request::builder().uri(path);
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        if let Some(p) = protocol {
            b = b.header(header::SEC_WEBSOCKET_PROTOCOL, p);
        }
        b.body(()).expect("request")
    }

    fn status(r: Result<Response, ErrorResponse>) -> StatusCode {
        match r {
            Ok(resp) => resp.status(),
            Err(e) => e.status(),
        }
    }

    #[test]
    fn path_origin_and_subprotocol_are_checked() {
        let cfg = WebSocketConfig::default();
        let ok = |r: &Request| status(check_upgrade(&cfg, r, Response::new(())));
        assert_eq!(
            ok(&request(
                "/ws",
                Some("http://localhost:7403"),
                Some("confab.v1")
            )),
            StatusCode::OK
        );
        // No Origin: not a browser.
        assert_eq!(
            ok(&request("/ws", None, Some("x, confab.v1"))),
            StatusCode::OK
        );
        assert_eq!(
            ok(&request(
                "/ws",
                Some("https://evil.example"),
                Some("confab.v1")
            )),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            ok(&request("/other", None, Some("confab.v1"))),
            StatusCode::NOT_FOUND
        );
        assert_eq!(ok(&request("/ws", None, None)), StatusCode::BAD_REQUEST);
        assert_eq!(
            ok(&request("/ws", None, Some("confab.v2"))),
            StatusCode::BAD_REQUEST
        );

        let any = WebSocketConfig {
            allowed_origins: vec!["*".into()],
            ..WebSocketConfig::default()
        };
        assert_eq!(
            status(check_upgrade(
                &any,
                &request("/ws", Some("https://evil.example"), Some("confab.v1")),
                Response::new(())
            )),
            StatusCode::OK
        );
    }

    #[test]
    fn the_chosen_subprotocol_is_in_the_response() {
        let cfg = WebSocketConfig::default();
        let resp = check_upgrade(
            &cfg,
            &request("/ws", None, Some("confab.v1")),
            Response::new(()),
        )
        .expect("accepted");
        assert_eq!(
            resp.headers().get(header::SEC_WEBSOCKET_PROTOCOL),
            Some(&HeaderValue::from_static("confab.v1"))
        );
    }
}
