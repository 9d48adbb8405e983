//! How the load generator reaches a broker: TCP, TLS, QUIC or WebSocket
//! (through `confab-ws`, the broker's own frame-per-message adapter). QUIC's
//! control and event streams are merged by helper tasks into one source of
//! whole frames, so the reader above is the same for every transport.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use confab_codec::{Header, HEADER_LEN};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How to reach the broker.
#[derive(Clone)]
pub enum Dial {
    /// Plain TCP.
    Tcp(SocketAddr),
    /// TLS over TCP, trusting what the connector trusts.
    Tls(SocketAddr, tokio_rustls::TlsConnector),
    /// QUIC: a control stream, and the broker's event streams.
    Quic(SocketAddr, quinn::ClientConfig),
    /// WebSocket (`ws://ADDR/ws`, subprotocol `confab.v1`).
    Ws(SocketAddr),
}

impl From<SocketAddr> for Dial {
    fn from(addr: SocketAddr) -> Dial {
        Dial::Tcp(addr)
    }
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dial::Tcp(a) => write!(f, "tcp {a}"),
            Dial::Tls(a, _) => write!(f, "tls {a}"),
            Dial::Quic(a, _) => write!(f, "quic {a}"),
            Dial::Ws(a) => write!(f, "ws {a}"),
        }
    }
}

/// Where a reader's bytes come from.
pub(super) enum Source {
    /// One byte stream (TCP, TLS).
    Stream(Box<dyn AsyncRead + Send + Unpin>),
    /// QUIC: runs of whole frames, read from the control stream and every
    /// event stream by helper tasks. The connection lives as long as this.
    Chunks {
        rx: mpsc::Receiver<Bytes>,
        _conn: QuicConn,
    },
}

/// A QUIC connection, closed (and its stream readers stopped) on drop.
pub(super) struct QuicConn {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Drop for QuicConn {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.conn.close(0u32.into(), b"");
    }
}

pub(super) async fn tcp(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

pub(super) async fn open(
    dial: &Dial,
) -> anyhow::Result<(Source, Box<dyn AsyncWrite + Send + Unpin>)> {
    Ok(match dial {
        Dial::Tcp(addr) => {
            let (rd, wr) = tcp(*addr).await?.into_split();
            (Source::Stream(Box::new(rd)), Box::new(wr))
        }
        Dial::Tls(addr, connector) => {
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let stream = connector.connect(name, tcp(*addr).await?).await?;
            let (rd, wr) = tokio::io::split(stream);
            (Source::Stream(Box::new(rd)), Box::new(wr))
        }
        Dial::Quic(addr, config) => {
            let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
            let conn = endpoint
                .connect_with(config.clone(), *addr, "localhost")?
                .await?;
            let (send, recv) = conn.open_bi().await?;
            let (tx, rx) = mpsc::channel(1024);
            let events = conn.clone();
            let acceptor = tokio::spawn(async move {
                let mut readers = tokio::task::JoinSet::new();
                readers.spawn(forward_frames(recv, tx.clone()));
                while let Ok(stream) = events.accept_uni().await {
                    readers.spawn(forward_frames(stream, tx.clone()));
                }
                while readers.join_next().await.is_some() {}
            });
            let conn = QuicConn {
                _endpoint: endpoint,
                conn,
                acceptor,
            };
            (Source::Chunks { rx, _conn: conn }, Box::new(send))
        }
        Dial::Ws(addr) => {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            use tokio_tungstenite::tungstenite::http::HeaderValue;
            let mut req = format!("ws://{addr}{}", confab_ws::PATH).into_client_request()?;
            req.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(confab_ws::SUBPROTOCOL),
            );
            let config = confab_ws::config(1 << 24, 64 << 10);
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(req, tcp(*addr).await?, Some(config))
                    .await?;
            let (rd, wr) = tokio::io::split(confab_ws::WsStream::new(ws));
            (Source::Stream(Box::new(rd)), Box::new(wr))
        }
    })
}

/// Reads a QUIC stream and forwards its bytes in runs of whole frames, so
/// that runs from different streams can be appended to one buffer.
async fn forward_frames(mut stream: quinn::RecvStream, tx: mpsc::Sender<Bytes>) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    loop {
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut whole = 0;
        while let Some(h) = Header::peek(&buf[whole..]) {
            let total = HEADER_LEN + h.len as usize;
            if buf.len() - whole < total {
                break;
            }
            whole += total;
        }
        if whole > 0 && tx.send(buf.split_to(whole).freeze()).await.is_err() {
            return;
        }
    }
}

/// A rustls client configuration trusting exactly `cert` (ring only), for
/// QUIC (TLS 1.3) or TCP.
pub fn tls_client(
    cert: &rustls::pki_types::CertificateDer<'static>,
) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.clone())?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![confab_broker::transport::tls::ALPN.to_vec()];
    Ok(config)
}
