//! QUIC: the connection, its control stream as the protocol's byte stream,
//! and the unidirectional streams on which the broker sends room events
//! (protocol section 2.1).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use confab_codec::Frame;
use futures_util::StreamExt;
use rustls::pki_types::ServerName;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::codec::FramedRead;

use super::tls::{self, Trust};
use super::Link;
use crate::codec::FrameCodec;
use crate::config::ClientConfig;
use crate::error::ClientError;

/// Event streams the broker may have open at once (it uses a few: one per
/// group of rooms).
const MAX_EVENT_STREAMS: u32 = 256;

/// Decoded event frames waiting for the connection task.
const EVENT_QUEUE: usize = 256;

/// A QUIC connection behind a [`Link`].
#[derive(Debug)]
pub(crate) struct QuicLink {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) conn: quinn::Connection,
}

/// The quinn client configuration: TLS 1.3 with `trust`, ALPN `confab/1`;
/// the broker may open event streams, not bidirectional ones. QUIC's idle
/// timeout stays above the SDK's dead-link timeout, which decides first.
///
/// # Errors
/// [`ClientError::InvalidConfig`] if the trust cannot be loaded.
pub(crate) fn client_config(
    trust: &Trust,
    config: &ClientConfig,
) -> Result<quinn::ClientConfig, ClientError> {
    let tls = tls::client_config(trust, true)?;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ClientError::InvalidConfig(format!("QUIC TLS configuration: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(MAX_EVENT_STREAMS.into())
        .max_idle_timeout(
            quinn::IdleTimeout::try_from(config.dead_link_timeout + Duration::from_secs(5)).ok(),
        );
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// Connects from a fresh endpoint and opens the control stream.
pub(crate) async fn connect(
    host: &str,
    port: u16,
    name: &ServerName<'static>,
    config: quinn::ClientConfig,
) -> std::io::Result<Link> {
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))?;
    let bind = if addr.is_ipv6() {
        SocketAddr::from(([0u16; 8], 0))
    } else {
        SocketAddr::from(([0u8; 4], 0))
    };
    let endpoint = quinn::Endpoint::client(bind)?;
    let conn = endpoint
        .connect_with(config, addr, &name.to_str())
        .map_err(std::io::Error::other)?
        .await
        .map_err(std::io::Error::other)?;
    // The stream exists for the broker once the Hello is written on it.
    let (send, recv) = conn.open_bi().await.map_err(std::io::Error::other)?;
    Ok(Link {
        stream: Box::new(tokio::io::join(recv, send)),
        quic: Some(QuicLink { endpoint, conn }),
    })
}

/// The room events of a QUIC connection: every unidirectional stream the
/// broker opens, each decoded in its own task (so a stream waiting for a
/// lost packet holds back only its own rooms) and merged into one queue.
/// Frames of one stream keep their order.
#[derive(Debug)]
pub(crate) struct EventStreams {
    rx: mpsc::Receiver<Result<Frame, ClientError>>,
    task: JoinHandle<()>,
}

impl EventStreams {
    /// Starts accepting the connection's event streams.
    /// With `zstd`, each stream is read through its own decompressor
    /// (protocol 3.6).
    pub(crate) fn start(conn: quinn::Connection, max_frame_len: u32, zstd: bool) -> Self {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let task = tokio::spawn(async move {
            // Owned here, so that aborting this task stops every reader.
            let mut readers = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = conn.accept_uni() => match accepted {
                        Ok(stream) => {
                            readers.spawn(read_stream(stream, tx.clone(), max_frame_len, zstd));
                        }
                        Err(_) => break,
                    },
                    Some(_) = readers.join_next(), if !readers.is_empty() => {}
                }
            }
            while readers.join_next().await.is_some() {}
        });
        Self { rx, task }
    }

    /// The next event frame; None once the connection is closed and every
    /// stream was read.
    pub(crate) async fn next(&mut self) -> Option<Result<Frame, ClientError>> {
        self.rx.recv().await
    }
}

impl Drop for EventStreams {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_stream(
    stream: quinn::RecvStream,
    tx: mpsc::Sender<Result<Frame, ClientError>>,
    max_frame_len: u32,
    zstd: bool,
) {
    let mut codec = FrameCodec::new(max_frame_len);
    if zstd {
        codec.enable_decompression();
    }
    let mut frames = FramedRead::new(stream, codec);
    while let Some(item) = frames.next().await {
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}
