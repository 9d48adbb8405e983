//! The handshake: from an admitted connection's first byte to the moment
//! the broker decides to send `Welcome`. It reads the `Hello` under the
//! small pre-`Welcome` frame limit (`admission.max_hello_len`, protocol
//! 3.4) and before the deadline set at accept, checks the version, the
//! login back-off and the token, takes a session slot, and leaves the
//! pending handshakes. A refusal is an `Error` and a `Goodbye`, then the
//! close; the session never starts.

use std::net::SocketAddr;

use bytes::BytesMut;
use confab_codec::{Body, ErrorCode, ErrorFrame, Hello, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::codec::FramedRead;
use tracing::{debug, info};

use super::codec::FrameCodec;
use super::writer::Egress;
use crate::admission::{count_refusal, Refusal, Ticket};
use crate::auth::Identity;
use crate::base::now_us;
use crate::shared::Shared;

/// The read buffer a connection starts with: a typical `Hello` (a token,
/// a few resumed rooms) fits, and a flood of pending handshakes costs
/// little. It grows, within the `Hello` limit, for a larger one.
const HELLO_BUFFER: usize = 4 << 10;

/// The read buffer a session starts with; a larger one left over from a
/// large `Hello` is given back.
const SESSION_BUFFER: usize = 16 << 10;

/// A QUIC connection's receive window once its session is up: quinn's
/// default (unlimited at the connection level; each stream keeps its own
/// window). Until then the listener's configuration keeps it to about one
/// `Hello` (`transport::tls::quic_server_config`).
const SESSION_RECEIVE_WINDOW: quinn::VarInt = quinn::VarInt::MAX;

/// Why a pending handshake was closed to make room for a newer one.
const EVICTED: &str = "too many handshakes in progress; this one was the oldest";

/// A connection that may become a session.
pub(super) struct Handshaken<R> {
    pub(super) hello: Hello,
    /// The `Hello`'s request id, which `Welcome` carries.
    pub(super) request_id: u32,
    pub(super) identity: Identity,
    /// The frames after the `Hello`, now under `limits.max_frame_len`.
    pub(super) frames: FramedRead<R, FrameCodec>,
    /// One of the `limits.max_connections` session slots, held until the
    /// connection ends.
    pub(super) slot: OwnedSemaphorePermit,
}

/// Runs the handshake of an admitted connection. `None` if it failed; the
/// peer was then told why (when it can be) and the connection is closed.
pub(super) async fn handshake<R, W>(
    rd: R,
    egress: &mut Egress<W>,
    peer: SocketAddr,
    shared: &Shared,
    ticket: &mut Ticket,
) -> Option<Handshaken<R>>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let cfg = &shared.config;
    let codec = FrameCodec::new(shared.admission.max_hello_len());
    let mut frames = FramedRead::with_capacity(rd, codec, HELLO_BUFFER);

    let first = tokio::select! {
        r = tokio::time::timeout_at(ticket.deadline(), frames.next()) => r,
        _ = ticket.evicted() => {
            debug!(%peer, "pending handshake evicted");
            egress.reject(0, ErrorCode::ServerBusy, EVICTED).await;
            return None;
        }
        _ = shared.shutdown.cancelled() => {
            egress.reject(0, ErrorCode::ShuttingDown, "server shutting down").await;
            return None;
        }
    };
    let frame = match first {
        Err(_) => {
            debug!(%peer, "handshake timeout");
            egress
                .reject(
                    0,
                    ErrorCode::Timeout,
                    "no Hello within the handshake timeout",
                )
                .await;
            return None;
        }
        Ok(None) => return None,
        Ok(Some(Err(e))) => {
            let (code, message) = e.refusal()?;
            debug!(%peer, error = %e, "bad first frame");
            egress.reject(0, code, &message).await;
            return None;
        }
        Ok(Some(Ok(frame))) => frame,
    };
    let request_id = frame.request_id;
    // Connection-level failures carry request id 0 (protocol 6.3): a frame
    // that is not a Hello is no request of this connection.
    let Body::Hello(hello) = frame.body else {
        egress
            .reject(
                0,
                ErrorCode::ProtocolViolation,
                "the first frame must be Hello",
            )
            .await;
        return None;
    };
    if request_id == 0 {
        egress
            .reject(
                0,
                ErrorCode::ProtocolViolation,
                "Hello needs a nonzero request id",
            )
            .await;
        return None;
    }
    if chosen_version(&hello).is_none() {
        let msg = format!(
            "server speaks versions {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}, client {}..={}",
            hello.min_version, hello.max_version
        );
        egress
            .reject(request_id, ErrorCode::UnsupportedVersion, &msg)
            .await;
        return None;
    }
    let ip = peer.ip();
    if let Err(wait_ms) = shared.login_backoff.check(ip, std::time::Instant::now()) {
        // Hellos refused unchecked because their address keeps failing.
        metrics::counter!("confab_login_backoff_refusals_total").increment(1);
        debug!(%peer, wait_ms, "login back-off");
        let refusal = ErrorFrame {
            code: ErrorCode::RateLimited,
            retry_after_ms: wait_ms,
            message: format!("too many failed logins from this address; retry in {wait_ms} ms"),
        };
        egress.reject_with(request_id, refusal).await;
        return None;
    }
    let identity = match shared.auth.authenticate(&hello.token, &hello.device) {
        Ok(id) if id.expires_at_us.is_some_and(|exp| exp <= now_us()) => {
            login_failed(shared, peer, &hello, "token expired");
            egress
                .reject(request_id, ErrorCode::TokenExpired, "token expired")
                .await;
            return None;
        }
        Ok(id) => id,
        Err(e) => {
            login_failed(shared, peer, &hello, &e.message);
            egress.reject(request_id, e.code, &e.message).await;
            return None;
        }
    };
    shared.login_backoff.succeeded(ip);
    if let Err(wait_ms) = shared.user_limits.connect(&identity.user) {
        debug!(%peer, user = %identity.user, wait_ms, "connection rate limited");
        let refusal = ErrorFrame {
            code: ErrorCode::RateLimited,
            retry_after_ms: wait_ms,
            message: format!("too many connections for this user; retry in {wait_ms} ms"),
        };
        egress.reject_with(request_id, refusal).await;
        return None;
    }

    // Connection-level refusals from here on: request id 0 (6.3).
    let Some(slot) = shared.admission.session_slot() else {
        count_refusal(Refusal::Sessions, ticket.transport());
        debug!(%peer, "connection limit reached");
        egress
            .reject(0, ErrorCode::ServerBusy, Refusal::Sessions.message())
            .await;
        return None;
    };
    if !ticket.handshake_done() {
        debug!(%peer, "pending handshake evicted");
        egress.reject(0, ErrorCode::ServerBusy, EVICTED).await;
        return None;
    }
    // From Welcome on, the session's frame limit and read buffer.
    frames
        .decoder_mut()
        .set_max_frame_len(cfg.limits.max_frame_len);
    session_buffer(frames.read_buffer_mut());
    if let Egress::Quic(q) = egress {
        q.conn.set_receive_window(SESSION_RECEIVE_WINDOW);
    }
    Some(Handshaken {
        hello,
        request_id,
        identity,
        frames,
        slot,
    })
}

/// Gives the read buffer the session's usual capacity, keeping any bytes
/// in it: a large `Hello` does not leave a large buffer behind.
fn session_buffer(buf: &mut BytesMut) {
    if buf.capacity() > SESSION_BUFFER {
        let mut fresh = BytesMut::with_capacity(SESSION_BUFFER.max(buf.len()));
        fresh.extend_from_slice(buf);
        *buf = fresh;
    } else {
        buf.reserve(SESSION_BUFFER.saturating_sub(buf.len()));
    }
}

/// Counts a token refused at the handshake against the peer's address.
fn login_failed(shared: &Shared, peer: SocketAddr, hello: &Hello, reason: &str) {
    // Tokens refused at the handshake or on refresh.
    metrics::counter!("confab_auth_failures_total").increment(1);
    shared
        .login_backoff
        .failed(peer.ip(), std::time::Instant::now());
    info!(%peer, device = %hello.device, %reason, "authentication refused");
}

/// The newest version both sides speak, if any.
pub(crate) fn chosen_version(hello: &Hello) -> Option<u16> {
    let v = hello.max_version.min(PROTOCOL_VERSION);
    (v >= hello.min_version.max(MIN_PROTOCOL_VERSION)).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_buffer_is_small_and_keeps_its_bytes() {
        let mut big = BytesMut::with_capacity(1 << 20);
        big.extend_from_slice(b"pipelined");
        session_buffer(&mut big);
        assert_eq!(&big[..], b"pipelined");
        assert!(big.capacity() >= SESSION_BUFFER && big.capacity() < 64 << 10);

        let mut small = BytesMut::with_capacity(HELLO_BUFFER);
        session_buffer(&mut small);
        assert!(small.capacity() >= SESSION_BUFFER && small.capacity() < 64 << 10);
    }
}
