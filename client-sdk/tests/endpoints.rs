//! A list of endpoints (`ClientConfig::endpoints`, the nodes of a
//! cluster): the first connection goes to the first endpoint that
//! answers, `Client::connect` fails only once every endpoint failed, and a
//! lost connection moves the client to the next endpoint, with what it had
//! queued. Real brokers, in process, on 127.0.0.1 (the cluster itself is
//! tested with SDK clients in broker/tests/cluster_sdk.rs).

#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use confab_broker::config::Config;
use confab_broker::{Broker, BrokerHandle};
use confab_client::confab_codec::{DeviceId, Direction, RoomId, Seq};
use confab_client::{BackoffConfig, Client, ClientConfig, ConnectionEvent, Endpoint, Message};
use support::in_process::within;
use tokio::sync::broadcast;

async fn start_broker(dir: &std::path::Path) -> BrokerHandle {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.tcp = "127.0.0.1:0".parse().unwrap();
    config.listen.tls = None;
    config.listen.quic = None;
    Broker::builder(config).start().await.unwrap()
}

/// An address nothing listens on (a listener bound, then closed).
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn config(endpoints: &[SocketAddr], user: &str) -> ClientConfig {
    let mut c = ClientConfig::with_endpoints(
        endpoints.iter().map(|a| Endpoint::tcp(*a)).collect(),
        format!("{user}:phone"),
        DeviceId::new("phone").unwrap(),
    );
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        multiplier: 2.0,
        max_attempts: None,
    };
    c.request_timeout = Duration::from_secs(10);
    c
}

/// The events of `rx` up to the first `Connected` or `Reconnected`
/// (included), or up to `Closed`.
async fn until_up(rx: &mut broadcast::Receiver<ConnectionEvent>) -> Vec<ConnectionEvent> {
    let mut seen = Vec::new();
    within(async {
        loop {
            match rx.recv().await {
                Ok(e) => {
                    let done = matches!(
                        e,
                        ConnectionEvent::Connected { .. }
                            | ConnectionEvent::Reconnected { .. }
                            | ConnectionEvent::Closed { .. }
                    );
                    seen.push(e);
                    if done {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    })
    .await;
    seen
}

/// The endpoints the `Connecting` events of `events` named, in order.
fn tried(events: &[ConnectionEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ConnectionEvent::Connecting { endpoint, .. } => Some(endpoint.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_first_connection_goes_to_the_first_endpoint_that_answers() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path()).await;
    let dead = closed_port();
    let live = broker.tcp_addr();
    let client = Client::start(config(&[dead, live], "alice")).unwrap();
    let mut events = client.events();
    let seen = until_up(&mut events).await;
    assert_eq!(
        tried(&seen),
        [
            Endpoint::tcp(dead).to_string(),
            Endpoint::tcp(live).to_string()
        ],
        "{seen:?}"
    );
    assert!(matches!(
        seen.last(),
        Some(ConnectionEvent::Connected { .. })
    ));
    let ack = within(client.publish("r", "hello")).await.unwrap();
    assert_eq!(ack.seq, Seq(1));
    client.close().await;

    // `Client::connect` too: the dead endpoint's failure is not reported
    // while another endpoint is left to try.
    let client = within(Client::connect(config(&[dead, live], "bob")))
        .await
        .unwrap();
    client.close().await;
    broker.shutdown().await;
}

#[tokio::test]
async fn connect_fails_once_every_endpoint_failed() {
    let (d1, d2) = (closed_port(), closed_port());
    let mut c = config(&[d1, d2], "alice");
    // Every attempt of the first round is reported.
    c.backoff.initial = Duration::from_millis(1);
    let err = within(Client::connect(c)).await.unwrap_err();
    assert!(err.to_string().contains("connect"), "{err}");
}

#[tokio::test]
async fn a_lost_connection_moves_to_the_next_endpoint_with_its_queue() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_broker(dir_a.path()).await;
    let b = start_broker(dir_b.path()).await;
    let (addr_a, addr_b) = (a.tcp_addr(), b.tcp_addr());
    let client = within(Client::connect(config(&[addr_a, addr_b], "alice")))
        .await
        .unwrap();
    let mut events = client.events();
    let ack = within(client.publish("r", "on a")).await.unwrap();
    assert_eq!(ack.seq, Seq(1));

    // A goes away. What is published meanwhile waits in the queue and
    // goes to B, the next endpoint.
    a.shutdown().await;
    let pending = client
        .enqueue(Message::new(RoomId::new("r").unwrap(), "queued"))
        .await
        .unwrap();
    let seen = until_up(&mut events).await;
    assert_eq!(
        tried(&seen).first().map(String::as_str),
        Some(Endpoint::tcp(addr_b).to_string().as_str()),
        "{seen:?}"
    );
    assert!(matches!(
        seen.last(),
        Some(ConnectionEvent::Reconnected { .. })
    ));
    let ack = within(pending).await.unwrap();
    // B's log of the room (a broker of its own here) starts with it.
    assert_eq!(ack.seq, Seq(1));
    let room = RoomId::new("r").unwrap();
    let page = within(client.history_page(&room, Direction::Before, Seq(0), 10))
        .await
        .unwrap();
    let payloads: Vec<&[u8]> = page.events.iter().map(|e| e.payload.as_ref()).collect();
    assert_eq!(payloads, [b"queued".as_slice()]);
    client.close().await;
    b.shutdown().await;
}
