//! Compression (protocol 3.6) on the wire, with a raw client on real
//! sockets (TCP and WebSocket): `ZSTD` is granted only when offered and
//! on, compressed frames go both ways and decode, a client that did not
//! offer it never sees the `COMPRESSED` flag, and a hostile client (a zip
//! bomb, a corrupt body, the flag without the feature) gets its `Error`
//! and `Goodbye` and is closed while the other connections carry on.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use confab_broker::config::Config;
use confab_codec::*;
use confab_compress::{Compressor, Decompressor};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const MAX: u32 = 1 << 20;

fn config(dir: &std::path::Path) -> Config {
    let mut c = test_config(dir);
    c.listen.tls = None;
    c.listen.quic = None;
    c.listen.websocket_tls = None;
    c
}

/// A raw client that may offer `ZSTD`, and counts the compressed frames it
/// receives.
struct Raw {
    rd: Box<dyn AsyncRead + Send + Unpin>,
    wr: Box<dyn AsyncWrite + Send + Unpin>,
    buf: BytesMut,
    inflate: Option<Decompressor>,
    deflate: Option<Compressor>,
    compressed_seen: usize,
    next_request: u32,
    welcome: Option<Welcome>,
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Tcp,
    Ws,
}

impl Raw {
    async fn connect(broker: &confab_broker::BrokerHandle, via: Via) -> Raw {
        let (rd, wr): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        ) = match via {
            Via::Tcp => {
                let s = tokio::net::TcpStream::connect(broker.tcp_addr())
                    .await
                    .unwrap();
                s.set_nodelay(true).unwrap();
                let (rd, wr) = tokio::io::split(s);
                (Box::new(rd), Box::new(wr))
            }
            Via::Ws => {
                let addr = broker.websocket_addr().unwrap();
                let s = tokio::net::TcpStream::connect(addr).await.unwrap();
                let ws = ws::upgrade(s, &addr.to_string(), &Default::default())
                    .await
                    .unwrap();
                let (rd, wr) = tokio::io::split(confab_ws::WsStream::new(ws));
                (Box::new(rd), Box::new(wr))
            }
        };
        Raw {
            rd,
            wr,
            buf: BytesMut::new(),
            inflate: None,
            deflate: None,
            compressed_seen: 0,
            next_request: 1,
            welcome: None,
        }
    }

    /// Connects as `user:device`, offering `features`; returns the grant.
    async fn open(
        broker: &confab_broker::BrokerHandle,
        via: Via,
        user: &str,
        features: Features,
    ) -> Raw {
        let mut c = Raw::connect(broker, via).await;
        c.send(Hello {
            min_version: 1,
            max_version: 2,
            token: format!("{user}:d"),
            device: DeviceId::new("d").unwrap(),
            client_name: "compression-test".into(),
            resume: vec![],
            features,
        })
        .await;
        let welcome = match c.recv().await.expect("welcome").body {
            Body::Welcome(w) => w,
            other => panic!("expected Welcome, got {other:?}"),
        };
        if welcome.features.contains(Features::ZSTD) {
            c.inflate = Some(Decompressor::new());
            c.deflate = Some(Compressor::new(3, 64, welcome.max_frame_len).unwrap());
        }
        c.welcome = Some(welcome);
        c
    }

    async fn send(&mut self, body: impl Into<Body>) -> u32 {
        let rid = self.next_request;
        self.next_request += 1;
        let frame = Frame::request(rid, body);
        let mut out = BytesMut::new();
        match &mut self.deflate {
            Some(z) => z.encode(&frame, &mut out).unwrap(),
            None => frame.encode(&mut out).unwrap(),
        }
        self.send_raw(&out).await;
        rid
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).await.unwrap();
        self.wr.flush().await.unwrap();
    }

    /// The next frame, None at the end of the stream.
    async fn recv(&mut self) -> Option<Frame> {
        tokio::time::timeout(WAIT, async {
            loop {
                if let Some(h) = Header::peek(&self.buf) {
                    if h.flags & flags::COMPRESSED != 0
                        && self.buf.len() >= HEADER_LEN + h.len as usize
                    {
                        self.compressed_seen += 1;
                    }
                }
                if let Some(f) =
                    confab_compress::decode(&mut self.buf, MAX, self.inflate.as_mut()).unwrap()
                {
                    return Some(f);
                }
                match self.rd.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a frame in time")
    }

    /// Frames until the reply to `rid`, which is returned.
    async fn reply(&mut self, rid: u32) -> Frame {
        loop {
            let f = self.recv().await.expect("reply before the end");
            if f.request_id == rid {
                return f;
            }
        }
    }

    /// Everything until the broker closes.
    async fn until_closed(&mut self) -> Vec<Frame> {
        let mut all = Vec::new();
        while let Some(f) = self.recv().await {
            all.push(f);
        }
        all
    }
}

fn chat(i: u64) -> Bytes {
    Bytes::from(format!(
        "{{\"type\":\"text\",\"body\":\"Message {i}: shall we meet at the north entrance of the station at noon?\",\"mentions\":[]}}"
    ))
}

fn publish(r: &RoomId, i: u64) -> Publish {
    Publish {
        room: r.clone(),
        client_msg_id: i,
        kind: MessageKind::MESSAGE,
        refers_to: None,
        thread: None,
        payload: chat(i),
    }
}

async fn subscribe(c: &mut Raw, r: &RoomId, start: StartAt) {
    let rid = c
        .send(Subscribe {
            items: vec![SubscribeItem {
                room: r.clone(),
                start,
            }],
        })
        .await;
    match c.reply(rid).await.body {
        Body::SubscribeAck(a) => assert_eq!(a.results[0].code, ErrorCode::Normal),
        other => panic!("expected SubscribeAck, got {other:?}"),
    }
}

/// The payloads of `n` events (live or replayed), in order.
async fn events(c: &mut Raw, n: usize) -> Vec<(u64, Bytes)> {
    let mut got = Vec::new();
    while got.len() < n {
        match c.recv().await.expect("events before the end").body {
            Body::Event(e) => got.push((e.event.seq.0, e.event.payload)),
            Body::EventBatch(b) => got.extend(b.events.into_iter().map(|e| (e.seq.0, e.payload))),
            _ => {}
        }
    }
    got
}

async fn both_ways(via: Via) {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    let r = room("general");
    let mut alice = Raw::open(&broker, via, "alice", Features::ZSTD).await;
    let mut bob = Raw::open(&broker, via, "bob", Features::ZSTD).await;
    let mut carol = Raw::open(&broker, via, "carol", Features::NONE).await;
    assert_eq!(alice.welcome.as_ref().unwrap().features, Features::ZSTD);
    assert_eq!(carol.welcome.as_ref().unwrap().features, Features::NONE);
    subscribe(&mut bob, &r, StartAt::Live).await;
    subscribe(&mut carol, &r, StartAt::Live).await;
    for i in 1..=30 {
        let rid = alice.send(publish(&r, i)).await;
        assert!(matches!(alice.reply(rid).await.body, Body::PublishAck(_)));
    }
    let want: Vec<(u64, Bytes)> = (1..=30).map(|i| (i, chat(i))).collect();
    assert_eq!(events(&mut bob, 30).await, want);
    assert_eq!(events(&mut carol, 30).await, want);
    assert!(bob.compressed_seen >= 29, "{}", bob.compressed_seen);
    assert_eq!(carol.compressed_seen, 0, "carol did not offer ZSTD");
    // A late subscriber replays the log, compressed.
    let mut dave = Raw::open(&broker, via, "dave", Features::ZSTD).await;
    subscribe(&mut dave, &r, StartAt::From(Seq(1))).await;
    assert_eq!(events(&mut dave, 30).await, want);
    assert!(dave.compressed_seen >= 1);
    let s = broker.stats();
    assert!(s.inflated_out > 30 * 100, "{s:?}");
    assert!(s.inflated_in < s.inflated_out, "{s:?}");
    assert!(s.compressed_out * 2 < s.compressed_in, "{s:?}");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_frames_go_both_ways_over_tcp() {
    both_ways(Via::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_frames_go_both_ways_over_websocket() {
    both_ways(Via::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_compression_off_grants_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.compression.enabled = false;
    let broker = start(c).await;
    let alice = Raw::open(&broker, Via::Tcp, "alice", Features::ZSTD).await;
    assert_eq!(alice.welcome.as_ref().unwrap().features, Features::NONE);
    broker.shutdown().await;
}

/// `compression.max_contexts` bounds the zstd contexts: each connection
/// granted compression holds one for its decompressor, each stream that
/// compresses one more; a client offering `ZSTD` while none is free is not
/// granted it (and is served uncompressed), a stream with no free context
/// sends uncompressed, and every context comes back when its connection
/// ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_context_budget_bounds_compression_and_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.compression.max_contexts = 3;
    let broker = start(c).await;
    let r = room("general");
    // bob and erin each hold a decompressor from the handshake on; the
    // publisher did not offer compression.
    let mut alice = Raw::open(&broker, Via::Tcp, "alice", Features::NONE).await;
    let mut bob = Raw::open(&broker, Via::Tcp, "bob", Features::ZSTD).await;
    let mut erin = Raw::open(&broker, Via::Tcp, "erin", Features::ZSTD).await;
    assert_eq!(bob.welcome.as_ref().unwrap().features, Features::ZSTD);
    assert_eq!(erin.welcome.as_ref().unwrap().features, Features::ZSTD);
    subscribe(&mut bob, &r, StartAt::Live).await;
    subscribe(&mut erin, &r, StartAt::Live).await;
    // Small frames (Welcome, acks) took no compressor.
    assert_eq!(broker.stats().compression_contexts, 2);
    // The first event worth compressing: one of the two writers takes the
    // third context and compresses, the other finds none and sends its
    // events as they are.
    for i in 1..=5 {
        let rid = alice.send(publish(&r, i)).await;
        assert!(matches!(alice.reply(rid).await.body, Body::PublishAck(_)));
    }
    let want: Vec<(u64, Bytes)> = (1..=5).map(|i| (i, chat(i))).collect();
    assert_eq!(events(&mut bob, 5).await, want);
    assert_eq!(events(&mut erin, 5).await, want);
    let s = broker.stats();
    assert_eq!(s.compression_contexts, 3, "{s:?}");
    let compressing = [bob.compressed_seen, erin.compressed_seen]
        .iter()
        .filter(|n| **n > 0)
        .count();
    assert_eq!(
        compressing, 1,
        "{} {}",
        bob.compressed_seen, erin.compressed_seen
    );
    assert!(s.compression_contexts_refused >= 1, "{s:?}");
    // carol offers ZSTD with no context free: not granted, served plainly.
    let mut carol = Raw::open(&broker, Via::Tcp, "carol", Features::ZSTD).await;
    assert_eq!(carol.welcome.as_ref().unwrap().features, Features::NONE);
    subscribe(&mut carol, &r, StartAt::From(Seq(1))).await;
    assert_eq!(events(&mut carol, 5).await, want);
    assert_eq!(carol.compressed_seen, 0);
    // Every context comes back when the connections end.
    drop((alice, bob, erin, carol));
    let back = tokio::time::timeout(WAIT, async {
        while broker.stats().compression_contexts > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(back.is_ok(), "{:?}", broker.stats());
    let dave = Raw::open(&broker, Via::Tcp, "dave", Features::ZSTD).await;
    assert_eq!(dave.welcome.as_ref().unwrap().features, Features::ZSTD);
    broker.shutdown().await;
}

/// A compressed frame with `body` as its compressed body.
fn compressed(frame_type: u8, request_id: u32, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    Header {
        len: body.len() as u32,
        frame_type,
        flags: flags::COMPRESSED,
        request_id,
    }
    .put(&mut b);
    b.extend_from_slice(body);
    b.to_vec()
}

/// `frames` end with `Error(code)` (request id 0) then `Goodbye(code)`.
fn assert_refused(frames: &[Frame], code: ErrorCode) {
    let n = frames.len();
    assert!(n >= 2, "{frames:?}");
    match (&frames[n - 2], &frames[n - 1]) {
        (
            Frame {
                request_id: 0,
                body: Body::Error(e),
                ..
            },
            Frame {
                body: Body::Goodbye(g),
                ..
            },
        ) => {
            assert_eq!((e.code, g.code), (code, code), "{frames:?}");
        }
        _ => panic!("expected Error, Goodbye with {code:?}, got {frames:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_compressed_frames_close_only_their_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(config(dir.path())).await;
    let r = room("lobby");
    let mut bystander = Raw::open(&broker, Via::Tcp, "bob", Features::ZSTD).await;
    subscribe(&mut bystander, &r, StartAt::Live).await;

    // A zip bomb: 16 MiB of zeros in a few KiB, in a Publish.
    let zeros = vec![0u8; 16 << 20];
    let bomb = zstd_bomb(&zeros);
    assert!(bomb.len() < 8 << 10, "{}", bomb.len());
    let mut evil = Raw::open(&broker, Via::Tcp, "mallory", Features::ZSTD).await;
    evil.send_raw(&compressed(frame_type::Publish, 5, &bomb))
        .await;
    assert_refused(&evil.until_closed().await, ErrorCode::FrameTooLarge);

    // Garbage with the flag.
    let mut evil = Raw::open(&broker, Via::Tcp, "mallory", Features::ZSTD).await;
    evil.send_raw(&compressed(
        frame_type::Publish,
        5,
        b"definitely not zstd data",
    ))
    .await;
    assert_refused(&evil.until_closed().await, ErrorCode::MalformedFrame);

    // The flag without having agreed on ZSTD (a valid compressed body).
    let mut evil = Raw::open(&broker, Via::Tcp, "mallory", Features::NONE).await;
    let mut z = Compressor::new(1, 0, MAX).unwrap();
    let mut out = BytesMut::new();
    z.encode(&Frame::request(5, publish(&r, 1)), &mut out)
        .unwrap();
    assert_ne!(Header::peek(&out).unwrap().flags & flags::COMPRESSED, 0);
    evil.send_raw(&out).await;
    assert_refused(&evil.until_closed().await, ErrorCode::MalformedFrame);
    assert_eq!(evil.compressed_seen, 0);

    // The bystander never noticed.
    let mut alice = Raw::open(&broker, Via::Tcp, "alice", Features::ZSTD).await;
    let rid = alice.send(publish(&r, 1)).await;
    assert!(matches!(alice.reply(rid).await.body, Body::PublishAck(_)));
    assert_eq!(events(&mut bystander, 1).await, vec![(1, chat(1))]);
    broker.shutdown().await;
}

/// `data` as one zstd frame at a high level.
fn zstd_bomb(data: &[u8]) -> Vec<u8> {
    let mut z = Compressor::new(9, 0, u32::MAX).unwrap();
    let mut out = BytesMut::new();
    // Through the frame compressor, as a body: the result is a piece of a
    // zstd stream that a fresh decompressor accepts.
    let mut frame = BytesMut::new();
    Header {
        len: data.len() as u32,
        frame_type: 0x90,
        flags: 0,
        request_id: 0,
    }
    .put(&mut frame);
    frame.extend_from_slice(data);
    z.push_frame(&frame, &mut out).unwrap();
    out.split_off(HEADER_LEN).to_vec()
}
