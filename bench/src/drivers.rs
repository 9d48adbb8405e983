//! The `pubsub`, `rooms`, `connections` and `slow` scenarios: their
//! arguments, how many runs they plan, and how each run is driven for
//! Confab and the peers (the older scenarios are in `main.rs`).

use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::peers::nats::NatsServer;
use crate::peers::redis::RedisServer;
use crate::report::Row;
use crate::scenarios::confab;
use crate::scenarios::shape::{RoomsOutcome, RoomsShape};
use crate::target::BrokerProc;
use crate::{join_notes, peer_fanout, pubsub_params, Ctx, Out, PeerKind};

/// `rooms`: the chat shape.
#[derive(Args, Debug, Clone)]
pub(crate) struct RoomsArgs {
    /// Rooms.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) rooms: usize,
    /// Device connections; each follows every room it is a member of.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) devices: usize,
    /// Fewest members of a room.
    #[arg(long, default_value_t = 2)]
    pub(crate) min_members: usize,
    /// Most members of a room.
    #[arg(long, default_value_t = 10)]
    pub(crate) max_members: usize,
    /// Devices that publish (each to its own rooms in turn); 0 for all.
    #[arg(long, default_value_t = 0)]
    pub(crate) publishers: usize,
    /// Total publish rates to run, msgs/s over all publishers (open loop).
    #[arg(long, value_delimiter = ',', default_value = "2000,5000,10000")]
    pub(crate) rates: Vec<f64>,
}

impl RoomsArgs {
    /// The suite's settings.
    pub(crate) fn suite(quick: bool) -> RoomsArgs {
        RoomsArgs {
            rooms: if quick { 1_000 } else { 10_000 },
            devices: if quick { 200 } else { 2_000 },
            min_members: 2,
            max_members: 10,
            publishers: 0,
            rates: if quick {
                vec![5_000.0]
            } else {
                vec![2_000.0, 5_000.0, 10_000.0]
            },
        }
    }
}

/// `connections`: idle connections.
#[derive(Args, Debug, Clone)]
pub(crate) struct ConnArgs {
    /// Connection counts to run.
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000")]
    pub(crate) counts: Vec<usize>,
    /// Connections being set up at a time.
    #[arg(long, default_value_t = 64)]
    pub(crate) parallel: usize,
}

impl ConnArgs {
    /// The suite's settings.
    pub(crate) fn suite(quick: bool) -> ConnArgs {
        ConnArgs {
            counts: if quick {
                vec![1_000]
            } else {
                vec![1_000, 5_000, 10_000]
            },
            parallel: 64,
        }
    }
}

/// `slow`: one subscriber of a big room stops reading.
#[derive(Args, Debug, Clone)]
pub(crate) struct SlowArgs {
    /// Members of the room (connections), the slow one included.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) members: usize,
    /// Publish rate, msgs/s (open loop, one publisher).
    #[arg(long, default_value_t = 200.0)]
    pub(crate) rate: f64,
    /// Payload size, bytes: large enough that the slow consumer's backlog
    /// outgrows the kernel's socket buffers (4 MiB here) within the run.
    #[arg(long, default_value_t = 1024)]
    pub(crate) size: usize,
    /// Length of the run, seconds (the broker cuts a consumer whose socket
    /// accepts nothing for 30 s).
    #[arg(long, default_value_t = 60.0)]
    pub(crate) seconds: f64,
    /// Width of a window of the time series, seconds.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) window: f64,
    /// Also run the same load with every member reading, for comparison.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub(crate) baseline: bool,
}

impl SlowArgs {
    /// The suite's settings.
    pub(crate) fn suite(quick: bool) -> SlowArgs {
        SlowArgs {
            members: if quick { 200 } else { 1_000 },
            rate: 200.0,
            size: 1024,
            seconds: if quick { 3.0 } else { 60.0 },
            window: 1.0,
            baseline: !quick,
        }
    }
}

pub(crate) fn plan_pubsub(ctx: &Ctx, sizes: &[usize]) -> usize {
    let confab = if ctx.confab() {
        1 + usize::from(!ctx.common.quick)
    } else {
        0
    };
    sizes.len() * (confab + ctx.pubsub_peers().len())
}

pub(crate) fn plan_rooms(ctx: &Ctx, a: &RoomsArgs) -> usize {
    a.rates.len() * (usize::from(ctx.confab()) + ctx.pubsub_peers().len())
}

pub(crate) fn plan_connections(ctx: &Ctx, a: &ConnArgs) -> usize {
    a.counts.len() * (usize::from(ctx.confab()) + ctx.pubsub_peers().len())
}

pub(crate) fn plan_slow(ctx: &Ctx, a: &SlowArgs) -> usize {
    usize::from(ctx.confab()) * (1 + usize::from(a.baseline))
}

fn mib(kib: Option<u64>) -> u64 {
    kib.unwrap_or(0) / 1024
}

/// 1 -> 1 pub/sub, closed loop: the maximum sustainable rate per payload
/// size. Confab with `wal` (compared with the peers) and, in full runs,
/// with `none` (no write-ahead log: what the log costs).
pub(crate) async fn pubsub(ctx: &Ctx, out: &mut Out, sizes: &[usize], window: usize) {
    let budget = ctx.budget(Duration::ZERO);
    for &size in sizes {
        let mut confab_row = None;
        let modes: &[&str] = if ctx.common.quick {
            &["wal"]
        } else {
            &["wal", "none"]
        };
        if ctx.confab() {
            for &mode in modes {
                let system = if mode == "wal" {
                    "confab"
                } else {
                    "confab-none"
                };
                let params = format!("1 -> 1, {size} B, {mode}, {window} in flight");
                let idx = ctx
                    .run_one(out, "pubsub", system, params.clone(), budget, async {
                        let broker = BrokerProc::start(&ctx.opts(mode)).await?;
                        let (rate, pub_rate) =
                            confab::fanout(broker.addr, 1, window, size, &ctx.knobs).await?;
                        let mut row = Row::new("pubsub", system, params.clone(), rate, "msgs/s");
                        row.notes = format!(
                            "closed loop, acked publishes {pub_rate:.0}/s; rss {} MiB",
                            mib(broker.rss_kib())
                        );
                        row.metrics.insert("publish_per_s".into(), pub_rate);
                        Ok(row)
                    })
                    .await;
                if mode == "wal" {
                    confab_row = idx;
                }
            }
        }
        for kind in ctx.pubsub_peers() {
            let params = pubsub_params(kind, 1, size);
            let idx = ctx
                .run_one(
                    out,
                    "pubsub",
                    kind.system(),
                    params.clone(),
                    budget,
                    async {
                        let mut row =
                            peer_fanout(ctx, kind, "pubsub", params.clone(), 1, window, size)
                                .await?;
                        row.unit = "msgs/s".into();
                        Ok(row)
                    },
                )
                .await;
            out.pair(confab_row, idx);
        }
    }
}

fn rooms_row(system: &str, params: String, o: RoomsOutcome, rate: f64, base: String) -> Row {
    let mut row = Row::new("rooms", system, params, o.deliveries, "deliveries/s");
    row.offered = Some(o.offered_deliveries);
    row.notes = join_notes(
        format!(
            "publish {:.0}/s of {rate:.0}; connect+subscribe {:.1} s; {base}",
            o.achieved, o.setup_s
        ),
        o.notes,
    );
    row.metrics.insert("publish_per_s".into(), o.achieved);
    row.metrics.insert("offered_publish_per_s".into(), rate);
    row.metrics.insert("setup_s".into(), o.setup_s);
    if let Some(us) = o.server_us {
        row.notes = format!("server cpu {us:.1} us/delivery; {}", row.notes);
        row.metrics.insert("server_cpu_us_per_delivery".into(), us);
    }
    if let Some(us) = o.bench_us {
        row.metrics.insert("bench_cpu_us_per_delivery".into(), us);
    }
    if let Some(b) = o.wire_bytes {
        row.notes = format!("wire {b:.0} B/delivery; {}", row.notes);
        row.metrics.insert("wire_bytes_per_delivery".into(), b);
    }
    row.latency = Some(o.latency);
    row
}

/// Many small rooms: open loop at each rate, the same for every system.
pub(crate) async fn rooms(ctx: &Ctx, out: &mut Out, a: &RoomsArgs) {
    let publishers = if a.publishers == 0 {
        a.devices
    } else {
        a.publishers
    };
    let shape = Arc::new(RoomsShape::new(
        a.rooms,
        a.devices,
        a.min_members,
        a.max_members,
        publishers,
    ));
    let size = ctx.size();
    let layout = shape.describe();
    let budget = ctx.budget(Duration::from_secs(60 + a.devices as u64 / 20));
    let info = format!(
        "{} memberships, {} rooms with a publisher",
        shape.memberships(),
        shape.active_rooms()
    );
    for &rate in &a.rates {
        let file = format!("rooms-{rate:.0}");
        let title = format!("rooms: {layout}, {rate:.0} msgs/s, {size} B");
        let mut confab_row = None;
        if ctx.confab() {
            let params = format!("{rate:.0} msgs/s, {size} B, wal{}", ctx.zstd_tag());
            confab_row = ctx
                .run_one(out, "rooms", "confab", params.clone(), budget, async {
                    let broker = BrokerProc::start(&ctx.opts("wal")).await?;
                    let o =
                        confab::rooms(broker.addr, shape.clone(), rate, size, &ctx.knobs, &|| {
                            broker.cpu_secs()
                        })
                        .await?;
                    let rss = format!("rss {} MiB; {layout}; {info}", mib(broker.rss_kib()));
                    Ok(rooms_row("confab", params.clone(), o, rate, rss))
                })
                .await;
            if let Some(i) = confab_row {
                out.rows[i].plot_in(file.clone(), title.clone());
            }
        }
        for kind in ctx.pubsub_peers() {
            let system = kind.system();
            let idx = match kind {
                PeerKind::Nats => {
                    let params = format!("{rate:.0} msgs/s, {size} B, subject per room");
                    ctx.run_one(out, "rooms", system, params.clone(), budget, async {
                        let server = NatsServer::start(ctx.nats_bin()?, ctx.cpus(), None).await?;
                        let o = crate::peers::nats::rooms(
                            &server,
                            shape.clone(),
                            rate,
                            size,
                            &ctx.knobs,
                        )
                        .await?;
                        let rss = format!("rss {} MiB; no persistence", server.rss_mib());
                        Ok(rooms_row(system, params.clone(), o, rate, rss))
                    })
                    .await
                }
                PeerKind::Redis(persist) => {
                    let params = format!("{rate:.0} msgs/s, {size} B, channel per room");
                    ctx.run_one(out, "rooms", system, params.clone(), budget, async {
                        let server =
                            RedisServer::start(ctx.redis_bin()?, ctx.cpus(), persist).await?;
                        let o = crate::peers::redis::rooms(
                            &server,
                            shape.clone(),
                            rate,
                            size,
                            &ctx.knobs,
                        )
                        .await?;
                        let rss = format!(
                            "rss {} MiB; no persistence; PUBLISH from 8 shared connections",
                            server.rss_mib()
                        );
                        Ok(rooms_row(system, params.clone(), o, rate, rss))
                    })
                    .await
                }
                PeerKind::NatsJs(_) => None,
            };
            if let Some(i) = idx {
                out.rows[i].plot_in(file.clone(), title.clone());
            }
            out.pair(confab_row, idx);
        }
    }
}

fn conn_row(system: &str, params: String, n: usize, rate: f64, delta_kib: i64) -> Row {
    let per = delta_kib as f64 / n.max(1) as f64;
    let mut row = Row::new("connections", system, params, rate, "conns/s");
    row.notes = format!(
        "rss +{:.1} MiB = {per:.1} KiB per connection",
        delta_kib as f64 / 1024.0
    );
    row.metrics.insert("rss_per_conn_kib".into(), per);
    row.metrics
        .insert("rss_delta_mib".into(), delta_kib as f64 / 1024.0);
    row
}

/// Idle connections: the server's memory per connection, and the connect
/// rate (connect + handshake + subscribe, `parallel` at a time).
pub(crate) async fn connections(ctx: &Ctx, out: &mut Out, a: &ConnArgs) {
    let settle = Duration::from_secs(1);
    for &n in &a.counts {
        let budget = ctx.budget(Duration::from_secs(n as u64 / 50));
        let mut confab_row = None;
        if ctx.confab() {
            let params = format!("{n} idle, own room + group of 10, wal");
            confab_row = ctx
                .run_one(
                    out,
                    "connections",
                    "confab",
                    params.clone(),
                    budget,
                    async {
                        let broker = BrokerProc::start(&ctx.opts("wal")).await?;
                        let (rate, delta) =
                            confab::connections(broker.addr, n, a.parallel, settle, || {
                                broker.rss_kib()
                            })
                            .await?;
                        let mut row = conn_row("confab", params.clone(), n, rate, delta);
                        row.notes = format!("{}; rss {} MiB", row.notes, mib(broker.rss_kib()));
                        Ok(row)
                    },
                )
                .await;
        }
        for kind in ctx.pubsub_peers() {
            let system = kind.system();
            let idx = match kind {
                PeerKind::Nats => {
                    let params = format!("{n} idle, own subject + group of 10");
                    ctx.run_one(out, "connections", system, params.clone(), budget, async {
                        let server = NatsServer::start(ctx.nats_bin()?, ctx.cpus(), None).await?;
                        let (rate, delta) =
                            crate::peers::nats::connections(&server, n, a.parallel, settle).await?;
                        let mut row = conn_row(system, params.clone(), n, rate, delta);
                        row.notes = join_notes(
                            format!("{}; rss {} MiB", row.notes, server.rss_mib()),
                            server.trouble(),
                        );
                        Ok(row)
                    })
                    .await
                }
                PeerKind::Redis(persist) => {
                    let params = format!("{n} idle, own channel + group of 10");
                    ctx.run_one(out, "connections", system, params.clone(), budget, async {
                        let server =
                            RedisServer::start(ctx.redis_bin()?, ctx.cpus(), persist).await?;
                        let (rate, delta) =
                            crate::peers::redis::connections(&server, n, a.parallel, settle)
                                .await?;
                        let mut row = conn_row(system, params.clone(), n, rate, delta);
                        row.notes = format!("{}; rss {} MiB", row.notes, server.rss_mib());
                        Ok(row)
                    })
                    .await
                }
                PeerKind::NatsJs(_) => None,
            };
            out.pair(confab_row, idx);
        }
    }
}

/// One subscriber of a big room stops reading: the others' latency and
/// the broker's memory over time; then, for comparison, the same with
/// every member reading. Confab only (NATS and Redis would cut such a
/// subscriber off at their pending/output-buffer limits).
pub(crate) async fn slow(ctx: &Ctx, out: &mut Out, a: &SlowArgs) {
    if !ctx.confab() {
        return;
    }
    let runs: &[bool] = if a.baseline { &[true, false] } else { &[true] };
    for &slow_one in runs {
        let params = format!(
            "{} members, {}, {:.0} msgs/s, {} B, {:.0} s, wal",
            a.members,
            if slow_one {
                "1 never reads"
            } else {
                "baseline: all read"
            },
            a.rate,
            a.size,
            a.seconds
        );
        slow_run(ctx, out, a, params, slow_one).await;
    }
}

async fn slow_run(ctx: &Ctx, out: &mut Out, a: &SlowArgs, params: String, slow_one: bool) {
    let seconds = Duration::from_secs_f64(a.seconds);
    let window = Duration::from_secs_f64(a.window);
    let budget = ctx.budget(seconds + Duration::from_secs(60 + a.members as u64 / 50));
    ctx.run_one(out, "slow", "confab", params.clone(), budget, async {
        let broker = BrokerProc::start(&ctx.opts("wal")).await?;
        let o = confab::slow(
            broker.addr,
            a.members,
            slow_one,
            a.rate,
            a.size,
            seconds,
            window,
            || broker.rss_kib(),
        )
        .await?;
        let mut row = Row::new(
            "slow",
            "confab",
            params.clone(),
            o.deliveries,
            "deliveries/s",
        );
        let readers = a.members.saturating_sub(usize::from(slow_one));
        row.offered = Some(a.rate * readers as f64);
        let p99: Vec<f64> = o.points.iter().filter_map(|p| p.p99_us).collect();
        let rss: Vec<f64> = o.points.iter().map(|p| p.rss_mib).collect();
        let first = p99.first().copied().unwrap_or(0.0);
        let last = p99.last().copied().unwrap_or(0.0);
        let peak = p99.iter().copied().fold(0.0, f64::max);
        let (r0, r1) = (
            rss.first().copied().unwrap_or(0.0),
            rss.last().copied().unwrap_or(0.0),
        );
        let rpeak = rss.iter().copied().fold(0.0, f64::max);
        row.notes = format!(
            "readers' p99 first/last/peak window {:.1}/{:.1}/{:.1} ms; rss start/peak/end \
             {r0:.0}/{rpeak:.0}/{r1:.0} MiB; publish {:.0}/s{}",
            first / 1000.0,
            last / 1000.0,
            peak / 1000.0,
            o.achieved,
            o.slow.map(|s| format!("; {s}")).unwrap_or_default()
        );
        for (k, v) in [
            ("p99_first_us", first),
            ("p99_last_us", last),
            ("p99_peak_us", peak),
            ("rss_start_mib", r0),
            ("rss_peak_mib", rpeak),
            ("rss_end_mib", r1),
            ("publish_per_s", o.achieved),
        ] {
            row.metrics.insert(k.into(), v);
        }
        row.series = o.points;
        Ok(row)
    })
    .await;
}

/// The rows of a `--json` results file (for `replot`).
pub(crate) fn load_rows(path: &std::path::Path) -> anyhow::Result<Vec<Row>> {
    #[derive(serde::Deserialize)]
    struct Saved {
        rows: Vec<Row>,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let saved: Saved = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("parsing {}: {e}", path.display()))?;
    Ok(saved.rows)
}
