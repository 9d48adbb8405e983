//! NATS: core pub/sub (no persistence) for fan-out and latency; JetStream
//! with a file-storage stream for durable publish and replay.
//!
//! JetStream acknowledges a publish once the message is written to the
//! stream's file (the OS page cache), and fsyncs only every
//! `sync_interval` (2 minutes by default): a server process kill loses
//! nothing, a power cut can lose acknowledged messages. That is what
//! Confab's `wal` mode promises, so `nats-js` is compared with `wal`.
//! `nats-js-fsync` runs with `sync_interval: always` (an fsync per write)
//! and is compared with Confab's `fsync` mode.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::task::JoinHandle;

use super::{measure, open_loop, reap, stamp_of, Binary, LatencySink, Pacer, PeerProc};
use crate::report::Latency;
use crate::scenarios::shape::{
    rooms_open_loop, ChannelSender, Collector, Dispatch, RoomsOutcome, RoomsShape,
};
use crate::scenarios::{now_ns, payload, Knobs};

/// How a JetStream file store syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsSync {
    /// The server's default: `sync_interval` 2 minutes (acks before fsync).
    Default,
    /// `sync_interval: always`: an fsync on every write.
    Always,
}

/// Whether this nats-server knows `sync_interval` (2.10 and later).
pub fn supports_sync_always(bin: &Binary) -> bool {
    // "nats-server: v2.15.1"
    let v = bin.version.rsplit('v').next().unwrap_or("");
    let mut parts = v.split('.').map(|p| p.trim().parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    major > 2 || (major == 2 && minor >= 10)
}

/// A running nats-server.
pub struct NatsServer {
    proc: PeerProc,
    /// `nats://127.0.0.1:port`.
    pub url: String,
    events: Arc<Events>,
}

/// Client events worth a note: any of them means messages were lost or
/// delayed by a reconnect, so the row is not a clean measurement.
#[derive(Default)]
struct Events {
    slow_consumer: AtomicU64,
    disconnected: AtomicU64,
    errors: AtomicU64,
}

impl NatsServer {
    /// Starts nats-server on a free loopback port; with JetStream (store in
    /// the temp dir) when `js` is given.
    pub async fn start(
        bin: &Binary,
        cpus: Option<&str>,
        js: Option<JsSync>,
    ) -> anyhow::Result<NatsServer> {
        let (addr, dir) = PeerProc::prepare("nats-")?;
        let mut conf = format!("listen: \"{addr}\"\n");
        if let Some(sync) = js {
            let store = dir.path().join("jetstream");
            conf.push_str(&format!(
                "jetstream {{\n  store_dir: \"{}\"\n",
                store.display()
            ));
            if sync == JsSync::Always {
                conf.push_str("  sync_interval: always\n");
            }
            conf.push_str("}\n");
        }
        let conf_path = dir.path().join("nats.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = crate::target::pinned(&bin.path, cpus);
        cmd.arg("-c").arg(&conf_path);
        let proc = PeerProc::spawn(cmd, addr, dir)
            .await
            .context("starting nats-server")?;
        Ok(NatsServer {
            url: format!("nats://{addr}"),
            proc,
            events: Arc::default(),
        })
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

    /// Slow consumers and disconnects seen by the clients, and slow
    /// consumers the server logged, since the server started.
    pub fn trouble(&self) -> Option<String> {
        let ev = &self.events;
        let (slow, disc, err) = (
            ev.slow_consumer.load(Ordering::Relaxed),
            ev.disconnected.load(Ordering::Relaxed),
            ev.errors.load(Ordering::Relaxed),
        );
        let server_slow = self.proc.log_count("Slow Consumer");
        let mut parts = Vec::new();
        if slow > 0 {
            parts.push(format!("{slow} client slow-consumer drops"));
        }
        if server_slow > 0 {
            parts.push(format!("{server_slow} server slow-consumer events"));
        }
        if disc > 0 {
            parts.push(format!("{disc} disconnects"));
        }
        if err > 0 {
            parts.push(format!("{err} client/server errors"));
        }
        (!parts.is_empty()).then(|| format!("LOSSY: {}", parts.join(", ")))
    }

    pub(crate) async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        let events = self.events.clone();
        async_nats::ConnectOptions::new()
            .event_callback(move |event| {
                let counter = match event {
                    async_nats::Event::SlowConsumer(_) => Some(&events.slow_consumer),
                    async_nats::Event::Disconnected => Some(&events.disconnected),
                    async_nats::Event::ServerError(_) | async_nats::Event::ClientError(_) => {
                        Some(&events.errors)
                    }
                    _ => None,
                };
                if let Some(c) = counter {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                async {}
            })
            .connection_timeout(Duration::from_secs(10))
            .request_timeout(Some(Duration::from_secs(60)))
            .connect(&self.url)
            .await
            .with_context(|| format!("connecting to {}", self.url))
    }

    fn js(client: async_nats::Client, inflight: usize) -> jetstream::Context {
        jetstream::context::ContextBuilder::new()
            .timeout(Duration::from_secs(120))
            .max_ack_inflight(inflight.max(1))
            .build(client)
    }
}

type Tasks = Vec<JoinHandle<anyhow::Result<()>>>;

/// Subscribes `subs` connections to `subject`; each runs `per_sub` on its
/// subscription. Returns once the server has registered every one.
async fn subscribers<F, Fut>(
    server: &NatsServer,
    subs: usize,
    subject: &str,
    per_sub: F,
) -> anyhow::Result<Tasks>
where
    F: Fn(async_nats::Subscriber) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut tasks = Vec::with_capacity(subs);
    for s in 0..subs {
        let client = server
            .connect()
            .await
            .with_context(|| format!("subscriber {s}"))?;
        let sub = client.subscribe(subject.to_owned()).await?;
        // `flush` only writes the socket. A request nobody serves comes
        // back ("no responders") only after the server has processed what
        // this connection sent before it, the SUB included.
        let _ = client.request("bench.nobody", Bytes::new()).await;
        let fut = per_sub(sub);
        tasks.push(tokio::spawn(async move {
            let _client = client;
            fut.await
        }));
    }
    Ok(tasks)
}

/// Core pub/sub fan-out: one publisher, `subs` subscriber connections on
/// one subject, publishing as fast as the subscribers keep up (see
/// [`Pacer`]: at most `lag` messages ahead). Returns (deliveries/s,
/// publishes/s, notes).
pub async fn fanout(
    server: &NatsServer,
    subs: usize,
    lag: usize,
    size: usize,
    k: &Knobs,
) -> anyhow::Result<(f64, f64, Option<String>)> {
    let subject = format!("fan.{subs}.{}", now_ns());
    let pacer = Pacer::new(subs, lag);
    let readers = subscribers(server, subs, &subject, |sub| {
        let pacer = pacer.clone();
        async move {
            let mut chunks = sub.ready_chunks(1024);
            while let Some(msgs) = chunks.next().await {
                pacer.delivered(msgs.len() as u64);
            }
            anyhow::bail!("subscription ended")
        }
    })
    .await?;
    let client = server.connect().await?;
    let publisher = tokio::spawn(core_publisher(client, subject.into(), size, pacer.clone()));
    let rates = measure(k, &[&pacer.delivered, &pacer.published]).await;
    let notes = [
        server.trouble(),
        reap("publisher", vec![publisher]).await,
        reap("subscribers", readers).await,
    ];
    Ok((rates[0], rates[1], super::notes(notes)))
}

async fn core_publisher(
    client: async_nats::Client,
    subject: async_nats::Subject,
    size: usize,
    pacer: Arc<Pacer>,
) -> anyhow::Result<()> {
    loop {
        for _ in 0..64 {
            client
                .publish(subject.clone(), payload(size, now_ns()))
                .await?;
        }
        pacer.published(64);
        pacer.wait().await;
    }
}

struct NatsSender {
    client: async_nats::Client,
    subject: async_nats::Subject,
    size: usize,
}

impl super::Sender for NatsSender {
    async fn send(&mut self, stamps: &[u64]) -> anyhow::Result<()> {
        for &s in stamps {
            self.client
                .publish(self.subject.clone(), payload(self.size, s))
                .await?;
        }
        Ok(())
    }
}

/// Open-loop core pub/sub latency at `rate` msgs/s to `subs` subscribers.
pub async fn latency(
    server: &NatsServer,
    rate: f64,
    subs: usize,
    size: usize,
    k: &Knobs,
) -> anyhow::Result<(f64, Latency, Option<String>)> {
    let subject = format!("lat.{}", now_ns());
    let sink = LatencySink::new();
    let readers = subscribers(server, subs, &subject, |sub| {
        let mut rec = sink.recorder();
        async move {
            let mut chunks = sub.ready_chunks(1024);
            loop {
                tokio::select! {
                    _ = rec.stopped() => return Ok(()),
                    msgs = chunks.next() => match msgs {
                        Some(msgs) => rec.record(msgs.iter().map(|m| stamp_of(&m.payload))),
                        None => anyhow::bail!("subscription ended"),
                    },
                }
            }
        }
    })
    .await?;
    let mut sender = NatsSender {
        client: server.connect().await?,
        subject: async_nats::Subject::from(subject.as_str()),
        size,
    };
    let (achieved, lat, notes) = open_loop(rate, k, &sink, readers, &mut sender).await?;
    Ok((achieved, lat, super::notes([server.trouble(), notes])))
}

async fn create_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: &str,
) -> anyhow::Result<jetstream::stream::Stream> {
    js.create_stream(jetstream::stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("creating stream {name}: {e}"))
}

/// How the durable publishes' subjects map to JetStream streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamLayout {
    /// One file stream holds every room's subject.
    Shared,
    /// One file stream per room subject, as Confab has one log per room
    /// (each JetStream stream is its own Raft group and file store).
    PerRoom,
}

impl StreamLayout {
    /// How the row's parameters describe it.
    pub fn describe(self, subjects: usize) -> String {
        match self {
            StreamLayout::Shared => format!("{subjects} subjects in 1 stream"),
            StreamLayout::PerRoom => format!("{subjects} streams of 1 subject"),
        }
    }
}

/// JetStream publish throughput: `conns` connections, each with `window`
/// async publishes in flight (refilled at half, like the Confab client),
/// over `subjects` subjects of file streams laid out as `layout`. Counts
/// acks per second.
pub async fn publish(
    server: &NatsServer,
    conns: usize,
    window: usize,
    size: usize,
    subjects: usize,
    layout: StreamLayout,
    k: &Knobs,
) -> anyhow::Result<(f64, Option<String>)> {
    let admin = NatsServer::js(server.connect().await?, 16);
    let subjects = subjects.max(1);
    match layout {
        StreamLayout::Shared => {
            create_stream(&admin, "BENCH", "bench.>").await?;
        }
        StreamLayout::PerRoom => {
            for r in 0..subjects {
                create_stream(&admin, &format!("BENCH{r}"), &format!("bench.room{r}")).await?;
            }
        }
    }
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let js = NatsServer::js(server.connect().await?, window);
        let acked = acked.clone();
        let subs: Vec<async_nats::Subject> = (0..subjects)
            .map(|r| async_nats::Subject::from(format!("bench.room{}", (c + r * conns) % subjects)))
            .collect();
        tasks.push(tokio::spawn(js_publisher(js, subs, window, size, acked)));
    }
    let rate = measure(k, &[&acked]).await[0];
    let notes = [server.trouble(), reap("publishers", tasks).await];
    Ok((rate, super::notes(notes)))
}

async fn js_publisher(
    js: jetstream::Context,
    subjects: Vec<async_nats::Subject>,
    window: usize,
    size: usize,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut inflight = VecDeque::with_capacity(window);
    let mut n = 0usize;
    loop {
        while inflight.len() < window {
            n += 1;
            let ack = js
                .publish(
                    subjects[n % subjects.len()].clone(),
                    payload(size, now_ns()),
                )
                .await
                .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
            inflight.push_back(ack);
        }
        while inflight.len() > window / 2 {
            if let Some(ack) = inflight.pop_front() {
                ack.await.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Replay: fills a file stream with `count` messages, then times an
/// ordered consumer reading them all from the start.
pub async fn replay(server: &NatsServer, count: u64, size: usize) -> anyhow::Result<f64> {
    let js = NatsServer::js(server.connect().await?, 4096);
    let stream = create_stream(&js, "REPLAY", "replay.>").await?;
    let body: Bytes = payload(size, 0);
    let mut inflight = VecDeque::with_capacity(2048);
    let mut sent = 0u64;
    while sent < count || !inflight.is_empty() {
        while sent < count && inflight.len() < 2048 {
            sent += 1;
            let ack = js
                .publish("replay.x", body.clone())
                .await
                .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
            inflight.push_back(ack);
        }
        while inflight.len() > 1024 || (sent == count && !inflight.is_empty()) {
            if let Some(ack) = inflight.pop_front() {
                ack.await.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
            }
        }
    }
    let t0 = Instant::now();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating ordered consumer: {e}"))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("ordered consumer: {e}"))?;
    let mut got = 0u64;
    while got < count {
        match messages.next().await {
            Some(Ok(_)) => got += 1,
            Some(Err(e)) => anyhow::bail!("ordered consumer after {got} messages: {e}"),
            None => anyhow::bail!("ordered consumer ended after {got} messages"),
        }
    }
    Ok(count as f64 / t0.elapsed().as_secs_f64())
}

/// The `rooms` scenario on core NATS: every device is one connection with
/// a subscription per room (subject `room.N`), and publishers publish on
/// their rooms' subjects from that same connection. Open loop at `rate`
/// msgs/s over all publishers.
pub async fn rooms(
    server: &NatsServer,
    shape: Arc<RoomsShape>,
    rate: f64,
    size: usize,
    k: &Knobs,
) -> anyhow::Result<RoomsOutcome> {
    let collector = Collector::new();
    let subjects: Arc<Vec<async_nats::Subject>> = Arc::new(
        (0..shape.members.len())
            .map(|r| async_nats::Subject::from(format!("room.{r}")))
            .collect(),
    );
    let t0 = Instant::now();
    let devices = shape.rooms_of.len();
    let connected: Vec<anyhow::Result<_>> = futures_util::stream::iter(0..devices)
        .map(|d| {
            let (shape, subjects) = (shape.clone(), subjects.clone());
            async move {
                let client = server
                    .connect()
                    .await
                    .with_context(|| format!("device {d}"))?;
                let mut subs = Vec::with_capacity(shape.rooms_of[d].len());
                for &r in &shape.rooms_of[d] {
                    subs.push(client.subscribe(subjects[r as usize].clone()).await?);
                }
                // Returns once the server has processed the SUBs (see `subscribers`).
                let _ = client.request("bench.nobody", Bytes::new()).await;
                anyhow::Ok((d, client, subs))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let setup_s = t0.elapsed().as_secs_f64();
    let mut tasks: Tasks = Vec::new();
    let mut outs = vec![None; devices];
    let mut clients = Vec::with_capacity(devices);
    for c in connected {
        let (d, client, subs) = c?;
        let col = collector.clone();
        tasks.push(tokio::spawn(async move {
            let mut chunks = futures_util::stream::select_all(subs).ready_chunks(256);
            while let Some(msgs) = chunks.next().await {
                col.record(d, msgs.iter().map(|m| stamp_of(&m.payload)));
            }
            anyhow::bail!("subscriptions ended")
        }));
        if d < shape.publishers {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<(u32, u64)>>();
            outs[d] = Some(tx);
            let (client, subjects) = (client.clone(), subjects.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(batch) = rx.recv().await {
                    for (r, s) in batch {
                        client
                            .publish(subjects[r as usize].clone(), payload(size, s))
                            .await?;
                    }
                }
                Ok(())
            }));
        }
        clients.push(client);
    }
    let mut sender = ChannelSender {
        dispatch: Dispatch::new(shape.clone(), collector.clone()),
        outs,
    };
    let mut out = rooms_open_loop(rate, k, &collector, &mut sender, setup_s, &|| {
        server.cpu_secs()
    })
    .await?;
    drop(sender);
    let trouble = server.trouble();
    for t in &tasks {
        t.abort();
    }
    out.notes = super::notes([trouble, out.notes]);
    Ok(out)
}

/// `n` idle connections, each subscribed to a personal subject and a
/// subject shared by 10 connections, `parallel` connecting at a time.
/// Returns the connect rate (connect + 2 SUBs + a round trip, per second)
/// and the server's RSS growth in KiB, measured `settle` after the last.
pub async fn connections(
    server: &NatsServer,
    n: usize,
    parallel: usize,
    settle: Duration,
) -> anyhow::Result<(f64, i64)> {
    let rss0 = server.rss_kib().unwrap_or(0) as i64;
    let t0 = Instant::now();
    let held: Vec<anyhow::Result<_>> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let client = server
                .connect()
                .await
                .with_context(|| format!("connection {i}"))?;
            let own = client.subscribe(format!("user.{i}")).await?;
            let group = client.subscribe(format!("group.{}", i / 10)).await?;
            let _ = client.request("bench.nobody", Bytes::new()).await;
            anyhow::Ok((client, own, group))
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
