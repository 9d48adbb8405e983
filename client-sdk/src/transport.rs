//! Transports: how the SDK gets a byte stream to the broker.
//!
//! Everything above this module works on a [`BoxByteStream`], an ordered,
//! reliable byte stream in both directions, so the protocol code has one
//! path whatever carries the bytes. Today that is plain TCP; TLS (a
//! `confabs://` scheme wrapping the TCP stream in tokio-rustls) and QUIC
//! (one bidirectional stream of a quinn connection) will be new
//! [`Endpoint`] variants that produce the same kind of stream. Applications
//! and tests can plug in their own transport with [`Endpoint::Custom`].

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::error::ClientError;

/// The broker's default TCP port.
///
/// ```
/// use confab_client::{Endpoint, DEFAULT_PORT};
///
/// let e = Endpoint::parse("confab://chat.example.com")?;
/// assert_eq!(e.to_string(), format!("confab://chat.example.com:{DEFAULT_PORT}"));
/// # Ok::<(), confab_client::ClientError>(())
/// ```
pub const DEFAULT_PORT: u16 = 7400;

/// A bidirectional byte stream: what every transport provides.
///
/// Implemented for every type with these bounds, for example
/// `tokio::net::TcpStream` or one half of `tokio::io::duplex`:
///
/// ```
/// use confab_client::{BoxByteStream, ByteStream};
///
/// fn boxed(stream: impl ByteStream) -> BoxByteStream {
///     Box::new(stream)
/// }
/// let (client_side, _broker_side) = tokio::io::duplex(64 * 1024);
/// let _stream = boxed(client_side);
/// ```
pub trait ByteStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T> ByteStream for T where T: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

/// A boxed [`ByteStream`].
///
/// See [`Connector`] for a use.
pub type BoxByteStream = Box<dyn ByteStream>;

/// Opens byte streams to a broker by means the SDK does not know: an
/// in-process pipe, a proxy, a fault-injecting wrapper in tests.
///
/// A connector that reaches the broker through a local relay (standing in
/// for any transport the SDK does not provide):
///
/// ```
/// use std::sync::Arc;
/// use confab_client::confab_codec::DeviceId;
/// use confab_client::{BoxByteStream, ClientConfig, Connector, Endpoint};
/// use futures_util::future::BoxFuture;
///
/// #[derive(Debug)]
/// struct ViaRelay {
///     relay: std::net::SocketAddr,
/// }
///
/// impl Connector for ViaRelay {
///     fn connect(&self) -> BoxFuture<'_, std::io::Result<BoxByteStream>> {
///         Box::pin(async move {
///             let stream = tokio::net::TcpStream::connect(self.relay).await?;
///             Ok(Box::new(stream) as BoxByteStream)
///         })
///     }
/// }
///
/// let endpoint = Endpoint::Custom(Arc::new(ViaRelay { relay: "127.0.0.1:9000".parse().unwrap() }));
/// let config = ClientConfig::with_endpoint(endpoint, "alice", DeviceId::new("phone")?);
/// # let _ = config;
/// # Ok::<(), confab_client::ClientError>(())
/// ```
pub trait Connector: Send + Sync + fmt::Debug + 'static {
    /// Opens one new stream. Called for every connection attempt.
    fn connect(&self) -> BoxFuture<'_, std::io::Result<BoxByteStream>>;
}

/// Where the broker is and how to reach it.
///
/// ```
/// use std::net::SocketAddr;
/// use confab_client::Endpoint;
///
/// let parsed: Endpoint = "confab://127.0.0.1:7400".parse()?;
/// let addr: SocketAddr = "127.0.0.1:7400".parse().unwrap();
/// assert_eq!(parsed.to_string(), Endpoint::tcp(addr).to_string());
/// # Ok::<(), confab_client::ClientError>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub enum Endpoint {
    /// Plain TCP.
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// A transport provided by the application.
    Custom(Arc<dyn Connector>),
}

impl Endpoint {
    /// A TCP endpoint at a socket address.
    ///
    /// ```
    /// use confab_client::Endpoint;
    ///
    /// let e = Endpoint::tcp("[::1]:7400".parse().unwrap());
    /// assert_eq!(e.to_string(), "confab://[::1]:7400");
    /// ```
    pub fn tcp(addr: SocketAddr) -> Self {
        Endpoint::Tcp {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// Parses `confab://host:port`, `tcp://host:port` or a bare `host:port`.
    /// The port defaults to [`DEFAULT_PORT`]; IPv6 addresses go in brackets
    /// (`confab://[::1]:7400`).
    ///
    /// ```
    /// use confab_client::Endpoint;
    ///
    /// let e = Endpoint::parse("confab://chat.example.com:7400").unwrap();
    /// assert_eq!(e.to_string(), "confab://chat.example.com:7400");
    /// ```
    ///
    /// # Errors
    /// [`ClientError::InvalidConfig`] for an unknown or not yet supported
    /// scheme (`confabs://` for TLS, `quic://`), a path, or a bad port.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::InvalidConfig(format!("endpoint `{url}`: {why}"));
        let rest = match url.split_once("://") {
            Some(("confab" | "tcp", rest)) => rest,
            Some(("confabs" | "tls" | "quic", _)) => {
                return Err(bad("TLS and QUIC transports are not supported yet"))
            }
            Some((scheme, _)) => return Err(bad(&format!("unknown scheme `{scheme}`"))),
            None => url,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(bad("expected host[:port] with no path, query or user"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(p.strip_prefix(':').ok_or_else(|| bad("junk after `]`"))?),
                ),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => {
                    return Err(bad("IPv6 addresses must be in brackets"))
                }
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
            None => DEFAULT_PORT,
        };
        if port == 0 {
            return Err(bad("port 0"));
        }
        Ok(Endpoint::Tcp {
            host: host.to_owned(),
            port,
        })
    }

    /// Opens a byte stream to the endpoint.
    pub(crate) async fn connect(&self) -> std::io::Result<BoxByteStream> {
        match self {
            Endpoint::Tcp { host, port } => {
                let stream = TcpStream::connect((host.as_str(), *port)).await?;
                // Frames are small and latency matters more than packing.
                stream.set_nodelay(true)?;
                Ok(Box::new(stream))
            }
            Endpoint::Custom(connector) => connector.connect().await,
        }
    }
}

impl FromStr for Endpoint {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, ClientError> {
        Endpoint::parse(s)
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Self {
        Endpoint::tcp(addr)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp { host, port } if host.contains(':') => {
                write!(f, "confab://[{host}]:{port}")
            }
            Endpoint::Tcp { host, port } => write!(f, "confab://{host}:{port}"),
            Endpoint::Custom(c) => write!(f, "custom({c:?})"),
        }
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn tcp(url: &str) -> (String, u16) {
        match Endpoint::parse(url).unwrap() {
            Endpoint::Tcp { host, port } => (host, port),
            other => panic!("not tcp: {other:?}"),
        }
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            tcp("confab://example.com:9000"),
            ("example.com".into(), 9000)
        );
        assert_eq!(tcp("tcp://10.0.0.1:1"), ("10.0.0.1".into(), 1));
        assert_eq!(tcp("localhost:7401"), ("localhost".into(), 7401));
        assert_eq!(
            tcp("confab://example.com/"),
            ("example.com".into(), DEFAULT_PORT)
        );
        assert_eq!(tcp("confab://[::1]:7400"), ("::1".into(), 7400));
        assert_eq!(tcp("[::1]"), ("::1".into(), DEFAULT_PORT));
        assert_eq!(
            Endpoint::parse("confab://[::1]:7400").unwrap().to_string(),
            "confab://[::1]:7400"
        );
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "confabs://example.com",
            "quic://example.com",
            "http://example.com",
            "confab://",
            "confab://host:notaport",
            "confab://host:0",
            "confab://host:1/path",
            "::1:7400",
            "[::1",
        ] {
            assert!(Endpoint::parse(url).is_err(), "{url} accepted");
        }
    }

    #[tokio::test]
    async fn tcp_connects() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = Endpoint::tcp(listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            buf
        });
        let mut stream = endpoint.connect().await.unwrap();
        stream.write_all(b"ping").await.unwrap();
        assert_eq!(&server.await.unwrap(), b"ping");
    }
}
