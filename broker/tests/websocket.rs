//! The WebSocket listeners (`ws://`, `wss://`): the upgrade's checks (path,
//! subprotocol, `Origin`), one frame per binary message both ways, what
//! the broker does with messages that break that rule, the pre-`Hello`
//! budget, keepalive pings, and the `confab` binary's `--listen-ws`.
//! Publish, subscribe and history over WebSocket run in `pubsub.rs`.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

use std::time::Duration;

use common::ws::{self, upgrade, Upgrade};
use common::*;
use confab_codec::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// Asserts the server sends an Error with `code` (and maybe a Goodbye), then closes.
async fn expect_error_and_close(c: &mut Conn, code: ErrorCode) {
    let frames = c.until_closed().await;
    assert!(
        frames
            .iter()
            .any(|f| matches!(&f.body, Body::Error(e) if e.code == code)),
        "expected an Error {code:?}, got {frames:?}"
    );
}

/// An upgraded WebSocket that has sent its `Hello` as `user:d`.
async fn raw_session(
    addr: std::net::SocketAddr,
    user: &str,
) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let mut ws = upgrade(stream, &addr.to_string(), &Upgrade::default())
        .await
        .unwrap();
    let hello = Frame::request(
        1,
        Hello {
            min_version: 1,
            max_version: 1,
            token: format!("{user}:d"),
            device: DeviceId::new("d").unwrap(),
            client_name: "test".into(),
            resume: Vec::new(),
            features: Default::default(),
        },
    );
    ws.send(Message::Binary(hello.to_bytes().unwrap()))
        .await
        .unwrap();
    ws
}

/// The codes of the `Error` frames the broker sends until it closes.
async fn error_codes_until_closed(
    ws: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
) -> Vec<ErrorCode> {
    let mut codes = Vec::new();
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(WAIT, ws.next()).await {
        if let Message::Binary(b) = msg {
            let mut buf = bytes::BytesMut::from(&b[..]);
            if let Some(Frame {
                body: Body::Error(e),
                ..
            }) = Frame::decode(&mut buf, 1 << 20).unwrap()
            {
                codes.push(e.code);
            }
        }
    }
    codes
}

/// The HTTP status of a refused upgrade.
async fn refused_status(addr: std::net::SocketAddr, u: Upgrade) -> u16 {
    let stream = TcpStream::connect(addr).await.unwrap();
    match upgrade(stream, &addr.to_string(), &u).await {
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("the upgrade was accepted"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upgrade_checks_path_subprotocol_and_origin() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = broker.websocket_addr().unwrap();

    let evil = Upgrade {
        origin: Some("https://evil.example".into()),
        ..Upgrade::default()
    };
    assert_eq!(refused_status(addr, evil).await, 403);
    let no_protocol = Upgrade {
        protocol: None,
        ..Upgrade::default()
    };
    assert_eq!(refused_status(addr, no_protocol).await, 400);
    let elsewhere = Upgrade {
        path: "/socket",
        ..Upgrade::default()
    };
    assert_eq!(refused_status(addr, elsewhere).await, 404);

    // An allowed origin (the dev default's demo page) gets a session.
    let stream = TcpStream::connect(addr).await.unwrap();
    let page = Upgrade {
        origin: Some("http://localhost:7403".into()),
        ..Upgrade::default()
    };
    let ws = upgrade(stream, &addr.to_string(), &page).await.unwrap();
    let (wr, rx) = ws::split(ws);
    let mut c = Conn::over_parts(Box::new(wr), rx);
    c.handshake("alice", "browser", Vec::new()).await;
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_and_tcp_devices_share_rooms_with_every_byte_value() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let r = room("mixed");
    let every_byte: Vec<u8> = (0..=255u8).collect();

    let mut web = Conn::open(dial(&broker, Transport::Ws), "web", "tab").await;
    let mut native = Conn::open(dial(&broker, Transport::Tcp), "native", "phone").await;
    web.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    native.subscribe(vec![(r.clone(), StartAt::Live)]).await;

    let ack = native.publish(&r, 1, &every_byte).await;
    assert_eq!(ack.seq, Seq(1));
    let ack = web.publish(&r, 1, &every_byte[..128]).await;
    assert_eq!(ack.seq, Seq(2));
    // A retry over WebSocket is stored once.
    let again = web.publish(&r, 1, &every_byte[..128]).await;
    assert_eq!((again.seq, again.duplicate), (Seq(2), true));

    for c in [&mut web, &mut native] {
        let (events, _) = c.events(2).await;
        assert_eq!(events[0].1, 1);
        assert_eq!(&events[0].2[..], &every_byte[..]);
        assert_eq!(events[1].1, 2);
        assert_eq!(&events[1].2[..], &every_byte[..128]);
    }
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_that_are_not_one_frame_get_an_error_and_a_close() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = dial(&broker, Transport::Ws);
    let r = room("calm");
    let mut bystander = Conn::open(dial(&broker, Transport::Tcp), "bystander", "d").await;
    bystander.subscribe(vec![(r.clone(), StartAt::Live)]).await;

    // Two frames in one message.
    let mut c = Conn::open(&addr, "a", "d").await;
    let mut two = Frame::request(7, Ping { nonce: 1 })
        .to_bytes()
        .unwrap()
        .to_vec();
    two.extend_from_slice(&Frame::request(8, Ping { nonce: 2 }).to_bytes().unwrap());
    c.send_raw(&two).await.unwrap();
    expect_error_and_close(&mut c, ErrorCode::MalformedFrame).await;

    // Half a frame.
    let mut c = Conn::open(&addr, "b", "d").await;
    let ping = Frame::request(7, Ping { nonce: 1 }).to_bytes().unwrap();
    c.send_raw(&ping[..ping.len() - 3]).await.unwrap();
    expect_error_and_close(&mut c, ErrorCode::MalformedFrame).await;

    // A header alone, declaring more than the frame limit: the declared
    // length is judged first, as on TCP (protocol 3.5).
    let mut c = Conn::open(&addr, "e", "d").await;
    let mut huge = Vec::new();
    Header {
        len: u32::MAX,
        frame_type: frame_type::Publish,
        flags: 0,
        request_id: 1,
    }
    .put(&mut huge);
    c.send_raw(&huge).await.unwrap();
    expect_error_and_close(&mut c, ErrorCode::FrameTooLarge).await;

    // Fewer bytes than a header.
    let mut c = Conn::open(&addr, "c", "d").await;
    c.send_raw(&[0, 0, 1]).await.unwrap();
    expect_error_and_close(&mut c, ErrorCode::MalformedFrame).await;

    // A whole frame the codec refuses is the codec's error, as on TCP.
    let mut c = Conn::open(&addr, "d", "d").await;
    let mut unknown = Vec::new();
    Header {
        len: 0,
        frame_type: 0x7f,
        flags: 0,
        request_id: 1,
    }
    .put(&mut unknown);
    c.send_raw(&unknown).await.unwrap();
    expect_error_and_close(&mut c, ErrorCode::UnknownFrameType).await;

    // A text message.
    let stream = TcpStream::connect(addr.addr).await.unwrap();
    let mut ws = upgrade(stream, &addr.addr.to_string(), &Upgrade::default())
        .await
        .unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    let codes = error_codes_until_closed(&mut ws).await;
    assert_eq!(codes, vec![ErrorCode::ProtocolViolation]);

    // Nobody else noticed.
    let mut c = Conn::open(&addr, "healthy", "d").await;
    assert_eq!(c.publish(&r, 1, b"still here").await.seq, Seq(1));
    let (events, _) = bystander.events(1).await;
    assert_eq!(&events[0].2[..], b"still here");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_sizes_are_bounded_before_and_after_the_hello() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = dial(&broker, Transport::Ws);
    let frame_of = |len: usize| {
        let mut bytes = Vec::new();
        Header {
            len: len as u32,
            frame_type: frame_type::Publish,
            flags: 0,
            request_id: 1,
        }
        .put(&mut bytes);
        bytes.resize(HEADER_LEN + len, 0);
        bytes
    };

    // Before the Hello: a first message past admission.max_hello_len
    // (64 KiB) is refused before it is buffered whole.
    let mut c = Conn::connect(&addr).await;
    let _ = c.send_raw(&frame_of(200 << 10)).await;
    expect_error_and_close(&mut c, ErrorCode::FrameTooLarge).await;

    // After the Welcome: the frame limit (1 MiB by default) holds.
    let mut c = Conn::open(&addr, "big", "d").await;
    let max = c.welcome.as_ref().unwrap().max_frame_len as usize;
    let _ = c.send_raw(&frame_of(max + 1)).await;
    expect_error_and_close(&mut c, ErrorCode::FrameTooLarge).await;

    // A message in WebSocket fragments, past the limit in total: four of
    // 256 KiB (1 MiB, under 10 + max_frame_len), then 16 bytes more. The
    // last is small, so that the broker has read everything when it
    // closes (a close with unread bytes would reset the connection).
    let mut ws = raw_session(addr.addr, "fragments").await;
    let quarter = 256 << 10;
    for i in 0..4 {
        let opcode = if i == 0 { Data::Binary } else { Data::Continue };
        let frame = WsFrame::message(vec![0u8; quarter], OpCode::Data(opcode), false);
        ws.send(Message::Frame(frame)).await.unwrap();
    }
    let last = WsFrame::message(vec![0u8; 16], OpCode::Data(Data::Continue), true);
    let _ = ws.send(Message::Frame(last)).await;
    let codes = error_codes_until_closed(&mut ws).await;
    assert!(codes.contains(&ErrorCode::FrameTooLarge), "{codes:?}");

    // A publish of the largest payload fits.
    let mut c = Conn::open(&addr, "fits", "d").await;
    let payload = vec![7u8; c.welcome.as_ref().unwrap().max_payload_len as usize];
    let ack = c.publish(&room("big"), 1, &payload).await;
    assert_eq!(ack.seq, Seq(1));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_pings_and_drops_a_peer_that_never_answers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.websocket.ping_interval_ms = 1000;
    // The protocol's own idle timeout must not be what ends it.
    config.limits.heartbeat_ms = 60_000;
    config.limits.idle_timeout_ms = 120_000;
    let broker = start(config).await;
    let addr = broker.websocket_addr().unwrap();

    let mut ws = raw_session(addr, "quiet").await;
    // Welcome, then a ping after a second of silence (tungstenite queues
    // the pong; it leaves only with the next read or write).
    let mut pinged = false;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(WAIT, ws.next()).await {
        if matches!(msg, Message::Ping(_)) {
            pinged = true;
            break;
        }
    }
    assert!(pinged, "no WebSocket ping from the broker");
    // Now stay silent, pong unsent: the broker gives up after two
    // intervals without a sign of life and closes.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut closed = false;
    while let Ok(next) = tokio::time::timeout(WAIT, ws.next()).await {
        match next {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                closed = true;
                break;
            }
            Some(Ok(_)) => {}
        }
    }
    assert!(closed, "the connection stayed open");
    broker.shutdown().await;
}

/// The `confab` binary's `--listen-ws`: a device on WebSocket and one on
/// TCP, through the real process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_websocket_with_listen_ws() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ws_port = free_port();
    let mut child = spawn_confab_with(
        dir.path(),
        port,
        "wal",
        &["--listen-ws", &format!("127.0.0.1:{ws_port}")],
    );
    let tcp: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ws: std::net::SocketAddr = format!("127.0.0.1:{ws_port}").parse().unwrap();
    wait_listening(tcp).await;
    wait_listening(ws).await;
    let web = Dial {
        transport: Transport::Ws,
        addr: ws,
        cert: None,
    };
    let r = room("binary");
    let mut a = Conn::open(&web, "a", "tab").await;
    a.subscribe(vec![(r.clone(), StartAt::Live)]).await;
    let mut b = Conn::open(tcp, "b", "phone").await;
    assert_eq!(b.publish(&r, 1, b"over tcp").await.seq, Seq(1));
    let (events, _) = a.events(1).await;
    assert_eq!(&events[0].2[..], b"over tcp");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Admission control holds for WebSocket as for the other listeners: an
/// address over its connection limit is closed before the upgrade, and
/// others still get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_before_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.admission.max_connections_per_ip = 2;
    let broker = start(config).await;
    let web = dial(&broker, Transport::Ws);
    let _a = Conn::open(&web, "a", "d").await;
    let _b = Conn::open(&web, "b", "d").await;
    assert!(handshake_refused(&web).await, "a third connection got in");

    // Another address is admitted.
    let stream = tcp_from("127.0.0.2".parse().unwrap(), web.addr)
        .await
        .unwrap();
    let ws = upgrade(stream, &web.addr.to_string(), &Upgrade::default())
        .await
        .unwrap();
    let (wr, rx) = ws::split(ws);
    let mut c = Conn::over_parts(Box::new(wr), rx);
    c.handshake("c", "d", Vec::new()).await;
    broker.shutdown().await;
}
