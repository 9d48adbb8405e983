//! A minimal raw protocol client and broker fixtures for the integration
//! tests. Everything talks to 127.0.0.1 only and every wait is bounded.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::field_reassign_with_default,
    unreachable_pub
)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use confab_broker::config::{Config, Durability};
use confab_broker::{Broker, BrokerHandle};
use confab_codec::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single wait in the tests.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.data_dir = dir.to_path_buf();
    c.listen.tcp = "127.0.0.1:0".parse().unwrap();
    c.storage.durability = Durability::Wal;
    c.log.level = "warn".into();
    c
}

pub async fn start(config: Config) -> BrokerHandle {
    Broker::builder(config)
        .start()
        .await
        .expect("broker starts")
}

/// Restarts on the same port (retrying while the old socket lingers).
pub async fn start_on(mut config: Config, addr: SocketAddr) -> BrokerHandle {
    config.listen.tcp = addr;
    for _ in 0..100 {
        match Broker::builder(config.clone()).start().await {
            Ok(h) => return h,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("could not restart the broker on {addr}");
}

pub fn room(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}

/// A raw protocol connection.
pub struct Conn {
    pub stream: TcpStream,
    pub buf: BytesMut,
    next_request: u32,
    pub welcome: Option<Welcome>,
    /// Frames read while waiting for a specific reply, returned first by `recv`.
    pending: std::collections::VecDeque<Frame>,
}

impl Conn {
    pub async fn raw(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: BytesMut::new(),
            next_request: 1,
            welcome: None,
            pending: Default::default(),
        }
    }

    /// Connects and completes the handshake as `user:device`.
    pub async fn open(addr: SocketAddr, user: &str, device: &str) -> Conn {
        Self::open_with_resume(addr, user, device, Vec::new()).await
    }

    pub async fn open_with_resume(
        addr: SocketAddr,
        user: &str,
        device: &str,
        resume: Vec<SubscribeItem>,
    ) -> Conn {
        let mut c = Conn::raw(addr).await;
        let rid = c
            .send(Hello {
                min_version: 1,
                max_version: 1,
                token: format!("{user}:{device}"),
                device: DeviceId::new(device).unwrap(),
                client_name: "test".into(),
                resume,
            })
            .await;
        let f = c.recv().await.expect("welcome");
        assert_eq!(f.request_id, rid);
        match f.body {
            Body::Welcome(w) => c.welcome = Some(w),
            other => panic!("expected Welcome, got {other:?}"),
        }
        c
    }

    pub fn request_id(&mut self) -> u32 {
        let r = self.next_request;
        self.next_request += 1;
        r
    }

    /// Sends a request with a fresh request id, returned.
    pub async fn send(&mut self, body: impl Into<Body>) -> u32 {
        let rid = self.request_id();
        self.send_frame(Frame::request(rid, body)).await;
        rid
    }

    pub async fn send_frame(&mut self, frame: Frame) {
        let bytes = frame.to_bytes().unwrap();
        self.stream.write_all(&bytes).await.expect("write");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// The next frame, or None on a clean close. Panics after [`WAIT`].
    pub async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, self.recv_inner())
            .await
            .expect("a frame within the wait bound")
    }

    pub async fn recv_timeout(&mut self, d: Duration) -> Result<Option<Frame>, ()> {
        tokio::time::timeout(d, self.recv_inner())
            .await
            .map_err(|_| ())
    }

    async fn recv_inner(&mut self) -> Option<Frame> {
        if let Some(f) = self.pending.pop_front() {
            return Some(f);
        }
        self.recv_wire().await
    }

    /// The next frame from the socket, ignoring stashed ones.
    async fn recv_wire(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = Frame::decode(&mut self.buf, 1 << 24).expect("server frames are valid")
            {
                return Some(f);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub async fn subscribe(&mut self, items: Vec<(RoomId, StartAt)>) -> SubscribeAck {
        let rid = self
            .send(Subscribe {
                items: items
                    .into_iter()
                    .map(|(room, start)| SubscribeItem { room, start })
                    .collect(),
            })
            .await;
        let f = self
            .wait_reply(rid, |f| matches!(f.body, Body::SubscribeAck(_)))
            .await;
        match f.body {
            Body::SubscribeAck(a) => a,
            other => panic!("subscribe failed: {other:?}"),
        }
    }

    pub fn publish_frame(rid: u32, room: &RoomId, cmid: u64, payload: &[u8]) -> Frame {
        Frame::request(
            rid,
            Publish {
                room: room.clone(),
                client_msg_id: cmid,
                kind: MessageKind::MESSAGE,
                refers_to: None,
                thread: None,
                payload: Bytes::copy_from_slice(payload),
            },
        )
    }

    /// Publishes and waits for the ack, skipping other frames.
    pub async fn publish(&mut self, room: &RoomId, cmid: u64, payload: &[u8]) -> PublishAck {
        let rid = self.request_id();
        self.send_frame(Self::publish_frame(rid, room, cmid, payload))
            .await;
        match self.wait_reply(rid, |_| true).await.body {
            Body::PublishAck(a) => a,
            other => panic!("publish failed: {other:?}"),
        }
    }

    /// Waits for the reply to `rid` (an Error, or a frame `accept` takes),
    /// stashing every other frame for later `recv` calls.
    pub async fn wait_reply(&mut self, rid: u32, accept: impl Fn(&Frame) -> bool) -> Frame {
        let is_reply = |f: &Frame| {
            f.request_id == rid
                && (matches!(f.body, Body::Error(_)) || accept(f))
                && !matches!(f.body, Body::Event(_) | Body::EventBatch(_))
        };
        if let Some(pos) = self.pending.iter().position(&is_reply) {
            return self.pending.remove(pos).expect("position is in range");
        }
        let mut stash = Vec::new();
        let reply = tokio::time::timeout(WAIT, async {
            loop {
                let f = self
                    .recv_wire()
                    .await
                    .expect("connection open while waiting for a reply");
                if is_reply(&f) {
                    return f;
                }
                stash.push(f);
            }
        })
        .await
        .expect("a reply within the wait bound");
        self.pending.extend(stash);
        reply
    }

    /// Collects room events until `count` have arrived (Event and EventBatch
    /// alike), returning (room, seq, payload) and the other frames seen.
    pub async fn events(&mut self, count: usize) -> (Vec<(RoomId, u64, Bytes)>, Vec<Frame>) {
        let mut events = Vec::new();
        let mut others = Vec::new();
        while events.len() < count {
            let f = self
                .recv()
                .await
                .expect("connection open while waiting for events");
            match f.body {
                Body::Event(e) => events.push((e.room, e.event.seq.0, e.event.payload)),
                Body::EventBatch(b) => {
                    for e in b.events {
                        events.push((b.room.clone(), e.seq.0, e.payload));
                    }
                }
                _ => others.push(f),
            }
        }
        (events, others)
    }

    pub async fn history(
        &mut self,
        room: &RoomId,
        direction: Direction,
        anchor: u64,
        limit: u16,
    ) -> HistoryPage {
        let rid = self
            .send(HistoryRequest {
                room: room.clone(),
                direction,
                anchor: Seq(anchor),
                limit,
            })
            .await;
        match self.wait_reply(rid, |_| true).await.body {
            Body::HistoryPage(p) => p,
            other => panic!("history failed: {other:?}"),
        }
    }

    /// Reads until the server closes, returning the frames seen.
    pub async fn until_closed(&mut self) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = self.recv().await {
            frames.push(f);
        }
        frames
    }
}

/// Asserts `seqs` are exactly `from..=to` in order.
pub fn assert_contiguous(seqs: &[u64], from: u64, to: u64) {
    let expected: Vec<u64> = (from..=to).collect();
    assert_eq!(seqs.len(), expected.len(), "count of sequences");
    assert_eq!(
        seqs,
        expected.as_slice(),
        "sequences contiguous and in order"
    );
}
