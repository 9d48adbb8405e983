//! Transports: how the SDK gets a byte stream to the broker.
//!
//! Everything above this module works on a [`BoxByteStream`], an ordered,
//! reliable byte stream in both directions, so the protocol code has one
//! path whatever carries the bytes: plain TCP (`confab://`), TLS over TCP
//! (`confabs://`, tokio-rustls), or the control stream of a QUIC connection
//! (`confab+quic://`, quinn). QUIC adds one thing the connection task
//! handles: room events arrive on separate unidirectional streams, decoded
//! by the same codec and handed to the same dispatch (protocol section
//! 2.1). Applications and tests can plug in their own transport with
//! [`Endpoint::Custom`].

mod quic;
mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub(crate) use self::quic::{EventStreams, QuicLink};
pub use self::tls::{Fingerprint, Trust, ALPN};
use crate::config::ClientConfig;
use crate::error::ClientError;

/// The broker's default TCP port (`confab://`).
///
/// ```
/// use confab_client::{Endpoint, DEFAULT_PORT};
///
/// let e = Endpoint::parse("confab://chat.example.com")?;
/// assert_eq!(e.to_string(), format!("confab://chat.example.com:{DEFAULT_PORT}"));
/// # Ok::<(), confab_client::ClientError>(())
/// ```
pub const DEFAULT_PORT: u16 = 7400;

/// The broker's default QUIC (UDP) port (`confab+quic://`).
///
/// ```
/// use confab_client::{Endpoint, DEFAULT_QUIC_PORT};
///
/// let e = Endpoint::parse("confab+quic://chat.example.com")?;
/// assert_eq!(e.to_string(), format!("confab+quic://chat.example.com:{DEFAULT_QUIC_PORT}"));
/// # Ok::<(), confab_client::ClientError>(())
/// ```
pub const DEFAULT_QUIC_PORT: u16 = 7401;

/// The default port of `confabs://` (TLS over TCP, which a broker serves
/// only when configured to).
///
/// ```
/// use confab_client::{Endpoint, DEFAULT_TLS_PORT};
///
/// let e = Endpoint::parse("confabs://chat.example.com")?;
/// assert_eq!(e.to_string(), format!("confabs://chat.example.com:{DEFAULT_TLS_PORT}"));
/// # Ok::<(), confab_client::ClientError>(())
/// ```
pub const DEFAULT_TLS_PORT: u16 = 7402;

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
    /// Plain TCP (`confab://`).
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// Port.
        port: u16,
    },
    /// TLS over TCP (`confabs://`). Needs [`ClientConfig::trust`].
    Tls {
        /// Host name or IP address (IPv6 without brackets); also the name
        /// the certificate is checked against.
        host: String,
        /// Port.
        port: u16,
    },
    /// QUIC (`confab+quic://`). Needs [`ClientConfig::trust`].
    Quic {
        /// Host name or IP address (IPv6 without brackets); also the name
        /// the certificate is checked against.
        host: String,
        /// UDP port.
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

    /// A TLS-over-TCP endpoint at a socket address.
    ///
    /// ```
    /// use confab_client::Endpoint;
    ///
    /// let e = Endpoint::tls("127.0.0.1:7402".parse().unwrap());
    /// assert_eq!(e.to_string(), "confabs://127.0.0.1:7402");
    /// ```
    pub fn tls(addr: SocketAddr) -> Self {
        Endpoint::Tls {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// A QUIC endpoint at a socket address.
    ///
    /// ```
    /// use confab_client::Endpoint;
    ///
    /// let e = Endpoint::quic("127.0.0.1:7401".parse().unwrap());
    /// assert_eq!(e.to_string(), "confab+quic://127.0.0.1:7401");
    /// ```
    pub fn quic(addr: SocketAddr) -> Self {
        Endpoint::Quic {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// Parses `confab://host:port` (TCP; also `tcp://` or a bare
    /// `host:port`), `confabs://host:port` (TLS; also `tls://`) or
    /// `confab+quic://host:port` (QUIC; also `quic://`). The port defaults
    /// to [`DEFAULT_PORT`], [`DEFAULT_TLS_PORT`] or [`DEFAULT_QUIC_PORT`];
    /// IPv6 addresses go in brackets (`confab://[::1]:7400`).
    ///
    /// ```
    /// use confab_client::Endpoint;
    ///
    /// let e = Endpoint::parse("confab+quic://chat.example.com").unwrap();
    /// assert_eq!(e.to_string(), "confab+quic://chat.example.com:7401");
    /// ```
    ///
    /// # Errors
    /// [`ClientError::InvalidConfig`] for an unknown scheme, a path, or a
    /// bad port.
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = |why: &str| ClientError::InvalidConfig(format!("endpoint `{url}`: {why}"));
        #[derive(Clone, Copy)]
        enum Kind {
            Tcp,
            Tls,
            Quic,
        }
        let (kind, rest) = match url.split_once("://") {
            Some(("confab" | "tcp", rest)) => (Kind::Tcp, rest),
            Some(("confabs" | "tls", rest)) => (Kind::Tls, rest),
            Some(("confab+quic" | "quic", rest)) => (Kind::Quic, rest),
            Some((scheme, _)) => return Err(bad(&format!("unknown scheme `{scheme}`"))),
            None => (Kind::Tcp, url),
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
        let port = match (port, kind) {
            (Some(p), _) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
            (None, Kind::Tcp) => DEFAULT_PORT,
            (None, Kind::Tls) => DEFAULT_TLS_PORT,
            (None, Kind::Quic) => DEFAULT_QUIC_PORT,
        };
        if port == 0 {
            return Err(bad("port 0"));
        }
        let host = host.to_owned();
        Ok(match kind {
            Kind::Tcp => Endpoint::Tcp { host, port },
            Kind::Tls => Endpoint::Tls { host, port },
            Kind::Quic => Endpoint::Quic { host, port },
        })
    }

    /// Whether this endpoint needs [`ClientConfig::trust`].
    pub(crate) fn is_secure(&self) -> bool {
        matches!(self, Endpoint::Tls { .. } | Endpoint::Quic { .. })
    }
}

/// A connected transport: the byte stream the protocol runs on and, for
/// QUIC, the connection whose other streams carry room events.
pub(crate) struct Link {
    pub(crate) stream: BoxByteStream,
    pub(crate) quic: Option<QuicLink>,
}

/// Opens links to the configured endpoints. Built once per client, so that
/// a bad CA file or server name is reported by `Client::connect`, not at
/// every attempt.
pub(crate) struct Dialer {
    /// One per [`ClientConfig::endpoints`], in the same order.
    targets: Vec<Target>,
}

/// One endpoint, with what its transport needs prepared.
struct Target {
    endpoint: Endpoint,
    /// The name certificates are checked against (TLS, QUIC).
    server_name: Option<ServerName<'static>>,
    tls: Option<tokio_rustls::TlsConnector>,
    quic: Option<quinn::ClientConfig>,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer")
            .field(
                "endpoints",
                &self.targets.iter().map(|t| &t.endpoint).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// Prepares the TLS and QUIC configurations the endpoints need.
    ///
    /// # Errors
    /// [`ClientError::InvalidConfig`] if there is no endpoint, or TLS or
    /// QUIC is asked for without a usable [`Trust`], or with a server name
    /// that is not a valid name.
    pub(crate) fn new(config: &ClientConfig) -> Result<Self, ClientError> {
        if config.endpoints.is_empty() {
            return Err(ClientError::InvalidConfig("no endpoint".into()));
        }
        let targets = config
            .endpoints
            .iter()
            .map(|e| Target::new(e, config))
            .collect::<Result<_, _>>()?;
        Ok(Self { targets })
    }

    /// How many endpoints there are (at least one).
    pub(crate) fn len(&self) -> usize {
        self.targets.len()
    }

    /// The endpoint at `index` (taken modulo [`Dialer::len`]).
    pub(crate) fn endpoint(&self, index: usize) -> &Endpoint {
        &self.targets[index % self.targets.len()].endpoint
    }

    /// Opens a link to the endpoint at `index` (taken modulo
    /// [`Dialer::len`]).
    pub(crate) async fn connect(&self, index: usize) -> std::io::Result<Link> {
        self.targets[index % self.targets.len()].connect().await
    }
}

impl Target {
    fn new(endpoint: &Endpoint, config: &ClientConfig) -> Result<Self, ClientError> {
        let mut target = Target {
            endpoint: endpoint.clone(),
            server_name: None,
            tls: None,
            quic: None,
        };
        let host = match endpoint {
            Endpoint::Tls { host, .. } | Endpoint::Quic { host, .. } => host,
            Endpoint::Tcp { .. } | Endpoint::Custom(_) => return Ok(target),
        };
        let trust = config.trust.as_ref().ok_or_else(|| no_trust(endpoint))?;
        let name = config.server_name.clone().unwrap_or_else(|| host.clone());
        target.server_name = Some(ServerName::try_from(name.clone()).map_err(|_| {
            ClientError::InvalidConfig(format!("`{name}` is not a valid TLS server name"))
        })?);
        match endpoint {
            Endpoint::Tls { .. } => {
                let tls = tls::client_config(trust, false)?;
                target.tls = Some(tokio_rustls::TlsConnector::from(Arc::new(tls)));
            }
            _ => target.quic = Some(quic::client_config(trust, config)?),
        }
        Ok(target)
    }

    async fn connect(&self) -> std::io::Result<Link> {
        let stream: BoxByteStream = match (&self.endpoint, &self.server_name) {
            (Endpoint::Tcp { host, port }, _) => Box::new(tcp(host, *port).await?),
            (Endpoint::Tls { host, port }, Some(name)) => {
                let connector = self.tls.as_ref().ok_or_else(not_prepared)?;
                let stream = tcp(host, *port).await?;
                Box::new(connector.connect(name.clone(), stream).await?)
            }
            (Endpoint::Quic { host, port }, Some(name)) => {
                let config = self.quic.clone().ok_or_else(not_prepared)?;
                let link = quic::connect(host, *port, name, config).await?;
                return Ok(link);
            }
            (Endpoint::Custom(connector), _) => connector.connect().await?,
            _ => return Err(not_prepared()),
        };
        Ok(Link { stream, quic: None })
    }
}

/// The error for TLS and QUIC without a trust anchor.
pub(crate) fn no_trust(endpoint: &Endpoint) -> ClientError {
    ClientError::InvalidConfig(format!(
        "{endpoint} needs ClientConfig::trust: a CA file (Trust::CaFile) or the broker certificate's \
         SHA-256 fingerprint (Trust::Fingerprint); certificates are never accepted unchecked"
    ))
}

fn not_prepared() -> std::io::Error {
    std::io::Error::other("transport not prepared")
}

async fn tcp(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect((host, port)).await?;
    // Frames are small and latency matters more than packing.
    stream.set_nodelay(true)?;
    Ok(stream)
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
        let (scheme, host, port) = match self {
            Endpoint::Tcp { host, port } => ("confab", host, port),
            Endpoint::Tls { host, port } => ("confabs", host, port),
            Endpoint::Quic { host, port } => ("confab+quic", host, port),
            Endpoint::Custom(c) => return write!(f, "custom({c:?})"),
        };
        if host.contains(':') {
            write!(f, "{scheme}://[{host}]:{port}")
        } else {
            write!(f, "{scheme}://{host}:{port}")
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
    fn parses_secure_urls() {
        match Endpoint::parse("confabs://example.com").unwrap() {
            Endpoint::Tls { host, port } => {
                assert_eq!((host.as_str(), port), ("example.com", 7402))
            }
            other => panic!("not tls: {other:?}"),
        }
        match Endpoint::parse("confab+quic://[::1]:9").unwrap() {
            Endpoint::Quic { host, port } => assert_eq!((host.as_str(), port), ("::1", 9)),
            other => panic!("not quic: {other:?}"),
        }
        assert!(matches!(
            Endpoint::parse("quic://h").unwrap(),
            Endpoint::Quic { port: 7401, .. }
        ));
        for url in [
            "confab://h:1",
            "confabs://h:2",
            "confab+quic://h:3",
            "confab+quic://[::1]:4",
        ] {
            assert_eq!(Endpoint::parse(url).unwrap().to_string(), url);
        }
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "confab+tcp://example.com",
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
        let config =
            ClientConfig::with_endpoint(endpoint, "t", confab_codec::DeviceId::new("d").unwrap());
        let mut stream = Dialer::new(&config)
            .unwrap()
            .connect(0)
            .await
            .unwrap()
            .stream;
        stream.write_all(b"ping").await.unwrap();
        assert_eq!(&server.await.unwrap(), b"ping");
    }
}
