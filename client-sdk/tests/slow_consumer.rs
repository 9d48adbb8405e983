//! The SDK against the real broker when its connection stops taking bytes
//! (protocol 11.4): a proxy on 127.0.0.1 stops forwarding the broker's
//! bytes, the broker cuts the device as a slow consumer, and once the bytes
//! flow again the SDK reads the frames that were buffered, then
//! `Goodbye{SlowConsumer}`, reconnects on its own and resumes the room from
//! its last delivered sequence + 1: every message exactly once, in order.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confab_broker::config::Config;
use confab_broker::Broker;
use confab_client::confab_codec::{DeviceId, ErrorCode};
use confab_client::{
    BackoffConfig, Client, ClientConfig, ConnectionEvent, DisconnectReason, Endpoint,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

/// Upper bound of every wait.
const WAIT: Duration = Duration::from_secs(20);
const MESSAGES: u64 = 400;
const PAYLOAD: usize = 1024;

/// A TCP proxy whose broker-to-client direction of the first connection
/// can be frozen: it then reads nothing from the broker, whose socket
/// fills up and accepts nothing, as with a device that stopped reading.
struct FreezeProxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FreezeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FreezeProxy {
    async fn start(upstream: SocketAddr) -> FreezeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, gate) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut first = true;
            let mut pumps = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                // A small receive buffer towards the broker, so that the
                // broker's socket fills quickly once the proxy stops.
                let socket = TcpSocket::new_v4().unwrap();
                socket.set_recv_buffer_size(4096).unwrap();
                let Ok(broker) = socket.connect(upstream).await else {
                    continue;
                };
                let gate = first.then(|| gate.clone());
                first = false;
                let (mut crd, mut cwr) = client.into_split();
                let (mut brd, mut bwr) = broker.into_split();
                pumps.spawn(async move {
                    let _ = tokio::io::copy(&mut crd, &mut bwr).await;
                    let _ = bwr.shutdown().await;
                });
                pumps.spawn(async move {
                    let mut gate = gate;
                    let mut buf = vec![0u8; 4096];
                    loop {
                        if let Some(g) = gate.as_mut() {
                            if g.wait_for(|frozen| !frozen).await.is_err() {
                                return;
                            }
                        }
                        match brd.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if cwr.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = cwr.shutdown().await;
                });
            }
        });
        FreezeProxy { addr, frozen, task }
    }
}

fn config(addr: SocketAddr, user: &str) -> ClientConfig {
    let mut c = ClientConfig::with_endpoint(
        Endpoint::tcp(addr),
        format!("{user}:dev"),
        DeviceId::new("dev").unwrap(),
    );
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(200),
        multiplier: 2.0,
        max_attempts: None,
    };
    // The SDK's own dead-link detection must not beat the broker's cut.
    c.heartbeat_interval = Duration::from_secs(5);
    c.dead_link_timeout = Duration::from_secs(15);
    c.connect_timeout = Duration::from_secs(5);
    c.request_timeout = Duration::from_secs(15);
    // The frozen path must fill the broker's socket: 400 KiB of repeated
    // bytes compress to a few KiB, which a socket buffer swallows whole.
    c.compression = false;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_slow_consumer_reconnects_and_resumes_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut bc = Config {
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    };
    bc.listen.tcp = "127.0.0.1:0".parse().unwrap();
    bc.listen.quic = None;
    bc.rate_limits.enabled = false;
    bc.delivery.queue_capacity = 32;
    bc.delivery.slow_consumer_timeout_ms = 500;
    let broker = Broker::builder(bc).start().await.unwrap();
    let proxy = FreezeProxy::start(broker.tcp_addr()).await;

    let reader = Client::connect(config(proxy.addr, "reader")).await.unwrap();
    let mut events = reader.events();
    let mut sub = reader.subscribe("r").await.unwrap();
    let got = Arc::new(Mutex::new(Vec::new()));
    let collector = {
        let got = got.clone();
        tokio::spawn(async move {
            while let Some(Ok(e)) = sub.next().await {
                got.lock().unwrap().push(e.seq.0);
            }
        })
    };
    let writer = Client::connect(config(broker.tcp_addr(), "writer"))
        .await
        .unwrap();
    let payload = vec![b'x'; PAYLOAD];
    writer.publish("r", payload.clone()).await.unwrap();

    // The path to the reader stops: the broker cuts it after the timeout.
    proxy.frozen.send_replace(true);
    for _ in 1..MESSAGES {
        writer.publish_nowait("r", payload.clone()).await.unwrap();
    }
    tokio::time::timeout(WAIT, writer.flush())
        .await
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while broker.stats().slow_consumer_disconnects == 0 {
        assert!(Instant::now() < deadline, "the reader was never cut");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The path comes back within the broker's grace: the SDK gets the
    // Goodbye, reconnects and resumes.
    proxy.frozen.send_replace(false);
    let reason = tokio::time::timeout(WAIT, async {
        loop {
            if let ConnectionEvent::Disconnected { reason } = events.recv().await.unwrap() {
                return reason;
            }
        }
    })
    .await
    .expect("the SDK saw the connection end");
    match &reason {
        DisconnectReason::Goodbye { code, .. } => assert_eq!(*code, ErrorCode::SlowConsumer),
        other => panic!("expected Goodbye(SlowConsumer), got {other}"),
    }
    tokio::time::timeout(WAIT, async {
        loop {
            if let ConnectionEvent::Reconnected { .. } = events.recv().await.unwrap() {
                return;
            }
        }
    })
    .await
    .expect("the SDK reconnected");
    let deadline = Instant::now() + WAIT;
    while got.lock().unwrap().len() < MESSAGES as usize {
        assert!(
            Instant::now() < deadline,
            "the reader did not get everything"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seqs = got.lock().unwrap().clone();
    assert_eq!(
        seqs,
        (1..=MESSAGES).collect::<Vec<_>>(),
        "exactly once, in order"
    );
    collector.abort();
    reader.close().await;
    writer.close().await;
    broker.shutdown().await;
}
