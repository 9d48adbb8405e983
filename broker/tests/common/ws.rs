//! The WebSocket side of the raw test client: the upgrade (with any
//! `Origin` and subprotocol, to test the broker's checks), a reader task
//! that decodes exactly one frame per binary message, and a writer that
//! sends each write as one message (so a test decides what a message
//! holds, whole frames or hostile bytes).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use confab_codec::Frame;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{Sink, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

/// What a test's upgrade request carries.
#[derive(Debug, Clone)]
pub struct Upgrade {
    pub path: &'static str,
    pub origin: Option<String>,
    pub protocol: Option<&'static str>,
}

impl Default for Upgrade {
    fn default() -> Self {
        Upgrade {
            path: "/ws",
            origin: None,
            protocol: Some("confab.v1"),
        }
    }
}

/// Runs the HTTP upgrade over `stream` (TCP or TLS) to `host`.
pub async fn upgrade<S>(stream: S, host: &str, u: &Upgrade) -> Result<WebSocketStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut req = format!("ws://{host}{}", u.path).into_client_request()?;
    if let Some(o) = &u.origin {
        req.headers_mut()
            .insert("origin", HeaderValue::from_str(o).expect("origin"));
    }
    if let Some(p) = u.protocol {
        req.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static(p));
    }
    let (ws, resp) = tokio_tungstenite::client_async(req, stream).await?;
    if u.protocol == Some("confab.v1") {
        assert_eq!(
            resp.headers().get("sec-websocket-protocol"),
            Some(&HeaderValue::from_static("confab.v1")),
            "the broker selects the subprotocol"
        );
    }
    Ok(ws)
}

/// Splits an upgraded WebSocket into a per-write message writer and a
/// channel of the frames the broker sends.
pub fn split<S>(ws: WebSocketStream<S>) -> (MessageWriter<S>, mpsc::UnboundedReceiver<Frame>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sink, stream) = ws.split();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(read_frames(stream, tx));
    (MessageWriter { sink }, rx)
}

async fn read_frames<S>(
    mut stream: SplitStream<WebSocketStream<S>>,
    tx: mpsc::UnboundedSender<Frame>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Binary(bytes) = msg else {
            assert!(
                !matches!(msg, Message::Text(_)),
                "the broker sent a text message"
            );
            continue;
        };
        let mut buf = BytesMut::from(&bytes[..]);
        let frame = Frame::decode(&mut buf, 1 << 24)
            .expect("server frames are valid")
            .expect("a whole frame in the message");
        assert!(buf.is_empty(), "exactly one frame per message");
        if tx.send(frame).is_err() {
            return;
        }
    }
}

/// Sends each write as one binary message.
pub struct MessageWriter<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
}

fn to_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        other => io::Error::other(other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MessageWriter<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let sink = &mut self.get_mut().sink;
        ready!(Pin::new(&mut *sink).poll_ready(cx)).map_err(to_io)?;
        Pin::new(&mut *sink)
            .start_send(Message::Binary(buf.to_vec().into()))
            .map_err(to_io)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().sink)
            .poll_flush(cx)
            .map_err(to_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().sink)
            .poll_close(cx)
            .map_err(to_io)
    }
}
