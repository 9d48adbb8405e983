//! `confab-bench`: load generator for Confab and, side by side in the same
//! run, its peers (NATS, Redis).
//!
//! Every scenario starts its own broker process in a temp dir, so results
//! do not depend on earlier runs; peers run right after Confab in each
//! scenario, on their own freshly started servers. See docs/benchmarks.md.

// `pub` so the workspace's `unreachable_pub` lint accepts the `pub` items
// inside (this is a binary: nothing is exported anyway).
// client.rs has fields and methods that no scenario uses yet.
#[allow(dead_code)]
pub mod client;
mod drivers;
pub mod machine;
pub mod peers;
pub mod plot;
pub mod report;
pub mod scenarios;
pub mod target;

use std::cell::Cell;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use peers::nats::{JsSync, NatsServer, StreamLayout};
use peers::redis::{Persist, RedisServer};
use peers::Binary;
use report::{Ratio, Row};
use scenarios::{confab, Knobs};
use target::{BrokerOpts, BrokerProc};

#[derive(Parser, Debug)]
#[command(
    name = "confab-bench",
    about = "Confab load generator (with NATS and Redis side by side)"
)]
struct Cli {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Short runs: the whole suite (Confab and peers) in a minute or so.
    #[arg(long, global = true)]
    quick: bool,
    /// Seconds measured per run (after warm-up).
    #[arg(long, global = true, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of warm-up per run.
    #[arg(long, global = true, default_value_t = 1.0)]
    warmup: f64,
    /// Write the results (rows, ratios, peer versions) as JSON here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// The confab binary (default: next to this executable).
    #[arg(long, global = true)]
    confab_bin: Option<PathBuf>,
    /// Confab connections over TCP, TLS and WebSocket offer zstd
    /// compression (protocol 3.6); the rows say `zstd`.
    #[arg(long, global = true)]
    zstd: bool,
    /// Payloads of words (chat-like text) instead of one repeated byte,
    /// which compresses unrealistically well.
    #[arg(long, global = true)]
    text_payload: bool,
    /// Pin the broker (and the peer servers) to these CPUs (taskset list, e.g. `0`).
    #[arg(long, global = true)]
    broker_cpus: Option<String>,
    /// A setting for every Confab broker the run starts, as `confab serve
    /// --set` takes it (`section.key=value`, repeatable), for example
    /// `--broker-set metrics.listen=127.0.0.1:9100` to scrape its metrics, or a
    /// tuning to compare. Rows are not marked: say it beside the figures.
    #[arg(long = "broker-set", global = true)]
    broker_set: Vec<String>,
    /// Pin the load generator to these CPUs (e.g. `1`).
    #[arg(long, global = true)]
    load_cpus: Option<String>,
    /// Payload size in bytes.
    #[arg(long, global = true, default_value_t = 128)]
    payload: usize,
    /// Peers to measure after Confab in each scenario: `nats`, `redis`, or `none`.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "nats,redis"
    )]
    peers: Vec<String>,
    /// Run only these systems: names or prefixes of the result rows'
    /// systems (`confab`, `nats`, `nats-js`, `redis`, `redis-aof`, ...).
    #[arg(long, global = true, value_delimiter = ',')]
    systems: Option<Vec<String>>,
    /// The nats-server binary (default: the one `bench/peers/install.sh`
    /// puts in $HOME/.cache/confab/peers-venv, then PATH).
    #[arg(long, global = true, env = "CONFAB_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// The redis-server binary (default: PATH, then /usr/bin).
    #[arg(long, global = true, env = "CONFAB_REDIS_SERVER")]
    redis_server: Option<PathBuf>,
    /// Offered rates of the peers' latency runs: `same` as Confab's (equal
    /// load), or `own` (the same fractions of each peer's own maximum).
    #[arg(long, global = true, value_enum, default_value_t = PeerRate::Same)]
    peer_rate: PeerRate,
    /// Pub/sub peers have no publish acks: their publisher is paced to stay
    /// at most this many messages ahead of the average subscriber (default:
    /// 262144 / subscribers, within 2048..=32768).
    #[arg(long, global = true)]
    peer_lag: Option<usize>,
    /// Write the latency plots (HDR percentile curves, slow-consumer series)
    /// as SVG into this directory.
    #[arg(long, global = true, default_value = "bench-results/plots")]
    plots: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PeerRate {
    /// The same msgs/s as Confab's run at that fraction.
    Same,
    /// The fraction of the peer's own measured maximum.
    Own,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// Publish-to-ack throughput (closed loop, pipelined) per durability mode.
    Durable {
        /// Publisher connections.
        #[arg(long, default_value_t = 4)]
        conns: usize,
        /// Publishes in flight per connection.
        #[arg(long, default_value_t = 1024)]
        window: usize,
        /// Rooms published to.
        #[arg(long, default_value_t = 16)]
        rooms: usize,
        /// Messages for the catch-up replay measurement (0 to skip).
        #[arg(long, default_value_t = 1_000_000)]
        replay: u64,
    },
    /// 1 -> 1 pub/sub: the maximum sustainable rate per payload size.
    Pubsub {
        /// Payload sizes, bytes.
        #[arg(long, value_delimiter = ',', default_value = "64,512")]
        sizes: Vec<usize>,
        /// Publishes in flight.
        #[arg(long, default_value_t = 256)]
        window: usize,
    },
    /// One publisher, N subscriber connections in one room.
    Fanout {
        /// Subscriber counts to run.
        #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000,10000")]
        subs: Vec<usize>,
        /// Publishes in flight.
        #[arg(long, default_value_t = 256)]
        window: usize,
    },
    /// Open-loop latency at fractions of the maximum 1-to-1 rate.
    Latency {
        /// Fractions of the measured maximum.
        #[arg(long, value_delimiter = ',', default_value = "0.1,0.5,0.8,0.95")]
        fractions: Vec<f64>,
        /// Subscribers.
        #[arg(long, default_value_t = 1)]
        subs: usize,
        /// Confab's maximum 1 -> subs rate (msgs/s) that the fractions are
        /// of, instead of measuring it first: runs of two builds or two
        /// settings then offer exactly the same rates.
        #[arg(long)]
        max: Option<f64>,
    },
    /// The chat shape: many rooms of a few members, each device in many
    /// rooms, many publishers; open loop at fixed total rates.
    Rooms(drivers::RoomsArgs),
    /// Idle connections (a personal room and a group of 10 each): server
    /// memory per connection and the connect rate.
    Connections(drivers::ConnArgs),
    /// One subscriber of a big room stops reading: the others' latency and
    /// the broker's memory over time.
    Slow(drivers::SlowArgs),
    /// Redraw the plots (into --plots) and the table from --json results
    /// files of earlier runs, without running anything.
    Replot {
        /// Results files written with --json.
        files: Vec<PathBuf>,
    },
    /// Compare two results files (--json) of the same scenarios, for
    /// example the quick suite on two commits: each row of `after` beside
    /// the row of `before` with the same scenario, system and parameters,
    /// and their ratio. Runs nothing.
    Compare {
        /// The results before the change.
        before: PathBuf,
        /// The results after it.
        after: PathBuf,
    },
    /// Every scenario: the ones above, then `transports`.
    Suite,
    /// TCP against TLS against QUIC against WebSocket: durable publish throughput, then
    /// open-loop latency at each rate, on each transport.
    Transports(scenarios::transports::Args),
    /// A device in many rooms comes back after some changed: one inbox
    /// sync against subscribing to every room again (time and bytes).
    Inbox(scenarios::inbox::Args),
    /// N devices come back after M messages per room: time to caught up
    /// and bytes per message, Confab against JetStream durable consumers.
    Resume(scenarios::resume::Args),
}

/// A peer configuration measured in some scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerKind {
    /// NATS core pub/sub.
    Nats,
    /// NATS JetStream, file storage.
    NatsJs(JsSync),
    /// Redis pub/sub or Streams.
    Redis(Persist),
}

impl PeerKind {
    fn system(self) -> &'static str {
        match self {
            PeerKind::Nats => "nats",
            PeerKind::NatsJs(JsSync::Default) => "nats-js",
            PeerKind::NatsJs(JsSync::Always) => "nats-js-fsync",
            PeerKind::Redis(p) => p.system(),
        }
    }
}

/// One bar over all the planned runs; result lines print above it.
struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(total: u64) -> Progress {
        let bar = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{bar:32.cyan/blue}] {pos}/{len} runs  {msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar }
    }

    fn say(&self, line: impl AsRef<str>) {
        if self.bar.is_hidden() {
            println!("{}", line.as_ref());
        } else {
            self.bar.println(line.as_ref());
        }
    }
}

/// Rows, and which peer row compares with which Confab row.
#[derive(Default)]
struct Out {
    rows: Vec<Row>,
    pairs: Vec<(usize, usize)>,
}

impl Out {
    fn push(&mut self, row: Row) -> usize {
        self.rows.push(row);
        self.rows.len() - 1
    }

    /// Records that the peer row `peer` compares with the Confab row `confab`.
    fn pair(&mut self, confab: Option<usize>, peer: Option<usize>) {
        if let (Some(c), Some(p)) = (confab, peer) {
            self.pairs.push((c, p));
        }
    }
}

struct Ctx {
    common: Common,
    knobs: Knobs,
    machine: machine::Machine,
    nats: Option<Binary>,
    redis: Option<Binary>,
    progress: Progress,
    failures: Cell<usize>,
}

impl Ctx {
    fn opts(&self, durability: &str) -> BrokerOpts {
        BrokerOpts {
            bin: self
                .common
                .confab_bin
                .clone()
                .unwrap_or_else(target::default_bin),
            durability: durability.into(),
            cpus: self.common.broker_cpus.clone(),
            set: self.common.broker_set.clone(),
        }
    }

    fn cpus(&self) -> Option<&str> {
        self.common.broker_cpus.as_deref()
    }

    fn size(&self) -> usize {
        self.common.payload
    }

    /// What Confab rows append to their parameters when compression is on.
    fn zstd_tag(&self) -> &'static str {
        if self.common.zstd {
            ", zstd"
        } else {
            ""
        }
    }

    /// Whether `system` passes the `--systems` filter.
    fn wants(&self, system: &str) -> bool {
        match &self.common.systems {
            None => true,
            Some(list) => list.iter().any(|f| {
                system == f
                    || system
                        .strip_prefix(f.as_str())
                        .is_some_and(|r| r.starts_with('-'))
            }),
        }
    }

    fn confab(&self) -> bool {
        self.wants("confab")
    }

    fn available(&self, kinds: &[PeerKind]) -> Vec<PeerKind> {
        kinds
            .iter()
            .copied()
            .filter(|k| match k {
                PeerKind::Nats | PeerKind::NatsJs(JsSync::Default) => self.nats.is_some(),
                PeerKind::NatsJs(JsSync::Always) => self
                    .nats
                    .as_ref()
                    .is_some_and(peers::nats::supports_sync_always),
                PeerKind::Redis(_) => self.redis.is_some(),
            })
            .filter(|k| self.wants(k.system()))
            .collect()
    }

    /// Durable-publish peers compared with Confab's `mode`.
    fn durable_peers(&self, mode: &str) -> Vec<PeerKind> {
        self.available(match mode {
            "none" => &[PeerKind::Redis(Persist::None)],
            "wal" => &[
                PeerKind::NatsJs(JsSync::Default),
                PeerKind::Redis(Persist::AofEverySec),
            ],
            _ => &[
                PeerKind::NatsJs(JsSync::Always),
                PeerKind::Redis(Persist::AofAlways),
            ],
        })
    }

    fn replay_peers(&self) -> Vec<PeerKind> {
        self.available(&[
            PeerKind::NatsJs(JsSync::Default),
            PeerKind::Redis(Persist::None),
        ])
    }

    fn pubsub_peers(&self) -> Vec<PeerKind> {
        self.available(&[PeerKind::Nats, PeerKind::Redis(Persist::None)])
    }

    fn nats_bin(&self) -> anyhow::Result<&Binary> {
        self.nats.as_ref().context("nats-server not available")
    }

    fn redis_bin(&self) -> anyhow::Result<&Binary> {
        self.redis.as_ref().context("redis-server not available")
    }

    /// Time limit of one run.
    fn budget(&self, extra: Duration) -> Duration {
        self.knobs.warmup + self.knobs.duration + Duration::from_secs(60) + extra
    }

    /// Runs one measurement under a time limit, with progress; a failure is
    /// reported and recorded as a zero-rate row. Returns the row's index
    /// when it succeeded.
    async fn run_one(
        &self,
        out: &mut Out,
        scenario: &str,
        system: &str,
        params: String,
        budget: Duration,
        fut: impl Future<Output = anyhow::Result<Row>>,
    ) -> Option<usize> {
        self.progress
            .bar
            .set_message(format!("{scenario} {system}: {params}"));
        let result = match tokio::time::timeout(budget, fut).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("timed out after {budget:?}")),
        };
        self.progress.bar.inc(1);
        match result {
            Ok(row) => {
                let line = match &row.latency {
                    Some(l) => format!(
                        "{scenario:<8} {system:<18} {params}: {:.0} {} (p50 {:.0} us, p99 {:.0} us) {}",
                        row.rate, row.unit, l.p50_us, l.p99_us, row.notes
                    ),
                    None => format!("{scenario:<8} {system:<18} {params}: {:.0} {} {}", row.rate, row.unit, row.notes),
                };
                self.progress.say(line);
                Some(out.push(row))
            }
            Err(e) => {
                self.failures.set(self.failures.get() + 1);
                self.progress.say(format!(
                    "{scenario:<8} {system:<18} {params}: FAILED: {e:#}"
                ));
                let mut row = peers::row(scenario, system, params, 0.0, "");
                row.notes = format!("FAILED: {e:#}");
                out.push(row);
                None
            }
        }
    }

    /// Counts runs that will not happen (so the bar still ends full).
    fn skip(&self, n: usize) {
        self.progress.bar.inc(n as u64);
    }
}

fn plan_durable(ctx: &Ctx, replay: u64) -> usize {
    let c = usize::from(ctx.confab());
    let modes: usize = ["none", "wal", "fsync"]
        .iter()
        .map(|m| c + ctx.durable_peers(m).len())
        .sum();
    modes
        + if replay > 0 {
            c + ctx.replay_peers().len()
        } else {
            0
        }
}

fn plan_fanout(ctx: &Ctx, subs: &[usize]) -> usize {
    subs.len() * (usize::from(ctx.confab()) + ctx.pubsub_peers().len())
}

fn plan_latency(ctx: &Ctx, fractions: &[f64], max_given: bool) -> usize {
    let confab = usize::from(ctx.confab());
    (1 + fractions.len()) * (confab + ctx.pubsub_peers().len()) - usize::from(max_given) * confab
}

async fn durable(ctx: &Ctx, out: &mut Out, conns: usize, window: usize, rooms: usize, replay: u64) {
    let size = ctx.size();
    for mode in ["none", "wal", "fsync"] {
        let mut confab_row = None;
        if ctx.confab() {
            let params = format!("{mode}, {conns}x{window} inflight, {size} B, {rooms} rooms");
            confab_row = ctx
                .run_one(
                    out,
                    "durable",
                    "confab",
                    params.clone(),
                    ctx.budget(Duration::ZERO),
                    async {
                        let broker = BrokerProc::start(&ctx.opts(mode)).await?;
                        let rate = confab::publish(
                            &broker.addr.into(),
                            conns,
                            window,
                            size,
                            rooms,
                            &ctx.knobs,
                        )
                        .await?;
                        let mut row = confab::row("durable", params.clone(), rate, "msgs/s");
                        row.notes = format!("rss {} MiB", broker.rss_kib().unwrap_or(0) / 1024);
                        Ok(row)
                    },
                )
                .await;
        }
        for kind in ctx.durable_peers(mode) {
            let idx = match kind {
                PeerKind::NatsJs(sync) => {
                    // Both layouts: one shared stream, and one stream per
                    // room as Confab keeps one log per room, so that the
                    // comparison is not a matter of layout.
                    for layout in [StreamLayout::Shared, StreamLayout::PerRoom] {
                        let params = format!(
                            "file, {conns}x{window} inflight, {size} B, {}",
                            layout.describe(rooms)
                        );
                        let system = kind.system();
                        let idx = ctx
                            .run_one(
                                out,
                                "durable",
                                system,
                                params.clone(),
                                ctx.budget(Duration::ZERO),
                                async {
                                    let server =
                                        NatsServer::start(ctx.nats_bin()?, ctx.cpus(), Some(sync))
                                            .await?;
                                    let (rate, notes) = peers::nats::publish(
                                        &server, conns, window, size, rooms, layout, &ctx.knobs,
                                    )
                                    .await?;
                                    let mut row = peers::row(
                                        "durable",
                                        system,
                                        params.clone(),
                                        rate,
                                        "msgs/s",
                                    );
                                    let sync_note = match sync {
                                        JsSync::Default => {
                                            "acks before fsync (sync_interval 2m): vs wal"
                                        }
                                        JsSync::Always => {
                                            "sync_interval: always (fsync per write): vs fsync"
                                        }
                                    };
                                    row.notes = join_notes(
                                        format!("{sync_note}; rss {} MiB", server.rss_mib()),
                                        notes,
                                    );
                                    Ok(row)
                                },
                            )
                            .await;
                        out.pair(confab_row, idx);
                    }
                    None
                }
                PeerKind::Redis(persist) => {
                    let params =
                        format!("XADD, {conns}x{window} inflight, {size} B, {rooms} streams");
                    let system = kind.system();
                    ctx.run_one(
                        out,
                        "durable",
                        system,
                        params.clone(),
                        ctx.budget(Duration::ZERO),
                        async {
                            let server =
                                RedisServer::start(ctx.redis_bin()?, ctx.cpus(), persist).await?;
                            let (rate, notes) = peers::redis::publish(
                                &server, conns, window, size, rooms, &ctx.knobs,
                            )
                            .await?;
                            let mut row =
                                peers::row("durable", system, params.clone(), rate, "msgs/s");
                            let what = match persist {
                                Persist::None => "in memory, no persistence: vs none",
                                Persist::AofEverySec => "AOF appendfsync everysec: vs wal",
                                Persist::AofAlways => "AOF appendfsync always: vs fsync",
                            };
                            row.notes =
                                join_notes(format!("{what}; rss {} MiB", server.rss_mib()), notes);
                            Ok(row)
                        },
                    )
                    .await
                }
                PeerKind::Nats => None,
            };
            out.pair(confab_row, idx);
        }
    }
    if replay > 0 {
        let count = if ctx.common.quick {
            replay.min(100_000)
        } else {
            replay
        };
        let budget = ctx.budget(Duration::from_secs(if ctx.common.quick { 60 } else { 540 }));
        let mut confab_row = None;
        if ctx.confab() {
            let params = format!("subscribe from 1, {count} msgs{}", ctx.zstd_tag());
            confab_row = ctx
                .run_one(out, "replay", "confab", params.clone(), budget, async {
                    let broker = BrokerProc::start(&ctx.opts("none")).await?;
                    let o = confab::replay(broker.addr, count, size, &|| broker.cpu_secs()).await?;
                    let mut row = confab::row("replay", params.clone(), o.rate, "msgs/s");
                    row.metrics
                        .insert("wire_bytes_per_message".into(), o.wire_bytes_per_msg);
                    row.notes = format!("wire {:.0} B/msg", o.wire_bytes_per_msg);
                    if let Some(us) = o.server_us {
                        row.metrics.insert("server_cpu_us_per_message".into(), us);
                        row.notes = format!("{}; server cpu {us:.2} us/msg", row.notes);
                    }
                    Ok(row)
                })
                .await;
        }
        for kind in ctx.replay_peers() {
            let system = kind.system();
            let idx = match kind {
                PeerKind::NatsJs(_) => {
                    let params = format!("ordered consumer from start, {count} msgs");
                    ctx.run_one(out, "replay", system, params.clone(), budget, async {
                        let server =
                            NatsServer::start(ctx.nats_bin()?, ctx.cpus(), Some(JsSync::Default))
                                .await?;
                        let rate = peers::nats::replay(&server, count, size).await?;
                        Ok(peers::row("replay", system, params.clone(), rate, "msgs/s"))
                    })
                    .await
                }
                PeerKind::Redis(persist) => {
                    let params = format!("XRANGE from start, {count} msgs");
                    ctx.run_one(out, "replay", system, params.clone(), budget, async {
                        let server =
                            RedisServer::start(ctx.redis_bin()?, ctx.cpus(), persist).await?;
                        let rate = peers::redis::replay(&server, count, size).await?;
                        Ok(peers::row("replay", system, params.clone(), rate, "msgs/s"))
                    })
                    .await
                }
                PeerKind::Nats => None,
            };
            out.pair(confab_row, idx);
        }
    }
}

fn join_notes(base: String, extra: Option<String>) -> String {
    match extra {
        Some(e) => format!("{base}; {e}"),
        None => base,
    }
}

/// Peer pub/sub fan-out as a row (also the "max" of the latency scenario).
async fn peer_fanout(
    ctx: &Ctx,
    kind: PeerKind,
    scenario: &str,
    params: String,
    subs: usize,
    window: usize,
    size: usize,
) -> anyhow::Result<Row> {
    let lag = ctx
        .common
        .peer_lag
        .unwrap_or((262_144 / subs.max(1)).clamp(2048, 32_768));
    let system = kind.system();
    let (rate, pub_rate, notes, rss) = match kind {
        PeerKind::Nats => {
            let server = NatsServer::start(ctx.nats_bin()?, ctx.cpus(), None).await?;
            let (r, p, n) = peers::nats::fanout(&server, subs, lag, size, &ctx.knobs).await?;
            (r, p, n, server.rss_mib())
        }
        PeerKind::Redis(persist) => {
            let server = RedisServer::start(ctx.redis_bin()?, ctx.cpus(), persist).await?;
            let (r, p, n) =
                peers::redis::fanout(&server, subs, window, lag, size, &ctx.knobs).await?;
            (r, p, n, server.rss_mib())
        }
        PeerKind::NatsJs(_) => anyhow::bail!("no pub/sub fan-out for {system}"),
    };
    let mut row = peers::row(scenario, system, params, rate, "deliveries/s");
    row.notes = join_notes(
        format!("publish {pub_rate:.0}/s, no persistence, paced <= {lag} ahead; rss {rss} MiB"),
        notes,
    );
    Ok(row)
}

fn pubsub_params(kind: PeerKind, subs: usize, size: usize) -> String {
    match kind {
        PeerKind::Redis(_) => format!("1 -> {subs}, {size} B, PUBLISH"),
        _ => format!("1 -> {subs}, {size} B, core"),
    }
}

async fn fanout(ctx: &Ctx, out: &mut Out, subs: &[usize], window: usize) {
    let size = ctx.size();
    for &n in subs {
        let mut confab_row = None;
        let budget = ctx.budget(Duration::from_secs(n as u64 / 20));
        if ctx.confab() {
            let params = format!("1 -> {n}, {size} B, wal");
            confab_row = ctx
                .run_one(out, "fanout", "confab", params.clone(), budget, async {
                    let broker = BrokerProc::start(&ctx.opts("wal")).await?;
                    let (rate, pub_rate) =
                        confab::fanout(broker.addr, n, window, size, &ctx.knobs).await?;
                    let mut row = confab::row("fanout", params.clone(), rate, "deliveries/s");
                    row.notes = format!(
                        "publish {pub_rate:.0}/s, rss {} MiB",
                        broker.rss_kib().unwrap_or(0) / 1024
                    );
                    Ok(row)
                })
                .await;
        }
        for kind in ctx.pubsub_peers() {
            let params = pubsub_params(kind, n, size);
            let idx = ctx
                .run_one(
                    out,
                    "fanout",
                    kind.system(),
                    params.clone(),
                    budget,
                    peer_fanout(ctx, kind, "fanout", params.clone(), n, window, size),
                )
                .await;
            out.pair(confab_row, idx);
        }
    }
}

async fn peer_latency(
    ctx: &Ctx,
    kind: PeerKind,
    params: String,
    rate: f64,
    subs: usize,
) -> anyhow::Result<Row> {
    let size = ctx.size();
    let (achieved, lat, notes) = match kind {
        PeerKind::Nats => {
            let server = NatsServer::start(ctx.nats_bin()?, ctx.cpus(), None).await?;
            peers::nats::latency(&server, rate, subs, size, &ctx.knobs).await?
        }
        PeerKind::Redis(persist) => {
            let server = RedisServer::start(ctx.redis_bin()?, ctx.cpus(), persist).await?;
            peers::redis::latency(&server, rate, subs, size, &ctx.knobs).await?
        }
        PeerKind::NatsJs(_) => anyhow::bail!("no pub/sub latency for {}", kind.system()),
    };
    let mut row = peers::row("latency", kind.system(), params, achieved, "msgs/s");
    row.offered = Some(rate);
    row.latency = Some(lat);
    row.notes = join_notes("no persistence".into(), notes);
    Ok(row)
}

async fn latency(ctx: &Ctx, out: &mut Out, fractions: &[f64], subs: usize, max: Option<f64>) {
    let size = ctx.size();
    let budget = ctx.budget(Duration::ZERO);
    // Maximum 1 -> subs rate of each system (closed loop), unless given.
    let mut confab_max = max.filter(|_| ctx.confab());
    let mut confab_max_row = None;
    if ctx.confab() && confab_max.is_none() {
        let params = format!("1 -> {subs}, {size} B, wal, max");
        confab_max_row = ctx
            .run_one(out, "pubsub", "confab", params.clone(), budget, async {
                let broker = BrokerProc::start(&ctx.opts("wal")).await?;
                let (max, _) = confab::fanout(broker.addr, subs, 256, size, &ctx.knobs).await?;
                let mut row = confab::row("pubsub", params.clone(), max, "deliveries/s");
                row.notes = "closed loop, 256 in flight".into();
                Ok(row)
            })
            .await;
        confab_max = confab_max_row.map(|i| out.rows[i].rate / subs as f64);
    }
    let peers = ctx.pubsub_peers();
    let mut peer_max = Vec::new();
    for &kind in &peers {
        let params = format!("{}, max", pubsub_params(kind, subs, size));
        let idx = ctx
            .run_one(
                out,
                "pubsub",
                kind.system(),
                params.clone(),
                budget,
                peer_fanout(ctx, kind, "pubsub", params.clone(), subs, 256, size),
            )
            .await;
        out.pair(confab_max_row, idx);
        peer_max.push(idx.map(|i| out.rows[i].rate / subs as f64));
    }
    for &f in fractions {
        // "50", "0.5": whole percents unless the fraction is finer.
        let pct = format!("{}", (f * 1000.0).round() / 10.0);
        let plot_file = format!("latency-{pct}pct");
        let plot_title =
            format!("latency: open loop at {pct}% of the maximum, 1 -> {subs}, {size} B");
        let mut confab_row = None;
        let mut confab_rate = None;
        if let Some(max) = confab_max {
            let rate = (max * f).max(100.0);
            confab_rate = Some(rate);
            let params = format!("{pct}% of max, 1 -> {subs}, {size} B, wal");
            confab_row = ctx
                .run_one(out, "latency", "confab", params.clone(), budget, async {
                    let broker = BrokerProc::start(&ctx.opts("wal")).await?;
                    let (achieved, lat, short) =
                        confab::latency(broker.addr, rate, subs, size, &ctx.knobs).await?;
                    let mut row = confab::row("latency", params.clone(), achieved, "msgs/s");
                    row.offered = Some(rate);
                    row.latency = Some(lat);
                    row.notes = short.unwrap_or_default();
                    row.plot_in(plot_file.clone(), plot_title.clone());
                    Ok(row)
                })
                .await;
        } else if ctx.confab() {
            ctx.skip(1);
        }
        for (&kind, own_max) in peers.iter().zip(&peer_max) {
            let (rate, params) = match (ctx.common.peer_rate, confab_rate, own_max) {
                (PeerRate::Same, Some(r), _) => {
                    (r, format!("confab's {pct}% rate, 1 -> {subs}, {size} B"))
                }
                (_, _, Some(m)) => (
                    (m * f).max(100.0),
                    format!("{pct}% of own max, 1 -> {subs}, {size} B"),
                ),
                _ => {
                    ctx.skip(1);
                    continue;
                }
            };
            let idx = ctx
                .run_one(
                    out,
                    "latency",
                    kind.system(),
                    params.clone(),
                    budget,
                    peer_latency(ctx, kind, params.clone(), rate, subs),
                )
                .await;
            if let Some(i) = idx {
                out.rows[i].plot_in(plot_file.clone(), plot_title.clone());
            }
            out.pair(confab_row, idx);
        }
    }
}

/// Where to look for the peer servers, and which were found.
fn find_peers(common: &Common) -> anyhow::Result<(Option<Binary>, Option<Binary>)> {
    let mut want_nats = false;
    let mut want_redis = false;
    for p in &common.peers {
        match p.trim() {
            "nats" => want_nats = true,
            "redis" => want_redis = true,
            "none" | "" => {}
            other => anyhow::bail!("unknown peer `{other}` in --peers (known: nats, redis, none)"),
        }
    }
    let nats = if want_nats {
        let mut cands = vec![peers::peers_venv().join("bin/nats-server")];
        cands.extend(peers::which("nats-server"));
        cands.push("/usr/bin/nats-server".into());
        cands.push("/usr/sbin/nats-server".into());
        peers::find(
            "nats-server",
            "--nats-server",
            common.nats_server.as_deref(),
            &cands,
        )
    } else {
        None
    };
    let redis = if want_redis {
        let mut cands: Vec<PathBuf> = peers::which("redis-server").into_iter().collect();
        cands.push("/usr/bin/redis-server".into());
        cands.push("/usr/sbin/redis-server".into());
        peers::find(
            "redis-server",
            "--redis-server",
            common.redis_server.as_deref(),
            &cands,
        )
    } else {
        None
    };
    Ok((nats, redis))
}

/// Everything a run produced, as written to `--json`.
#[derive(Serialize)]
struct Results<'a> {
    quick: bool,
    machine: &'a machine::Machine,
    peers: Vec<PeerInfo>,
    rows: &'a [Row],
    ratios: &'a [Ratio],
}

#[derive(Serialize)]
struct PeerInfo {
    name: &'static str,
    path: String,
    version: String,
}

async fn run(cli: Cli) -> anyhow::Result<(Out, Ctx)> {
    let quick = cli.common.quick;
    client::set_compression(cli.common.zstd);
    scenarios::set_text_payloads(cli.common.text_payload);
    let knobs = if quick {
        Knobs {
            duration: Duration::from_secs_f64(cli.common.duration.min(1.0)),
            warmup: Duration::from_secs_f64(cli.common.warmup.min(0.2)),
        }
    } else {
        Knobs {
            duration: Duration::from_secs_f64(cli.common.duration),
            warmup: Duration::from_secs_f64(cli.common.warmup),
        }
    };
    let machine =
        machine::Machine::read(cli.common.broker_cpus.clone(), cli.common.load_cpus.clone());
    println!("{machine}");
    let (nats, redis) = find_peers(&cli.common)?;
    for (name, bin) in [("nats-server", &nats), ("redis-server", &redis)] {
        if let Some(b) = bin {
            println!("peer {name}: {} ({})", b.path.display(), b.version);
        }
    }
    let mut ctx = Ctx {
        common: cli.common,
        knobs,
        machine,
        nats,
        redis,
        progress: Progress::new(0),
        failures: Cell::new(0),
    };
    let suite_replay = if quick { 100_000 } else { 1_000_000 };
    let suite_subs: &[usize] = if quick {
        &[1, 100]
    } else {
        &[1, 10, 100, 1000, 10000]
    };
    let suite_sizes: &[usize] = &[64, 512];
    let (suite_rooms, suite_conns, suite_slow) = (
        drivers::RoomsArgs::suite(quick),
        drivers::ConnArgs::suite(quick),
        drivers::SlowArgs::suite(quick),
    );
    let suite_transports = scenarios::transports::Args::suite(quick);
    let suite_inbox = scenarios::inbox::Args::suite(quick);
    let suite_resume = scenarios::resume::Args::suite(quick);
    let suite_fractions: &[f64] = if quick {
        &[0.5]
    } else {
        &[0.1, 0.5, 0.8, 0.95]
    };
    let total = match &cli.scenario {
        Scenario::Durable { replay, .. } => plan_durable(&ctx, *replay),
        Scenario::Fanout { subs, .. } => plan_fanout(&ctx, subs),
        Scenario::Latency { fractions, max, .. } => plan_latency(&ctx, fractions, max.is_some()),
        Scenario::Pubsub { sizes, .. } => drivers::plan_pubsub(&ctx, sizes),
        Scenario::Rooms(a) => drivers::plan_rooms(&ctx, a),
        Scenario::Connections(a) => drivers::plan_connections(&ctx, a),
        Scenario::Slow(a) => drivers::plan_slow(&ctx, a),
        Scenario::Replot { .. } | Scenario::Compare { .. } => 0,
        Scenario::Suite => {
            plan_durable(&ctx, suite_replay)
                + drivers::plan_pubsub(&ctx, suite_sizes)
                + plan_fanout(&ctx, suite_subs)
                + plan_latency(&ctx, suite_fractions, false)
                + drivers::plan_rooms(&ctx, &suite_rooms)
                + drivers::plan_connections(&ctx, &suite_conns)
                + drivers::plan_slow(&ctx, &suite_slow)
                + suite_transports.plan().len()
                + suite_inbox.plan(&ctx)
                + suite_resume.plan(&ctx)
        }
        Scenario::Transports(a) => a.plan().len(),
        Scenario::Inbox(a) => a.plan(&ctx),
        Scenario::Resume(a) => a.plan(&ctx),
    };
    if total == 0 && !matches!(cli.scenario, Scenario::Replot { .. }) {
        println!("nothing to run: check --peers and --systems");
    }
    ctx.progress = Progress::new(total as u64);
    let mut out = Out::default();
    match cli.scenario {
        Scenario::Durable {
            conns,
            window,
            rooms,
            replay,
        } => durable(&ctx, &mut out, conns, window, rooms, replay).await,
        Scenario::Fanout { subs, window } => fanout(&ctx, &mut out, &subs, window).await,
        Scenario::Latency {
            fractions,
            subs,
            max,
        } => latency(&ctx, &mut out, &fractions, subs, max).await,
        Scenario::Pubsub { sizes, window } => drivers::pubsub(&ctx, &mut out, &sizes, window).await,
        Scenario::Rooms(a) => drivers::rooms(&ctx, &mut out, &a).await,
        Scenario::Connections(a) => drivers::connections(&ctx, &mut out, &a).await,
        Scenario::Slow(a) => drivers::slow(&ctx, &mut out, &a).await,
        Scenario::Replot { files } => {
            for f in files {
                out.rows.extend(drivers::load_rows(&f)?);
            }
        }
        Scenario::Compare { .. } => {}
        Scenario::Suite => {
            durable(&ctx, &mut out, 4, 1024, 16, suite_replay).await;
            drivers::pubsub(&ctx, &mut out, suite_sizes, 256).await;
            fanout(&ctx, &mut out, suite_subs, 256).await;
            latency(&ctx, &mut out, suite_fractions, 1, None).await;
            drivers::rooms(&ctx, &mut out, &suite_rooms).await;
            drivers::connections(&ctx, &mut out, &suite_conns).await;
            drivers::slow(&ctx, &mut out, &suite_slow).await;
            transports(&ctx, &mut out, &suite_transports).await;
            scenarios::inbox::run(&ctx, &mut out, &suite_inbox).await;
            scenarios::resume::run(&ctx, &mut out, &suite_resume).await;
        }
        Scenario::Transports(a) => transports(&ctx, &mut out, &a).await,
        Scenario::Inbox(a) => scenarios::inbox::run(&ctx, &mut out, &a).await,
        Scenario::Resume(a) => scenarios::resume::run(&ctx, &mut out, &a).await,
    }
    ctx.progress.bar.finish_and_clear();
    Ok((out, ctx))
}

/// TCP against TLS against QUIC against WebSocket: every run of `a`'s plan, one broker each.
async fn transports(ctx: &Ctx, out: &mut Out, a: &scenarios::transports::Args) {
    use scenarios::transports::measure;
    let size = ctx.size();
    for (t, m) in a.plan() {
        let run = measure(ctx.opts("wal"), t, m, size, &ctx.knobs);
        let (system, params) = (format!("confab {}", t.name()), m.params(t, size));
        let budget = ctx.budget(Duration::ZERO);
        ctx.run_one(out, "transport", &system, params, budget, run)
            .await;
    }
}

/// Resolves on SIGINT, SIGTERM or SIGHUP (a closed terminal), so that the
/// run is dropped and the servers it started are killed, not orphaned.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    let mut hup = signal(SignalKind::hangup()).ok();
    async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = recv(&mut term) => "SIGTERM",
        _ = recv(&mut hup) => "SIGHUP",
    }
}

fn raise_fd_limit() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Scenario::Compare { before, after } = &cli.scenario {
        let (before, after) = (drivers::load_rows(before)?, drivers::load_rows(after)?);
        report::print_comparison(&report::compare(&before, &after));
        return Ok(());
    }
    raise_fd_limit();
    if let Some(cpus) = &cli.common.load_cpus {
        let status = std::process::Command::new("taskset")
            .args(["-cp", cpus, &std::process::id().to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running taskset")?;
        anyhow::ensure!(status.success(), "taskset failed");
    }
    let json = cli.common.json.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // On Ctrl-C, dropping the run kills the servers it started.
    let (out, ctx) = runtime.block_on(async {
        tokio::select! {
            r = run(cli) => r,
            sig = stop_signal() => Err(anyhow::anyhow!("interrupted by {sig}")),
        }
    })?;
    let ratios = report::ratios(&out.rows, &out.pairs);
    println!();
    report::print_table(&out.rows);
    if !ratios.is_empty() {
        println!();
        report::print_ratios(&ratios);
    }
    match plot::write_all(&ctx.common.plots, &out.rows) {
        Ok(files) if !files.is_empty() => {
            println!("\nplots written to {}:", ctx.common.plots.display());
            for f in files {
                println!("  {}", f.display());
            }
        }
        Ok(_) => {}
        Err(e) => eprintln!("\nwriting the plots failed: {e:#}"),
    }
    if let Some(path) = json {
        let peers = [("nats-server", &ctx.nats), ("redis-server", &ctx.redis)]
            .into_iter()
            .filter_map(|(name, b)| {
                b.as_ref().map(|b| PeerInfo {
                    name,
                    path: b.path.display().to_string(),
                    version: b.version.clone(),
                })
            })
            .collect();
        let results = Results {
            quick: ctx.common.quick,
            machine: &ctx.machine,
            peers,
            rows: &out.rows,
            ratios: &ratios,
        };
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("\nresults written to {}", path.display());
    }
    // Drop the runtime (and any task still holding a connection) before exiting.
    drop(runtime);
    let failed = ctx.failures.get();
    if failed > 0 {
        eprintln!("\n{failed} run(s) failed: see the FAILED rows above");
        std::process::exit(1);
    }
    Ok(())
}
