//! Transports: each accepts connections and hands the session layer a byte
//! stream (TCP, TLS over TCP, WebSocket with or without TLS) or a QUIC
//! connection's streams. The protocol above them is identical.

pub(crate) mod quic;
pub(crate) mod tcp;
pub mod tls;
pub(crate) mod websocket;
