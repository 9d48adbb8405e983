//! Transports: each accepts connections and hands a byte stream to the
//! session layer. The protocol above them is identical.

pub(crate) mod tcp;
