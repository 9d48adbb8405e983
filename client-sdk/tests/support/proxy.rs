//! A fault-injecting TCP proxy for tests, on 127.0.0.1 between SDK clients
//! and a real broker.
//!
//! Every accepted connection is forwarded to the upstream address through
//! two pumps (client to broker, broker to client). Each pump draws its
//! faults from its own seeded random generator, derived from the proxy's
//! seed and the connection's number, so a given seed always yields the same
//! fault plan:
//!
//! - **drop**: the connection is cut in both directions, at a chunk
//!   boundary;
//! - **truncate**: only part of a chunk is forwarded (usually mid-frame),
//!   then the connection is cut in both directions;
//! - **stall**: forwarding in one direction stops for a while, then
//!   resumes with nothing lost;
//! - **delay**: a chunk is held back for a few milliseconds.
//!
//! Drops, truncations and stalls happen at byte offsets drawn from the
//! generator (the distance to the next fault is uniform in
//! `0..2 * mean_bytes`), so they do not depend on how the kernel splits
//! the stream into reads. A cut closes both sockets, with a reset (zero
//! linger) or an orderly FIN, chosen per connection. The test can also cut
//! every open connection at once ([`FaultProxy::cut_all`]) and turn the
//! random faults off ([`FaultProxy::set_faults`]).
//!
//! Bounded: it binds only 127.0.0.1; the upstream connect, every write and
//! every idle read have timeouts; stalls and delays have a maximum; and
//! dropping the proxy aborts every task it started.
//!
//! Set `CONFAB_FAULT_LOG=1` to print every injected fault on stderr.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

/// What the proxy does, and how often.
#[derive(Debug, Clone)]
pub(crate) struct FaultConfig {
    /// Probability that a connection gets no random fault at all.
    pub(crate) clean_connection: f64,
    /// Mean bytes forwarded from the client between two faults.
    pub(crate) mean_bytes_up: u64,
    /// Mean bytes forwarded from the broker between two faults.
    pub(crate) mean_bytes_down: u64,
    /// Relative weight of drops among the faults.
    pub(crate) weight_drop: u32,
    /// Relative weight of truncations.
    pub(crate) weight_truncate: u32,
    /// Relative weight of stalls.
    pub(crate) weight_stall: u32,
    /// Shortest and longest stall.
    pub(crate) stall: (Duration, Duration),
    /// Probability that a chunk is delayed.
    pub(crate) delay_chance: f64,
    /// Shortest and longest delay of a chunk.
    pub(crate) delay: (Duration, Duration),
    /// Largest chunk read at once.
    pub(crate) max_chunk: usize,
    /// Most time to connect to the upstream.
    pub(crate) connect_timeout: Duration,
    /// Most time one write may take before the connection is cut.
    pub(crate) write_timeout: Duration,
    /// A direction that carries nothing for this long cuts the connection.
    pub(crate) idle_timeout: Duration,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            clean_connection: 0.2,
            mean_bytes_up: 4 << 10,
            mean_bytes_down: 16 << 10,
            weight_drop: 3,
            weight_truncate: 3,
            weight_stall: 4,
            stall: (Duration::from_millis(50), Duration::from_millis(1200)),
            delay_chance: 0.05,
            delay: (Duration::from_millis(1), Duration::from_millis(20)),
            max_chunk: 8 << 10,
            connect_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Counts of what the proxy did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FaultStats {
    /// Connections accepted.
    pub(crate) connections: u64,
    /// Connections refused because the upstream could not be reached.
    pub(crate) upstream_failures: u64,
    /// Random drops.
    pub(crate) drops: u64,
    /// Random truncations.
    pub(crate) truncations: u64,
    /// Random stalls.
    pub(crate) stalls: u64,
    /// Delayed chunks.
    pub(crate) delays: u64,
    /// Connections open when [`FaultProxy::cut_all`] was called.
    pub(crate) forced_cuts: u64,
    /// Bytes forwarded, both directions.
    pub(crate) bytes: u64,
}

impl FaultStats {
    /// Random faults that end or disturb a connection.
    pub(crate) fn injected(&self) -> u64 {
        self.drops + self.truncations + self.stalls
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    upstream_failures: AtomicU64,
    drops: AtomicU64,
    truncations: AtomicU64,
    stalls: AtomicU64,
    delays: AtomicU64,
    forced_cuts: AtomicU64,
    bytes: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Shared {
    upstream: SocketAddr,
    seed: u64,
    config: FaultConfig,
    faults: AtomicBool,
    /// Cancelled by `cut_all`; every connection holds a child token.
    generation: Mutex<CancellationToken>,
    /// Connections currently open.
    open: AtomicU64,
    counters: Counters,
    log: bool,
}

impl Shared {
    fn faults_on(&self) -> bool {
        self.faults.load(Ordering::Relaxed)
    }

    fn generation(&self) -> std::sync::MutexGuard<'_, CancellationToken> {
        self.generation.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The proxy. Dropping it stops everything it started.
pub(crate) struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy on 127.0.0.1 (any port) forwarding to `upstream`,
    /// with random faults on.
    pub(crate) async fn start(
        upstream: SocketAddr,
        seed: u64,
        config: FaultConfig,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            seed,
            config,
            faults: AtomicBool::new(true),
            generation: Mutex::new(CancellationToken::new()),
            open: AtomicU64::new(0),
            counters: Counters::default(),
            log: std::env::var_os("CONFAB_FAULT_LOG").is_some_and(|v| v != "0"),
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self { addr, shared, task })
    }

    /// Where clients connect.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Turns random faults on or off (cuts by `cut_all` always work).
    /// Stalls and delays already under way finish on their own.
    pub(crate) fn set_faults(&self, on: bool) {
        self.shared.faults.store(on, Ordering::Relaxed);
    }

    /// Cuts every open connection, both directions, at once.
    pub(crate) fn cut_all(&self) {
        let old = std::mem::replace(&mut *self.shared.generation(), CancellationToken::new());
        self.shared
            .counters
            .forced_cuts
            .fetch_add(self.open_connections(), Ordering::Relaxed);
        old.cancel();
        if self.shared.log {
            eprintln!("proxy: cut all connections");
        }
    }

    /// Connections open right now.
    pub(crate) fn open_connections(&self) -> u64 {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// What the proxy did so far.
    pub(crate) fn stats(&self) -> FaultStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultStats {
            connections: get(&c.connections),
            upstream_failures: get(&c.upstream_failures),
            drops: get(&c.drops),
            truncations: get(&c.truncations),
            stalls: get(&c.stalls),
            delays: get(&c.delays),
            forced_cuts: get(&c.forced_cuts),
            bytes: get(&c.bytes),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every
        // connection task; cancelling the generation closes them promptly.
        self.task.abort();
        self.shared.generation().cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    let mut next: u64 = 0;
    loop {
        while conns.try_join_next().is_some() {}
        let (client, _) = match listener.accept().await {
            Ok(pair) => pair,
            Err(_) => {
                // Out of descriptors or similar: back off briefly.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        next += 1;
        bump(&shared.counters.connections);
        let token = shared.generation().child_token();
        conns.spawn(connection(client, next, token, shared.clone()));
    }
}

/// A direction of a connection.
#[derive(Debug, Clone, Copy)]
enum Dir {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Drop,
    Truncate,
    Stall(Duration),
}

/// The fault schedule of one direction.
struct Plan {
    /// Draws the faults' offsets and kinds.
    rng: StdRng,
    /// Draws the delays, which depend on how reads split the stream, so
    /// that they do not shift the fault offsets.
    delay_rng: StdRng,
    mean: u64,
    enabled: bool,
    next_at: u64,
    next: Fault,
}

impl Plan {
    fn new(seed: u64, mean: u64, enabled: bool, config: &FaultConfig) -> Self {
        let mut plan = Self {
            rng: StdRng::seed_from_u64(seed),
            delay_rng: StdRng::seed_from_u64(mix(seed, u64::MAX)),
            mean: mean.max(1),
            enabled,
            next_at: 0,
            next: Fault::Drop,
        };
        plan.schedule(0, config);
        plan
    }

    /// Draws the next fault, somewhere after byte `from`.
    fn schedule(&mut self, from: u64, c: &FaultConfig) {
        self.next_at = from + self.rng.gen_range(0..2 * self.mean);
        let total = c.weight_drop + c.weight_truncate + c.weight_stall;
        let pick = self.rng.gen_range(0..total.max(1));
        self.next = if pick < c.weight_drop {
            Fault::Drop
        } else if pick < c.weight_drop + c.weight_truncate {
            Fault::Truncate
        } else {
            Fault::Stall(self.rng.gen_range(c.stall.0..=c.stall.1))
        };
    }
}

/// How a pump ended.
enum PumpEnd {
    /// Orderly end of this direction: the write side was shut down.
    Eof,
    /// The connection must be cut.
    Cut,
}

async fn connection(client: TcpStream, n: u64, token: CancellationToken, shared: Arc<Shared>) {
    let config = &shared.config;
    // One generator per connection, from the seed and the connection's
    // number; each direction gets its own generator from it.
    let mut rng = StdRng::seed_from_u64(mix(shared.seed, n));
    let clean = rng.gen_bool(config.clean_connection);
    let reset = rng.gen_bool(0.5);
    let up_seed: u64 = rng.gen();
    let down_seed: u64 = rng.gen();

    let server = match timeout(config.connect_timeout, TcpStream::connect(shared.upstream)).await {
        Ok(Ok(s)) => s,
        _ => {
            bump(&shared.counters.upstream_failures);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    if reset {
        // A cut then closes with RST, as a crashed peer or a middlebox
        // would; otherwise with FIN.
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
    shared.open.fetch_add(1, Ordering::Relaxed);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = Plan::new(up_seed, config.mean_bytes_up, !clean, config);
    let down = Plan::new(down_seed, config.mean_bytes_down, !clean, config);
    let pumps = async {
        let up = pump(cr, sw, up, &shared, n, Dir::Up, &token);
        let down = pump(sr, cw, down, &shared, n, Dir::Down, &token);
        tokio::join!(up, down)
    };
    tokio::select! {
        _ = token.cancelled() => {}
        _ = pumps => {}
    }
    shared.open.fetch_sub(1, Ordering::Relaxed);
    // Both sockets are dropped here: closed with FIN or RST.
}

/// Forwards one direction until EOF, an error or a fault.
async fn pump(
    mut rd: OwnedReadHalf,
    mut wr: OwnedWriteHalf,
    mut plan: Plan,
    shared: &Shared,
    conn: u64,
    dir: Dir,
    token: &CancellationToken,
) {
    let end = pump_inner(&mut rd, &mut wr, &mut plan, shared, conn, dir, token).await;
    if let PumpEnd::Cut = end {
        token.cancel();
    }
}

#[allow(clippy::too_many_arguments)]
async fn pump_inner(
    rd: &mut OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    plan: &mut Plan,
    shared: &Shared,
    conn: u64,
    dir: Dir,
    token: &CancellationToken,
) -> PumpEnd {
    let c = &shared.config;
    let mut buf = vec![0u8; c.max_chunk.max(1)];
    let mut pos: u64 = 0;
    loop {
        let n = match timeout(c.idle_timeout, rd.read(&mut buf)).await {
            Ok(Ok(0)) => {
                let _ = timeout(c.write_timeout, wr.shutdown()).await;
                return PumpEnd::Eof;
            }
            Ok(Ok(n)) => n,
            Ok(Err(_)) | Err(_) => return PumpEnd::Cut,
        };
        let faults = shared.faults_on() && plan.enabled;
        if faults && plan.delay_rng.gen_bool(c.delay_chance) {
            let d = plan.delay_rng.gen_range(c.delay.0..=c.delay.1);
            bump(&shared.counters.delays);
            tokio::time::sleep(d).await;
        }
        let end = pos + n as u64;
        let chunk = &buf[..n];
        if faults && plan.next_at < end {
            let at = usize::try_from(plan.next_at.saturating_sub(pos))
                .unwrap_or(0)
                .min(n);
            let fault = plan.next;
            if shared.log {
                eprintln!(
                    "proxy: conn {conn} {dir:?} byte {}: {fault:?}",
                    pos + at as u64
                );
            }
            match fault {
                Fault::Drop => {
                    bump(&shared.counters.drops);
                    return PumpEnd::Cut;
                }
                Fault::Truncate => {
                    bump(&shared.counters.truncations);
                    // Something, but not all, of the chunk.
                    let keep = if at == 0 && n > 1 {
                        plan.delay_rng.gen_range(1..n)
                    } else {
                        at.min(n.saturating_sub(1))
                    };
                    let _ = write(wr, &chunk[..keep], shared).await;
                    return PumpEnd::Cut;
                }
                Fault::Stall(d) => {
                    bump(&shared.counters.stalls);
                    if !write(wr, &chunk[..at], shared).await {
                        return PumpEnd::Cut;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = token.cancelled() => return PumpEnd::Cut,
                    }
                    if !write(wr, &chunk[at..], shared).await {
                        return PumpEnd::Cut;
                    }
                    plan.schedule(end, c);
                }
            }
        } else if !write(wr, chunk, shared).await {
            return PumpEnd::Cut;
        }
        pos = end;
    }
}

/// Writes everything within the write timeout; false on failure.
async fn write(wr: &mut OwnedWriteHalf, data: &[u8], shared: &Shared) -> bool {
    if data.is_empty() {
        return true;
    }
    match timeout(shared.config.write_timeout, wr.write_all(data)).await {
        Ok(Ok(())) => {
            shared
                .counters
                .bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            true
        }
        _ => false,
    }
}

/// A 64-bit mix of the seed and a connection number (SplitMix64's
/// finalizer), so that neighbouring connections get unrelated generators.
fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
