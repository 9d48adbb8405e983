//! The SDK against an in-process broker over each transport: which
//! transport a test runs on, a client configuration for it, and bounded
//! waits. (`over_transports!`, which runs a test once per transport, is
//! in `support/mod.rs`, so that it is defined before the tests that use it.)
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use confab_broker::BrokerHandle;
use confab_client::confab_codec::DeviceId;
use confab_client::{ClientConfig, Endpoint, RoomEvent, Subscription, Trust};

/// The transport a test runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Tcp,
    Tls,
    Quic,
}

/// A client of `broker` over `t`: TLS trusts the broker's certificate file
/// as a CA, QUIC pins its fingerprint; requests time out after 10 s.
pub(crate) fn client_config(
    broker: &BrokerHandle,
    t: Transport,
    user: &str,
    device: &str,
) -> ClientConfig {
    let endpoint = match t {
        Transport::Tcp => Endpoint::tcp(broker.tcp_addr()),
        Transport::Tls => Endpoint::tls(broker.tls_addr().expect("a TLS listener")),
        Transport::Quic => Endpoint::quic(broker.quic_addr().expect("a QUIC listener")),
    };
    let mut c = ClientConfig::with_endpoint(
        endpoint,
        format!("{user}:{device}"),
        DeviceId::new(device).expect("a device id"),
    );
    c.trust = match t {
        Transport::Tcp => None,
        Transport::Tls => Some(Trust::CaFile(
            broker.cert_path().expect("a certificate").to_path_buf(),
        )),
        Transport::Quic => Some(Trust::Fingerprint(
            broker
                .cert_fingerprint()
                .expect("a certificate")
                .parse()
                .expect("a fingerprint"),
        )),
    };
    c.request_timeout = Duration::from_secs(10);
    c
}

/// `f`, or a panic after 30 s.
pub(crate) async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("timed out")
}

/// The next `n` events of `sub`.
pub(crate) async fn take(sub: &mut Subscription, n: usize) -> Vec<RoomEvent> {
    let mut events = Vec::new();
    while events.len() < n {
        let next = within(sub.next()).await;
        events.push(next.expect("stream ended").expect("stream error"));
    }
    events
}
