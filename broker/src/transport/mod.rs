//! Transports: each accepts connections and hands the session layer a byte
//! stream (TCP, TLS over TCP) or a QUIC connection's streams. The protocol
//! above them is identical.

pub(crate) mod quic;
pub(crate) mod tcp;
pub mod tls;
