//! TCP against TLS against QUIC against WebSocket, in the same run, on the same broker
//! build: durable publish throughput (closed loop, pipelined) and
//! end-to-end latency (open loop, from the intended send time) per
//! transport. Every connection of a measurement, publishers and
//! subscribers alike, uses the transport measured.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use confab_codec::{RoomId, StartAt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::confab::{finish_latency, publish, record_latencies};
use super::{now_ns, paced_publishes, Knobs};
use crate::client::{connect_via, tls_client, Dial};
use crate::report::{histogram, Latency};

/// A transport measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP.
    Tls,
    /// QUIC.
    Quic,
    /// WebSocket (`ws://`), one frame per binary message.
    Ws,
}

impl Transport {
    /// All four, in report order.
    pub const ALL: [Transport; 4] = [
        Transport::Tcp,
        Transport::Tls,
        Transport::Quic,
        Transport::Ws,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Quic => "quic",
            Transport::Ws => "ws",
        }
    }
}

/// A certificate for the broker under test, written to a temporary
/// directory, and the ports of its TLS and QUIC listeners.
pub struct Setup {
    _dir: tempfile::TempDir,
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
    cert: CertificateDer<'static>,
    tls_port: u16,
    quic_port: u16,
    ws_port: u16,
}

impl Setup {
    /// Generates a certificate for 127.0.0.1 and picks free ports.
    ///
    /// # Errors
    /// If the certificate cannot be generated or written, or no port is free.
    pub fn new() -> anyhow::Result<Setup> {
        let dir = tempfile::tempdir()?;
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(names)?.self_signed(&key)?;
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        let cert = CertificateDer::from_pem_file(&cert_path)?;
        let tls_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let quic_port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let ws_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        Ok(Setup {
            _dir: dir,
            cert_path,
            key_path,
            cert,
            tls_port,
            quic_port,
            ws_port,
        })
    }

    /// `--set` settings that turn on the TLS, QUIC and WebSocket listeners
    /// (the first two with this certificate).
    pub fn broker_settings(&self) -> Vec<String> {
        vec![
            format!("listen.tls=127.0.0.1:{}", self.tls_port),
            format!("listen.quic=127.0.0.1:{}", self.quic_port),
            format!("listen.websocket=127.0.0.1:{}", self.ws_port),
            format!("tls.cert_path={}", self.cert_path.display()),
            format!("tls.key_path={}", self.key_path.display()),
        ]
    }

    /// How to reach the broker (whose TCP listener is on `tcp`) over `t`.
    ///
    /// # Errors
    /// If the client TLS configuration cannot be built.
    pub fn dial(&self, t: Transport, tcp: SocketAddr) -> anyhow::Result<Dial> {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Ok(match t {
            Transport::Tcp => Dial::Tcp(tcp),
            Transport::Tls => Dial::Tls(
                at(self.tls_port),
                tokio_rustls::TlsConnector::from(Arc::new(tls_client(&self.cert)?)),
            ),
            Transport::Quic => {
                let crypto =
                    quinn::crypto::rustls::QuicClientConfig::try_from(tls_client(&self.cert)?)?;
                Dial::Quic(
                    at(self.quic_port),
                    quinn::ClientConfig::new(Arc::new(crypto)),
                )
            }
            Transport::Ws => Dial::Ws(at(self.ws_port)),
        })
    }

    /// Waits until the TLS, QUIC and WebSocket listeners answer (the TCP
    /// one is already up when the broker process is considered started).
    ///
    /// # Errors
    /// If no handshake succeeds within `limit`.
    pub async fn wait_ready(&self, tcp: SocketAddr, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        for t in [Transport::Tls, Transport::Quic, Transport::Ws] {
            let dial = self.dial(t, tcp)?;
            loop {
                match connect_via(&dial, "probe", "bench").await {
                    Ok(_) => break,
                    Err(e) if start.elapsed() > limit => return Err(e.context("broker not ready")),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        Ok(())
    }
}

/// Open-loop end-to-end latency over `dial`: one publisher sends to one
/// room at `rate` msgs/s on a fixed schedule, `subs` subscribers record the
/// time from each message's intended send time to its arrival. The
/// schedule is kept by an OS thread that sleeps until messages are due and
/// hands them, encoded, to the publisher's connection task.
///
/// # Errors
/// If a connection fails.
pub async fn latency(
    dial: &Dial,
    rate: f64,
    subs: usize,
    size: usize,
    k: &Knobs,
) -> anyhow::Result<(f64, Latency, Option<String>)> {
    let r = RoomId::new(format!("tlat-{}", now_ns()))?;
    let hist = Arc::new(Mutex::new(histogram()));
    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let mut readers = Vec::new();
    for s in 0..subs {
        let (mut rd, mut wr) = connect_via(dial, &format!("tlat{s}"), "bench").await?;
        wr.queue_subscribe(std::slice::from_ref(&r), StartAt::Live)?;
        wr.flush().await?;
        rd.wait_subscribed().await?;
        readers.push(record_latencies(rd, wr, &hist, &measure_from));
    }

    let (mut prd, mut pwr) = connect_via(dial, "tlat-publisher", "bench").await?;
    // Acks are read and dropped so that they never delay a send.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = prd.next().await {} });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<BytesMut>(1024);
    let interval_ns = 1e9 / rate;
    let start = now_ns();
    let warm_end = start + k.warmup.as_nanos() as u64;
    let end = warm_end + k.duration.as_nanos() as u64;
    measure_from.store(warm_end, Ordering::Relaxed);
    let pacer = {
        let r = r.clone();
        std::thread::Builder::new()
            .name("tlat-pacer".into())
            .spawn(move || {
                paced_publishes(&r, size, start, end, interval_ns, |frames| {
                    tx.blocking_send(frames.split())
                        .ok()
                        .context("publisher connection gone")
                })
            })?
    };
    while let Some(frames) = rx.recv().await {
        pwr.queue_raw(&frames)?;
        while let Ok(more) = rx.try_recv() {
            pwr.queue_raw(&more)?;
        }
        pwr.flush().await?;
    }
    let result = finish_latency(pacer, readers, &hist, warm_end - start, interval_ns, k).await;
    drain.abort();
    result
}

/// The `transports` scenario's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Publisher connections of the throughput runs.
    #[arg(long, default_value_t = 4)]
    pub conns: usize,
    /// Publishes in flight per connection.
    #[arg(long, default_value_t = 1024)]
    pub window: usize,
    /// Rooms published to.
    #[arg(long, default_value_t = 16)]
    pub rooms: usize,
    /// Offered rates of the latency runs, msgs/s.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000")]
    pub rates: Vec<f64>,
    /// Subscribers of the latency runs.
    #[arg(long, default_value_t = 1)]
    pub subs: usize,
}

impl Args {
    /// The suite's runs: the defaults, with only the lower latency rate in
    /// `--quick` mode.
    pub fn suite(quick: bool) -> Args {
        Args {
            conns: 4,
            window: 1024,
            rooms: 16,
            rates: if quick {
                vec![10_000.0]
            } else {
                vec![10_000.0, 50_000.0]
            },
            subs: 1,
        }
    }

    /// Every run, in report order: throughput on each transport, then
    /// latency at each rate on each transport.
    pub fn plan(&self) -> Vec<(Transport, Measure)> {
        let publish = Measure::Publish {
            conns: self.conns,
            window: self.window,
            rooms: self.rooms,
        };
        let subs = self.subs;
        std::iter::once(publish)
            .chain(
                self.rates
                    .iter()
                    .map(|&rate| Measure::Latency { rate, subs }),
            )
            .flat_map(|m| Transport::ALL.into_iter().map(move |t| (t, m)))
            .collect()
    }
}

/// What to measure on each transport.
#[derive(Debug, Clone, Copy)]
pub enum Measure {
    /// Durable publish throughput ([`publish`]), `wal` durability.
    Publish {
        /// Publisher connections.
        conns: usize,
        /// Publishes in flight per connection.
        window: usize,
        /// Rooms published to.
        rooms: usize,
    },
    /// Open-loop latency ([`latency`]) at a fixed offered rate.
    Latency {
        /// Offered messages per second.
        rate: f64,
        /// Subscribers.
        subs: usize,
    },
}

impl Measure {
    /// The row's parameters.
    pub fn params(&self, t: Transport, size: usize) -> String {
        match self {
            Measure::Publish {
                conns,
                window,
                rooms,
            } => format!(
                "{}, wal, {conns}x{window} inflight, {size} B, {rooms} rooms",
                t.name()
            ),
            Measure::Latency { rate, subs } => {
                format!(
                    "{}, {rate:.0}/s offered, 1 -> {subs}, {size} B, wal",
                    t.name()
                )
            }
        }
    }
}

/// Starts a broker from `opts` with its TLS and QUIC listeners on,
/// measures `m` over `t`, and returns the row.
///
/// # Errors
/// If the broker does not start or the measurement fails.
pub async fn measure(
    mut opts: crate::target::BrokerOpts,
    t: Transport,
    m: Measure,
    size: usize,
    k: &Knobs,
) -> anyhow::Result<crate::report::Row> {
    let setup = Setup::new()?;
    opts.set.extend(setup.broker_settings());
    let broker = crate::target::BrokerProc::start(&opts).await?;
    setup
        .wait_ready(broker.addr, Duration::from_secs(30))
        .await?;
    let dial = setup.dial(t, broker.addr)?;
    let params = m.params(t, size);
    let mut row = match m {
        Measure::Publish {
            conns,
            window,
            rooms,
        } => {
            let rate = publish(&dial, conns, window, size, rooms, k).await?;
            super::confab::row("transport", params, rate, "msgs/s")
        }
        Measure::Latency { rate, subs } => {
            let (achieved, lat, short) = latency(&dial, rate, subs, size, k).await?;
            let mut row = super::confab::row("transport", params, achieved, "msgs/s");
            row.offered = Some(rate);
            row.latency = Some(lat);
            row.notes = short.unwrap_or_default();
            row
        }
    };
    row.system = format!("confab {}", t.name());
    let rss = format!("rss {} MiB", broker.rss_kib().unwrap_or(0) / 1024);
    row.notes = if row.notes.is_empty() {
        rss
    } else {
        format!("{}; {rss}", row.notes)
    };
    Ok(row)
}
