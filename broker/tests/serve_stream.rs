//! `BrokerHandle::serve_stream`: a connection the application accepted
//! itself (here an in-memory pipe) is served like a TCP connection, with
//! admission control, the handshake and the session. Runs without RocksDB.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use confab_broker::config::{AuthMode, Config};
use confab_broker::storage::{MemoryLog, RoomLog};
use confab_broker::{Broker, BrokerHandle};
use confab_codec::{
    Body, DeviceId, ErrorCode, Frame, Hello, MessageKind, Publish, RoomId, StartAt, Subscribe,
    SubscribeItem,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const WAIT: Duration = Duration::from_secs(10);

fn config() -> Config {
    let mut c = Config::default();
    c.listen.tcp = "127.0.0.1:0".parse().unwrap();
    c.listen.quic = None;
    c.auth.mode = AuthMode::Dev;
    c.rate_limits.enabled = false;
    c
}

async fn start(config: Config) -> BrokerHandle {
    Broker::builder(config)
        .storage(Arc::new(MemoryLog::new()) as Arc<dyn RoomLog>)
        .start()
        .await
        .expect("broker starts")
}

struct Pipe {
    io: DuplexStream,
    buf: BytesMut,
}

impl Pipe {
    fn open(broker: &BrokerHandle, peer: &str) -> Pipe {
        let (client, server) = tokio::io::duplex(64 << 10);
        broker.serve_stream(server, peer.parse::<SocketAddr>().unwrap());
        Pipe {
            io: client,
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, frame: Frame) {
        self.io.write_all(&frame.to_bytes().unwrap()).await.unwrap();
    }

    /// The next frame, or None at the end of the stream.
    async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(f) = Frame::decode(&mut self.buf, 1 << 24).expect("valid frames") {
                    return Some(f);
                }
                if self.io.read_buf(&mut self.buf).await.unwrap() == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("a frame in time")
    }

    async fn hello(&mut self, user: &str, device: &str) {
        self.send(Frame::request(
            1,
            Hello {
                min_version: 1,
                max_version: 1,
                token: format!("{user}:{device}"),
                device: DeviceId::new(device).unwrap(),
                client_name: "test".into(),
                resume: Vec::new(),
                features: Default::default(),
            },
        ))
        .await;
        let f = self.recv().await.expect("Welcome");
        assert!(matches!(f.body, Body::Welcome(_)), "got {f:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_is_served_like_a_tcp_connection() {
    let broker = start(config()).await;
    let room = RoomId::new("lobby").unwrap();

    let mut bob = Pipe::open(&broker, "10.0.0.2:1000");
    bob.hello("bob", "phone").await;
    bob.send(Frame::request(
        2,
        Subscribe {
            items: vec![SubscribeItem {
                room: room.clone(),
                start: StartAt::Live,
            }],
        },
    ))
    .await;
    let ack = bob.recv().await.expect("SubscribeAck");
    assert!(matches!(ack.body, Body::SubscribeAck(_)), "got {ack:?}");

    let mut alice = Pipe::open(&broker, "10.0.0.1:1000");
    alice.hello("alice", "laptop").await;
    alice
        .send(Frame::request(
            2,
            Publish {
                room: room.clone(),
                client_msg_id: 1,
                kind: MessageKind::MESSAGE,
                refers_to: None,
                thread: None,
                payload: Bytes::from_static(b"hi bob"),
            },
        ))
        .await;
    let ack = alice.recv().await.expect("PublishAck");
    let Body::PublishAck(ack) = ack.body else {
        panic!("expected PublishAck, got {ack:?}")
    };

    let event = bob.recv().await.expect("the event");
    let Body::Event(event) = event.body else {
        panic!("expected Event, got {event:?}")
    };
    assert_eq!(event.room, room);
    assert_eq!(event.event.seq, ack.seq);
    assert_eq!(&event.event.payload[..], b"hi bob");
    assert_eq!(broker.stats().connections, 2);

    // Closing the pipe ends the session.
    drop(alice);
    drop(bob);
    for _ in 0..1000 {
        if broker.stats().connections == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(broker.stats().connections, 0);
    tokio::time::timeout(WAIT, broker.shutdown())
        .await
        .expect("shutdown in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_a_pipe_like_a_tcp_connection() {
    let mut config = config();
    config.admission.max_connections_per_ip = 1;
    let broker = start(config).await;

    let mut first = Pipe::open(&broker, "10.0.0.7:1");
    first.hello("carol", "a").await;
    let mut second = Pipe::open(&broker, "10.0.0.7:2");
    let error = second.recv().await.expect("Error");
    let Body::Error(error) = error.body else {
        panic!("expected Error, got {error:?}")
    };
    assert_eq!(error.code, ErrorCode::ServerBusy);
    let bye = second.recv().await.expect("Goodbye");
    assert!(matches!(bye.body, Body::Goodbye(_)), "got {bye:?}");
    assert!(second.recv().await.is_none(), "then the end of the stream");

    // Another address still gets in.
    let mut other = Pipe::open(&broker, "10.0.0.8:1");
    other.hello("dave", "a").await;

    // Shutdown says Goodbye to the pipe's session and waits for it.
    let shutdown = tokio::spawn(broker.shutdown());
    let bye = first.recv().await.expect("Goodbye");
    let Body::Goodbye(bye) = bye.body else {
        panic!("expected Goodbye, got {bye:?}")
    };
    assert_eq!(bye.code, ErrorCode::ShuttingDown);
    drop(first);
    drop(other);
    tokio::time::timeout(WAIT, shutdown)
        .await
        .expect("shutdown in time")
        .unwrap();
}
