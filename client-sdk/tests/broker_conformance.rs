//! Checks that the reference broker does what docs/protocol.md promises in
//! places the SDK depends on, found while testing the SDK.
//!
//! They speak the wire protocol directly (no SDK) so that they show the
//! broker's behaviour alone.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use confab_broker::config::Config;
use confab_broker::{Broker, BrokerHandle};
use confab_client::confab_codec::{
    Body, CodecError, DeviceId, ErrorCode, Frame, Hello, DEFAULT_MAX_FRAME_LEN, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder, Framed};

struct Codec;

impl Decoder for Codec {
    type Item = Frame;
    type Error = std::io::Error;
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, std::io::Error> {
        Frame::decode(src, DEFAULT_MAX_FRAME_LEN).map_err(std::io::Error::other)
    }
}

impl Encoder<Frame> for Codec {
    type Error = std::io::Error;
    fn encode(&mut self, f: Frame, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        f.encode(dst)
            .map_err(|e: CodecError| std::io::Error::other(e))
    }
}

async fn broker(dir: &std::path::Path) -> BrokerHandle {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.listen.tcp = "127.0.0.1:0".parse().unwrap();
    // QUIC listens on a fixed port by default; not needed here.
    config.listen.quic = None;
    Broker::builder(config).start().await.unwrap()
}

/// Opens a connection and completes the handshake as `token` on `device`.
async fn handshake(addr: SocketAddr, token: &str, device: &str) -> Framed<TcpStream, Codec> {
    let mut conn = Framed::new(TcpStream::connect(addr).await.unwrap(), Codec);
    let hello = Hello {
        min_version: PROTOCOL_VERSION,
        max_version: PROTOCOL_VERSION,
        token: token.into(),
        device: DeviceId::new(device).unwrap(),
        client_name: "conformance".into(),
        resume: Vec::new(),
        features: Default::default(),
    };
    conn.send(Frame::request(1, hello)).await.unwrap();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), conn.next())
            .await
            .expect("no Welcome")
            .expect("closed before Welcome")
            .unwrap();
        match frame.body {
            Body::Welcome(_) => return conn,
            Body::Notice(_) => {}
            other => panic!("unexpected {} before Welcome", other.name()),
        }
    }
}

/// Protocol 15.3: "When the same user connects again with the same device
/// id, the server closes the older connection with `Goodbye` code
/// `SessionReplaced`." (also 10, code 44, and the checklist in 18).
///
/// The broker keeps both connections open: the older one receives no
/// `Goodbye` and stays usable, so the same device has two live sessions.
#[tokio::test]
async fn the_same_device_connecting_again_replaces_the_older_session() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path()).await;
    let addr = broker.tcp_addr();

    let mut older = handshake(addr, "alice:phone", "phone").await;
    let _newer = handshake(addr, "alice:phone", "phone").await;

    // The older connection must get Goodbye(SessionReplaced), then EOF.
    let outcome = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match older.next().await {
                Some(Ok(frame)) => match frame.body {
                    Body::Goodbye(g) => return Some(g.code),
                    Body::Ping(_) | Body::Notice(_) => {}
                    other => panic!("unexpected {}", other.name()),
                },
                _ => return None,
            }
        }
    })
    .await;
    broker.shutdown().await;
    assert_eq!(
        outcome,
        Ok(Some(ErrorCode::SessionReplaced)),
        "the older session was neither replaced nor closed \
         (Err(Elapsed): still open after 3 s; Ok(None): closed without Goodbye)"
    );
}
