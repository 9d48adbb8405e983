//! Redis: pub/sub (PUBLISH/SUBSCRIBE, no persistence) for fan-out and
//! latency; Streams (XADD pipelined from several connections) for durable
//! publish, with three persistence settings:
//!
//! | system               | redis-server flags                      | compared with Confab |
//! |----------------------|-----------------------------------------|----------------------|
//! | `redis`              | `--appendonly no --save ''` (in memory) | `none`               |
//! | `redis-aof-everysec` | `--appendonly yes --appendfsync everysec` | `wal` (survives a process kill, not a power cut) |
//! | `redis-aof-always`   | `--appendonly yes --appendfsync always`   | `fsync` (fsync per event-loop batch) |
//!
//! Replay reads a stream from the start with XRANGE.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use tokio::task::JoinHandle;

use super::{measure, open_loop, reap, stamp_of, Binary, LatencySink, Pacer, PeerProc};
use crate::report::Latency;
use crate::scenarios::shape::{rooms_open_loop, Collector, Dispatch, RoomsOutcome, RoomsShape};
use crate::scenarios::{now_ns, payload, Knobs};

/// Redis persistence settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// No AOF, no RDB snapshots.
    None,
    /// AOF, fsync once a second.
    AofEverySec,
    /// AOF, fsync before replying (per event-loop batch).
    AofAlways,
}

impl Persist {
    /// The system name in the results.
    pub fn system(self) -> &'static str {
        match self {
            Persist::None => "redis",
            Persist::AofEverySec => "redis-aof-everysec",
            Persist::AofAlways => "redis-aof-always",
        }
    }
}

/// A running redis-server.
pub struct RedisServer {
    proc: PeerProc,
    client: redis::Client,
}

impl RedisServer {
    /// Starts redis-server on a free loopback port, with its own dir.
    pub async fn start(
        bin: &Binary,
        cpus: Option<&str>,
        persist: Persist,
    ) -> anyhow::Result<RedisServer> {
        let (addr, dir) = PeerProc::prepare("redis-")?;
        let mut cmd = crate::target::pinned(&bin.path, cpus);
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .arg("--port")
            .arg(addr.port().to_string())
            .arg("--dir")
            .arg(dir.path())
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--protected-mode")
            .arg("no")
            .arg("--maxclients")
            .arg("15000")
            // Subscribers are paced (see Pacer); this only keeps a brief
            // burst from getting one cut off.
            .arg("--client-output-buffer-limit")
            .arg("pubsub 256mb 128mb 60");
        match persist {
            Persist::None => {
                cmd.arg("--appendonly").arg("no");
            }
            Persist::AofEverySec => {
                cmd.arg("--appendonly")
                    .arg("yes")
                    .arg("--appendfsync")
                    .arg("everysec");
            }
            Persist::AofAlways => {
                cmd.arg("--appendonly")
                    .arg("yes")
                    .arg("--appendfsync")
                    .arg("always");
            }
        }
        let proc = PeerProc::spawn(cmd, addr, dir)
            .await
            .context("starting redis-server")?;
        let client = redis::Client::open(format!("redis://{addr}/"))?;
        Ok(RedisServer { proc, client })
    }

    /// Resident memory, in MiB.
    pub fn rss_mib(&self) -> u64 {
        self.proc.rss_mib()
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        self.proc.rss_kib()
    }

    /// CPU seconds the server has used.
    pub fn cpu_secs(&self) -> Option<f64> {
        self.proc.cpu_secs()
    }

    /// Subscribers the server cut off for a full output buffer.
    pub fn trouble(&self) -> Option<String> {
        let cut = self.proc.log_count("output buffer limits");
        (cut > 0).then(|| format!("LOSSY: {cut} subscribers cut off (output buffer limit)"))
    }

    async fn conn(&self) -> anyhow::Result<MultiplexedConnection> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(10)))
            .set_response_timeout(Some(Duration::from_secs(120)));
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .context("connecting to redis")
    }
}

type Tasks = Vec<JoinHandle<anyhow::Result<()>>>;

/// `subs` connections subscribed to `channel`, each running `per_sub` on
/// its message stream (SUBSCRIBE is confirmed before this returns).
async fn subscribers<F, Fut>(
    server: &RedisServer,
    subs: usize,
    channel: &str,
    per_sub: F,
) -> anyhow::Result<Tasks>
where
    F: Fn(redis::aio::PubSubStream) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut tasks = Vec::with_capacity(subs);
    for s in 0..subs {
        let mut ps = server
            .client
            .get_async_pubsub()
            .await
            .with_context(|| format!("subscriber {s}"))?;
        ps.subscribe(channel).await?;
        tasks.push(tokio::spawn(per_sub(ps.into_on_message())));
    }
    Ok(tasks)
}

/// Pub/sub fan-out: one publisher connection with `window` PUBLISHes in
/// flight (two pipelines of half a window, like the Confab client's
/// refill at half), paced to stay at most `lag` messages ahead of the
/// subscribers. Returns (deliveries/s, publishes/s, notes).
pub async fn fanout(
    server: &RedisServer,
    subs: usize,
    window: usize,
    lag: usize,
    size: usize,
    k: &Knobs,
) -> anyhow::Result<(f64, f64, Option<String>)> {
    let channel = format!("fan-{subs}-{}", now_ns());
    let pacer = Pacer::new(subs, lag);
    let readers = subscribers(server, subs, &channel, |stream| {
        let pacer = pacer.clone();
        async move {
            let mut chunks = stream.ready_chunks(1024);
            while let Some(msgs) = chunks.next().await {
                pacer.delivered(msgs.len() as u64);
            }
            anyhow::bail!("subscription ended")
        }
    })
    .await?;
    let conn = server.conn().await?;
    let half = (window / 2).max(1);
    let publishers = (0..2)
        .map(|_| {
            tokio::spawn(publisher(
                conn.clone(),
                channel.clone(),
                half,
                size,
                pacer.clone(),
            ))
        })
        .collect();
    let rates = measure(k, &[&pacer.delivered, &pacer.published]).await;
    let notes = [
        server.trouble(),
        reap("publishers", publishers).await,
        reap("subscribers", readers).await,
    ];
    Ok((rates[0], rates[1], super::notes(notes)))
}

async fn publisher(
    mut conn: MultiplexedConnection,
    channel: String,
    batch: usize,
    size: usize,
    pacer: Arc<Pacer>,
) -> anyhow::Result<()> {
    loop {
        let mut pipe = redis::pipe();
        for _ in 0..batch {
            pipe.cmd("PUBLISH")
                .arg(&channel)
                .arg(payload(size, now_ns()).as_ref())
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        pacer.published(batch as u64);
        pacer.wait().await;
    }
}

struct RedisSender {
    conn: MultiplexedConnection,
    channel: String,
    size: usize,
    errors: Arc<AtomicU64>,
}

impl super::Sender for RedisSender {
    async fn send(&mut self, stamps: &[u64]) -> anyhow::Result<()> {
        let mut pipe = redis::pipe();
        for &s in stamps {
            pipe.cmd("PUBLISH")
                .arg(&self.channel)
                .arg(payload(self.size, s).as_ref())
                .ignore();
        }
        // Replies are awaited off the send path, so they never delay sends.
        let mut conn = self.conn.clone();
        let errors = self.errors.clone();
        tokio::spawn(async move {
            if pipe.query_async::<()>(&mut conn).await.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(())
    }
}

/// Open-loop pub/sub latency at `rate` msgs/s to `subs` subscribers.
pub async fn latency(
    server: &RedisServer,
    rate: f64,
    subs: usize,
    size: usize,
    k: &Knobs,
) -> anyhow::Result<(f64, Latency, Option<String>)> {
    let channel = format!("lat-{}", now_ns());
    let sink = LatencySink::new();
    let readers = subscribers(server, subs, &channel, |stream| {
        let mut rec = sink.recorder();
        async move {
            let mut chunks = stream.ready_chunks(1024);
            loop {
                tokio::select! {
                    _ = rec.stopped() => return Ok(()),
                    msgs = chunks.next() => match msgs {
                        Some(msgs) => rec.record(msgs.iter().map(|m| stamp_of(m.get_payload_bytes()))),
                        None => anyhow::bail!("subscription ended"),
                    },
                }
            }
        }
    })
    .await?;
    let errors = Arc::new(AtomicU64::new(0));
    let mut sender = RedisSender {
        conn: server.conn().await?,
        channel,
        size,
        errors: errors.clone(),
    };
    let (achieved, lat, notes) = open_loop(rate, k, &sink, readers, &mut sender).await?;
    let mut notes = super::notes([server.trouble(), notes]);
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        notes = Some(format!(
            "{errors} PUBLISH pipelines failed; {}",
            notes.unwrap_or_default()
        ));
    }
    Ok((achieved, lat, notes))
}

/// Streams publish throughput: `conns` connections, each with `window`
/// XADDs in flight (two pipelines of half a window), over `keys` streams.
/// Counts replies per second.
pub async fn publish(
    server: &RedisServer,
    conns: usize,
    window: usize,
    size: usize,
    keys: usize,
    k: &Knobs,
) -> anyhow::Result<(f64, Option<String>)> {
    let acked = Arc::new(AtomicU64::new(0));
    let keys = keys.max(1);
    let half = (window / 2).max(1);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let conn = server.conn().await?;
        let names: Vec<String> = (0..keys)
            .map(|r| format!("room-{}", (c + r * conns) % keys))
            .collect();
        for _ in 0..2 {
            tasks.push(tokio::spawn(xadd_loop(
                conn.clone(),
                names.clone(),
                half,
                size,
                acked.clone(),
            )));
        }
    }
    let rate = measure(k, &[&acked]).await[0];
    let notes = reap("publishers", tasks).await;
    Ok((rate, notes))
}

async fn xadd_loop(
    mut conn: MultiplexedConnection,
    keys: Vec<String>,
    batch: usize,
    size: usize,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut n = 0usize;
    loop {
        let mut pipe = redis::pipe();
        for _ in 0..batch {
            n += 1;
            pipe.cmd("XADD")
                .arg(&keys[n % keys.len()])
                .arg("*")
                .arg("p")
                .arg(payload(size, now_ns()).as_ref())
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        acked.fetch_add(batch as u64, Ordering::Relaxed);
    }
}

/// Replay: fills one stream with `count` entries, then times reading it
/// all from the start with XRANGE, 10,000 entries per call.
pub async fn replay(server: &RedisServer, count: u64, size: usize) -> anyhow::Result<f64> {
    let mut conn = server.conn().await?;
    let body = payload(size, 0);
    let mut sent = 0u64;
    while sent < count {
        let n = (count - sent).min(4096);
        let mut pipe = redis::pipe();
        for _ in 0..n {
            pipe.cmd("XADD")
                .arg("replay")
                .arg("*")
                .arg("p")
                .arg(body.as_ref())
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        sent += n;
    }
    let t0 = Instant::now();
    let mut start = "-".to_string();
    let mut got = 0u64;
    while got < count {
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg("replay")
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        let redis::Value::Array(entries) = reply else {
            anyhow::bail!("XRANGE: unexpected reply {reply:?}");
        };
        let Some(redis::Value::Array(last)) = entries.last() else {
            anyhow::bail!("XRANGE: stream ended after {got} of {count} entries");
        };
        let id = match last.first() {
            Some(redis::Value::BulkString(id)) => String::from_utf8_lossy(id).into_owned(),
            other => anyhow::bail!("XRANGE: unexpected entry id {other:?}"),
        };
        got += entries.len() as u64;
        start = format!("({id}");
    }
    Ok(count as f64 / t0.elapsed().as_secs_f64())
}

/// Publishes the `rooms` dispatcher's batches as PUBLISH pipelines on a
/// small pool of connections (a RESP2 connection in subscribe mode cannot
/// publish, so devices do not publish from their own connection here).
struct RoomsSender {
    dispatch: Dispatch,
    pool: Vec<MultiplexedConnection>,
    channels: Arc<Vec<String>>,
    size: usize,
    errors: Arc<AtomicU64>,
}

impl super::Sender for RoomsSender {
    async fn send(&mut self, stamps: &[u64]) -> anyhow::Result<()> {
        let mut pipes: Vec<Option<redis::Pipeline>> = vec![None; self.pool.len()];
        let (channels, size, n) = (&self.channels, self.size, self.pool.len());
        self.dispatch.split(stamps, |d, batch| {
            let pipe = pipes[d % n].get_or_insert_with(redis::pipe);
            for (r, s) in batch {
                pipe.cmd("PUBLISH")
                    .arg(&channels[r as usize])
                    .arg(payload(size, s).as_ref())
                    .ignore();
            }
        });
        for (i, pipe) in pipes.into_iter().enumerate() {
            let Some(pipe) = pipe else { continue };
            let mut conn = self.pool[i].clone();
            let errors = self.errors.clone();
            tokio::spawn(async move {
                if pipe.query_async::<()>(&mut conn).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        Ok(())
    }
}

/// The `rooms` scenario on Redis pub/sub: every device is one subscriber
/// connection with a channel per room; publishers' messages go out as
/// PUBLISH from a pool of 8 connections. Open loop at `rate` msgs/s.
pub async fn rooms(
    server: &RedisServer,
    shape: Arc<RoomsShape>,
    rate: f64,
    size: usize,
    k: &Knobs,
) -> anyhow::Result<RoomsOutcome> {
    let collector = Collector::new();
    let channels: Arc<Vec<String>> = Arc::new(
        (0..shape.members.len())
            .map(|r| format!("room.{r}"))
            .collect(),
    );
    let t0 = Instant::now();
    let devices = shape.rooms_of.len();
    let connected: Vec<anyhow::Result<_>> = futures_util::stream::iter(0..devices)
        .map(|d| {
            let (shape, channels) = (shape.clone(), channels.clone());
            async move {
                let mut ps = server
                    .client
                    .get_async_pubsub()
                    .await
                    .with_context(|| format!("device {d}"))?;
                let mine: Vec<&str> = shape.rooms_of[d]
                    .iter()
                    .map(|&r| channels[r as usize].as_str())
                    .collect();
                if !mine.is_empty() {
                    ps.subscribe(mine).await?;
                }
                anyhow::Ok((d, ps))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let setup_s = t0.elapsed().as_secs_f64();
    let mut tasks: Tasks = Vec::new();
    for c in connected {
        let (d, ps) = c?;
        let col = collector.clone();
        tasks.push(tokio::spawn(async move {
            let mut chunks = ps.into_on_message().ready_chunks(256);
            while let Some(msgs) = chunks.next().await {
                col.record(d, msgs.iter().map(|m| stamp_of(m.get_payload_bytes())));
            }
            anyhow::bail!("subscription ended")
        }));
    }
    let mut pool = Vec::new();
    for _ in 0..8 {
        pool.push(server.conn().await?);
    }
    let errors = Arc::new(AtomicU64::new(0));
    let mut sender = RoomsSender {
        dispatch: Dispatch::new(shape.clone(), collector.clone()),
        pool,
        channels,
        size,
        errors: errors.clone(),
    };
    let mut out = rooms_open_loop(rate, k, &collector, &mut sender, setup_s, &|| {
        server.cpu_secs()
    })
    .await?;
    for t in &tasks {
        t.abort();
    }
    let errors = errors.load(Ordering::Relaxed);
    let failed = (errors > 0).then(|| format!("{errors} PUBLISH pipelines failed"));
    out.notes = super::notes([server.trouble(), failed, out.notes]);
    Ok(out)
}

/// `n` idle subscriber connections, each on a personal channel and a
/// channel shared by 10 connections, `parallel` connecting at a time.
/// Returns the connect rate (connect + SUBSCRIBE confirmed, per second)
/// and the server's RSS growth in KiB, measured `settle` after the last.
pub async fn connections(
    server: &RedisServer,
    n: usize,
    parallel: usize,
    settle: Duration,
) -> anyhow::Result<(f64, i64)> {
    let rss0 = server.rss_kib().unwrap_or(0) as i64;
    let t0 = Instant::now();
    let held: Vec<anyhow::Result<_>> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let mut ps = server
                .client
                .get_async_pubsub()
                .await
                .with_context(|| format!("connection {i}"))?;
            ps.subscribe(&[format!("user.{i}"), format!("group.{}", i / 10)])
                .await?;
            anyhow::Ok(ps)
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    let held: Vec<_> = held.into_iter().collect::<anyhow::Result<_>>()?;
    tokio::time::sleep(settle).await;
    let rss1 = server.rss_kib().unwrap_or(0) as i64;
    drop(held);
    Ok((rate, rss1 - rss0))
}
