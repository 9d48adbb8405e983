//! The scenarios against Confab.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use confab_codec::{Body, Frame, RoomId, Seq, StartAt};
use futures_util::StreamExt;

use super::{now_ns, paced_publishes, payload, Knobs};
use crate::client::{
    connect, connect_via, connect_with, handshake, Dial, Incoming, Reader, Writer,
};
use crate::report::{histogram, Latency, Point, Row};
use crate::scenarios::shape::{
    rooms_open_loop, ChannelSender, Collector, Dispatch, RoomsOutcome, RoomsShape, Windows,
};

fn room(name: &str) -> anyhow::Result<RoomId> {
    Ok(RoomId::new(name)?)
}

/// Closed-loop publish throughput over `dial`: `conns` connections, each
/// keeping `window` publishes in flight, to `rooms` rooms. Counts
/// acknowledgements.
///
/// # Errors
/// If a connection fails.
pub async fn publish(
    dial: &Dial,
    conns: usize,
    window: usize,
    size: usize,
    rooms: usize,
    k: &Knobs,
) -> anyhow::Result<f64> {
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (acked, stop, dial) = (acked.clone(), stop.clone(), dial.clone());
        let room_ids: Vec<RoomId> = (0..rooms.max(1))
            .map(|r| room(&format!("pub-{}", (c + r * conns) % rooms.max(1))))
            .collect::<anyhow::Result<_>>()?;
        tasks.push(tokio::spawn(async move {
            let (mut rd, mut wr) = connect_via(&dial, &format!("pub{c}"), "bench").await?;
            let mut outstanding = 0usize;
            let mut cmid = 0u64;
            while !stop.load(Ordering::Relaxed) {
                while outstanding < window {
                    cmid += 1;
                    let r = &room_ids[cmid as usize % room_ids.len()];
                    wr.queue_publish(r, cmid, payload(size, now_ns()))?;
                    outstanding += 1;
                }
                wr.flush().await?;
                // Read at least half a window of acks before refilling.
                while outstanding > window / 2 {
                    match rd.next().await? {
                        Some(Incoming::PublishAck) => {
                            outstanding -= 1;
                            acked.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {}
                        None => anyhow::bail!("broker closed the connection"),
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    tokio::time::sleep(k.warmup).await;
    let a0 = acked.load(Ordering::Relaxed);
    let t0 = Instant::now();
    tokio::time::sleep(k.duration).await;
    let rate = (acked.load(Ordering::Relaxed) - a0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        // A task that ended already failed: report why.
        if t.is_finished() {
            t.await??;
        } else {
            t.abort();
        }
    }
    Ok(rate)
}

/// One publisher to `subs` subscriber connections in one room, publishing
/// as fast as acknowledgements allow. Returns deliveries per second and
/// the publish rate.
pub async fn fanout(
    addr: SocketAddr,
    subs: usize,
    window: usize,
    size: usize,
    k: &Knobs,
) -> anyhow::Result<(f64, f64)> {
    let name = format!("fan-{subs}-{}", now_ns());
    let r = room(&name)?;
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    // Thousands of subscribers: smaller read buffers (they grow as needed).
    let read_buf = if subs > 1000 { 16 << 10 } else { 256 << 10 };
    for s in 0..subs {
        let (mut rd, mut wr) =
            connect_with(&Dial::Tcp(addr), &format!("sub{s}"), "bench", read_buf)
                .await
                .with_context(|| format!("subscriber {s}"))?;
        wr.queue_subscribe(std::slice::from_ref(&r), StartAt::Live)?;
        wr.flush().await?;
        rd.wait_subscribed().await?;
        let delivered = delivered.clone();
        readers.push(tokio::spawn(async move {
            let _keep = wr;
            while let Some(msg) = rd.next().await? {
                if let Incoming::Events { stamps, .. } = msg {
                    delivered.fetch_add(stamps.len() as u64, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (published, stop, r) = (published.clone(), stop.clone(), r.clone());
        tokio::spawn(async move {
            let (mut rd, mut wr) = connect(addr, "fan-publisher", "bench").await?;
            let mut outstanding = 0;
            let mut cmid = 0;
            while !stop.load(Ordering::Relaxed) {
                while outstanding < window {
                    cmid += 1;
                    wr.queue_publish(&r, cmid, payload(size, now_ns()))?;
                    outstanding += 1;
                }
                wr.flush().await?;
                while outstanding > window / 2 {
                    if let Some(Incoming::PublishAck) = rd.next().await? {
                        outstanding -= 1;
                        published.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(k.warmup).await;
    let (d0, p0) = (
        delivered.load(Ordering::Relaxed),
        published.load(Ordering::Relaxed),
    );
    let t0 = Instant::now();
    tokio::time::sleep(k.duration).await;
    let secs = t0.elapsed().as_secs_f64();
    let rate = (delivered.load(Ordering::Relaxed) - d0) as f64 / secs;
    let pub_rate = (published.load(Ordering::Relaxed) - p0) as f64 / secs;
    stop.store(true, Ordering::Relaxed);
    publisher.abort();
    for r in readers {
        r.abort();
    }
    Ok((rate, pub_rate))
}

/// Open-loop latency: one publisher sends at `rate` msgs/s on a fixed
/// schedule; `subs` subscribers record, for every message, the time from
/// its *intended* send time to its arrival (so a stalled sender cannot hide
/// latency: no coordinated omission).
pub async fn latency(
    addr: SocketAddr,
    rate: f64,
    subs: usize,
    size: usize,
    k: &Knobs,
) -> anyhow::Result<(f64, Latency, Option<String>)> {
    let r = room(&format!("lat-{}", now_ns()))?;
    let hist = Arc::new(Mutex::new(histogram()));
    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let mut readers = Vec::new();
    for s in 0..subs {
        let (mut rd, mut wr) = connect(addr, &format!("lat{s}"), "bench").await?;
        wr.queue_subscribe(std::slice::from_ref(&r), StartAt::Live)?;
        wr.flush().await?;
        rd.wait_subscribed().await?;
        readers.push(record_latencies(rd, wr, &hist, &measure_from));
    }
    let interval_ns = 1e9 / rate;
    let start = now_ns();
    let warm_end = start + k.warmup.as_nanos() as u64;
    let end = warm_end + k.duration.as_nanos() as u64;
    measure_from.store(warm_end, Ordering::Relaxed);
    let pacer = {
        let r = r.clone();
        std::thread::Builder::new()
            .name("lat-publisher".into())
            .spawn(move || paced_publisher(addr, r, size, start, end, interval_ns))?
    };
    finish_latency(pacer, readers, &hist, warm_end - start, interval_ns, k).await
}

/// A latency subscriber: records, for every message that arrives, the time
/// since its stamped intended send time into `hist` (messages stamped
/// before `measure_from` are warm-up and not recorded). `wr` is kept so the
/// connection stays open.
pub(crate) fn record_latencies(
    mut rd: Reader,
    wr: Writer,
    hist: &Arc<Mutex<hdrhistogram::Histogram<u64>>>,
    measure_from: &Arc<AtomicU64>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let (hist, measure_from) = (hist.clone(), measure_from.clone());
    tokio::spawn(async move {
        let _keep = wr;
        // Flushed every 1,024 samples and when dropped: the task is
        // aborted at the end, and the last samples must count too.
        let mut local = LocalHist {
            local: histogram(),
            n: 0,
            hist,
        };
        while let Some(msg) = rd.next().await? {
            if let Incoming::Events { stamps, .. } = msg {
                let now = now_ns();
                let from = measure_from.load(Ordering::Relaxed);
                for s in stamps {
                    if s >= from {
                        local.local.saturating_record(now.saturating_sub(s).max(1));
                        local.n += 1;
                    }
                }
                if local.n >= 1024 {
                    local.flush();
                }
            }
        }
        anyhow::Ok(())
    })
}

/// Ends an open-loop latency run: waits for the publisher thread (which
/// returns how many it sent), lets the tail arrive, stops the subscribers,
/// and returns the rate achieved after the warm-up (`warmup_ns` of the
/// schedule) and the latency histogram.
pub(crate) async fn finish_latency(
    pacer: std::thread::JoinHandle<anyhow::Result<u64>>,
    readers: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    hist: &Mutex<hdrhistogram::Histogram<u64>>,
    warmup_ns: u64,
    interval_ns: f64,
    k: &Knobs,
) -> anyhow::Result<(f64, Latency, Option<String>)> {
    let sent = tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
    // Let the tail arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let subs = readers.len().max(1) as u64;
    for r in &readers {
        r.abort();
    }
    for r in readers {
        let _ = r.await;
    }
    let measured = sent.saturating_sub(super::warmup_messages(warmup_ns, interval_ns));
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    let lat = Latency::from_ns(&h);
    Ok(delivered(measured, subs, lat, k))
}

/// What an open-loop latency run achieved, counted the same way for every
/// system: `measured` messages sent after the warm-up to `subs`
/// subscribers each, of which `lat.count` deliveries arrived. The rate is
/// the delivery rate per subscriber (not the send rate), and any shortfall
/// is a note on the row.
pub(crate) fn delivered(
    measured: u64,
    subs: u64,
    lat: Latency,
    k: &Knobs,
) -> (f64, Latency, Option<String>) {
    let expected = measured * subs.max(1);
    let achieved = lat.count as f64 / subs.max(1) as f64 / k.duration.as_secs_f64();
    let note = (lat.count < expected).then(|| {
        format!(
            "SHORT: {} of {expected} deliveries missing 0.5 s after the last send",
            expected - lat.count
        )
    });
    (achieved, lat, note)
}

/// A subscriber's own histogram, added to the shared one now and then and
/// when dropped.
struct LocalHist {
    local: hdrhistogram::Histogram<u64>,
    n: u64,
    hist: Arc<Mutex<hdrhistogram::Histogram<u64>>>,
}

impl LocalHist {
    fn flush(&mut self) {
        if let Ok(mut h) = self.hist.lock() {
            h.add(&self.local).ok();
        }
        self.local.reset();
        self.n = 0;
    }
}

impl Drop for LocalHist {
    fn drop(&mut self) {
        self.flush();
    }
}

/// The open-loop sender: a dedicated OS thread with a blocking socket that
/// sleeps until the next message is due (instead of spinning, which would
/// steal a core from the broker on a 2-core machine) and then sends every
/// message that is due, each stamped with its intended send time.
fn paced_publisher(
    addr: SocketAddr,
    room: RoomId,
    size: usize,
    start: u64,
    end: u64,
    interval_ns: f64,
) -> anyhow::Result<u64> {
    use std::io::{Read, Write};

    use bytes::BytesMut;
    use confab_codec::{DeviceId, Frame, Hello};

    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::new();
    Frame::request(
        1,
        Hello {
            min_version: 1,
            max_version: 1,
            token: "lat-publisher:bench".into(),
            device: DeviceId::new("bench")?,
            client_name: "confab-bench".into(),
            resume: vec![],
            features: Default::default(),
        },
    )
    .encode(&mut out)?;
    stream.write_all(&out)?;
    out.clear();
    // Acks (and the Welcome) are read and dropped by a helper thread so
    // they never delay a send.
    let mut reader = stream.try_clone()?;
    // Bounded: the broker closes after the half-close below, but a wedged
    // run must still end.
    reader.set_read_timeout(Some(Duration::from_secs(5)))?;
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    let sent = paced_publishes(&room, size, start, end, interval_ns, |frames| {
        stream.write_all(frames)?;
        Ok(())
    })?;
    // Half-close, then read the acks to the end: the broker reads every
    // publish sent before the FIN. Closing both ways with acks unread
    // would reset the connection, and the reset drops whatever publishes
    // the broker had not read yet: a shortfall of the load generator's
    // making, not the broker's.
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = drain.join();
    Ok(sent)
}

/// What a replay measured.
#[derive(Debug)]
pub struct ReplayOutcome {
    /// Messages per second.
    pub rate: f64,
    /// Bytes the reader took off the wire per message replayed.
    pub wire_bytes_per_msg: f64,
    /// Broker CPU time per message replayed, us.
    pub server_us: Option<f64>,
}

/// Catch-up replay speed: fills a room with `count` messages, then times a
/// new subscriber reading them all from sequence 1, and counts the bytes it
/// read and the broker's CPU time (`cpu`) meanwhile.
pub async fn replay(
    addr: SocketAddr,
    count: u64,
    size: usize,
    cpu: &(dyn Fn() -> Option<f64> + Sync),
) -> anyhow::Result<ReplayOutcome> {
    let r = room(&format!("replay-{}", now_ns()))?;
    let (mut rd, mut wr) = connect(addr, "replay-writer", "bench").await?;
    let mut outstanding = 0u64;
    let mut sent = 0u64;
    while sent < count || outstanding > 0 {
        while sent < count && outstanding < 2048 {
            sent += 1;
            wr.queue_publish(&r, sent, payload(size, 0))?;
            outstanding += 1;
        }
        wr.flush().await?;
        if let Some(Incoming::PublishAck) = rd.next().await? {
            outstanding -= 1;
        }
    }
    let (mut rd, mut wr) = connect(addr, "replay-reader", "bench").await?;
    let (w0, c0) = (crate::client::wire_bytes_read(), cpu());
    let t0 = Instant::now();
    wr.queue_subscribe(std::slice::from_ref(&r), StartAt::From(Seq(1)))?;
    wr.flush().await?;
    let mut got = 0u64;
    while got < count {
        match rd.next().await? {
            Some(Incoming::Events { stamps, .. }) => got += stamps.len() as u64,
            Some(_) => {}
            None => anyhow::bail!("closed during replay"),
        }
    }
    let rate = count as f64 / t0.elapsed().as_secs_f64();
    let (w1, c1) = (crate::client::wire_bytes_read(), cpu());
    Ok(ReplayOutcome {
        rate,
        wire_bytes_per_msg: (w1 - w0) as f64 / count.max(1) as f64,
        server_us: c0.zip(c1).map(|(a, b)| (b - a) * 1e6 / count.max(1) as f64),
    })
}

/// Connects `n` devices, `parallel` at a time; device `i` is user
/// `{user}{i}` and subscribes (from now on) to `rooms(i)`. The read buffers
/// start at `read_buf` bytes.
async fn connect_many(
    addr: SocketAddr,
    n: usize,
    parallel: usize,
    user: &str,
    read_buf: usize,
    rooms: impl Fn(usize) -> Vec<RoomId>,
) -> anyhow::Result<Vec<(usize, Reader, Writer)>> {
    let rooms = &rooms;
    let done: Vec<anyhow::Result<(usize, Reader, Writer)>> = futures_util::stream::iter(0..n)
        .map(|i| async move {
            let (mut rd, mut wr) =
                connect_with(&Dial::Tcp(addr), &format!("{user}{i}"), "bench", read_buf)
                    .await
                    .with_context(|| format!("connection {i}"))?;
            let mine = rooms(i);
            if !mine.is_empty() {
                wr.queue_subscribe(&mine, StartAt::Live)?;
                wr.flush().await?;
                rd.wait_subscribed().await?;
            }
            anyhow::Ok((i, rd, wr))
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    done.into_iter().collect()
}

/// The `rooms` scenario: every device of `shape` is one connection that
/// subscribes to all its rooms; publishers publish to their rooms from
/// that same connection. Open loop at `rate` msgs/s over all publishers,
/// publish-to-deliver latency from the intended send time.
pub async fn rooms(
    addr: SocketAddr,
    shape: Arc<RoomsShape>,
    rate: f64,
    size: usize,
    k: &Knobs,
    cpu: &(dyn Fn() -> Option<f64> + Sync),
) -> anyhow::Result<RoomsOutcome> {
    let collector = Collector::new();
    let ids: Arc<Vec<RoomId>> = Arc::new(
        (0..shape.members.len())
            .map(|r| room(&format!("room-{r}")))
            .collect::<anyhow::Result<_>>()?,
    );
    let t0 = Instant::now();
    let devices = shape.rooms_of.len();
    let connected = connect_many(addr, devices, 32, "dev", 16 << 10, |d| {
        shape.rooms_of[d]
            .iter()
            .map(|&r| ids[r as usize].clone())
            .collect()
    })
    .await?;
    let setup_s = t0.elapsed().as_secs_f64();
    let mut tasks = Vec::new();
    let mut outs = vec![None; devices];
    // The write halves of devices that do not publish: dropping one would
    // shut the socket's write side, and the broker would end the session.
    let mut idle = Vec::new();
    for (d, mut rd, mut wr) in connected {
        let col = collector.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(msg) = rd.next().await? {
                if let Incoming::Events { stamps, .. } = msg {
                    col.record(d, stamps);
                }
            }
            anyhow::bail!("broker closed the connection")
        }));
        if d < shape.publishers {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<(u32, u64)>>();
            outs[d] = Some(tx);
            let ids = ids.clone();
            tasks.push(tokio::spawn(async move {
                let mut cmid = 0u64;
                while let Some(batch) = rx.recv().await {
                    for (r, s) in batch {
                        cmid += 1;
                        wr.queue_publish(&ids[r as usize], cmid, payload(size, s))?;
                    }
                    wr.flush().await?;
                }
                anyhow::Ok(())
            }));
        } else {
            idle.push(wr);
        }
    }
    let mut sender = ChannelSender {
        dispatch: Dispatch::new(shape.clone(), collector.clone()),
        outs,
    };
    let (w0, d0) = (
        crate::client::wire_bytes_read(),
        collector.delivered.load(Ordering::Relaxed),
    );
    let mut out = rooms_open_loop(rate, k, &collector, &mut sender, setup_s, cpu).await;
    let (w1, d1) = (
        crate::client::wire_bytes_read(),
        collector.delivered.load(Ordering::Relaxed),
    );
    if let Ok(o) = &mut out {
        // Everything the devices read (events, and the publishers' acks)
        // per event delivered, over the same span.
        o.wire_bytes = (d1 > d0).then(|| (w1 - w0) as f64 / (d1 - d0) as f64);
    }
    let early = crate::peers::reap("device tasks", tasks).await;
    drop((sender, idle));
    let mut out = out?;
    out.notes = crate::peers::notes([out.notes, early]);
    Ok(out)
}

/// `n` idle connections, each subscribed to a personal room and to a room
/// shared by 10 connections, `parallel` connecting at a time. Returns the
/// connect rate (TCP connect + handshake + subscribe acknowledged, per
/// second) and the broker's RSS growth in KiB (from `rss`), measured
/// `settle` after the last connection.
pub async fn connections(
    addr: SocketAddr,
    n: usize,
    parallel: usize,
    settle: Duration,
    rss: impl Fn() -> Option<u64>,
) -> anyhow::Result<(f64, i64)> {
    let rss0 = rss().unwrap_or(0) as i64;
    let t0 = Instant::now();
    let held = connect_many(addr, n, parallel, "idle", 4 << 10, |i| {
        [format!("user-{i}"), format!("group-{}", i / 10)]
            .iter()
            .filter_map(|r| room(r).ok())
            .collect()
    })
    .await?;
    let rate = n as f64 / t0.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let rss1 = rss().unwrap_or(0) as i64;
    drop(held);
    Ok((rate, rss1 - rss0))
}

/// What the slow-consumer run saw.
#[derive(Debug)]
pub struct SlowOutcome {
    /// One point per window.
    pub points: Vec<Point>,
    /// Publishes per second achieved.
    pub achieved: f64,
    /// Deliveries per second to the subscribers that read.
    pub deliveries: f64,
    /// What became of the slow consumer, if there was one.
    pub slow: Option<String>,
}

/// The slow-consumer scenario: `members` connections in one room; with
/// `slow_one`, one of them never reads its socket after subscribing (and
/// has a 4 KiB receive buffer). One publisher at `rate` msgs/s for
/// `seconds`. Records the reading subscribers' latency per `window` (by
/// intended send time) and the broker's RSS (from `rss`) at the end of
/// each window.
#[allow(clippy::too_many_arguments)]
pub async fn slow(
    addr: SocketAddr,
    members: usize,
    slow_one: bool,
    rate: f64,
    size: usize,
    seconds: Duration,
    window: Duration,
    rss: impl Fn() -> Option<u64>,
) -> anyhow::Result<SlowOutcome> {
    let r = room("slow-room")?;
    // The slow one: a tiny receive buffer, so its backlog lands in the broker.
    let mut slow_rd = None;
    if slow_one {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let stream = socket.connect(addr).await.context("slow consumer")?;
        let (mut rd, mut wr) = handshake(stream, "slowpoke", "bench", 64 << 10).await?;
        wr.queue_subscribe(std::slice::from_ref(&r), StartAt::Live)?;
        wr.flush().await?;
        rd.wait_subscribed().await?;
        slow_rd = Some((rd, wr));
    }
    let readers_n = members.saturating_sub(usize::from(slow_one));
    let conns = connect_many(addr, readers_n, 32, "member", 64 << 10, |_| vec![r.clone()]).await?;
    let count = (seconds.as_secs_f64() / window.as_secs_f64()).ceil() as usize;
    let t0 = now_ns() + 200_000_000;
    let windows = Windows::new(t0, window, count);
    let mut readers = Vec::new();
    for (_, mut rd, wr) in conns {
        let w = windows.clone();
        readers.push(tokio::spawn(async move {
            let _keep = wr;
            while let Some(msg) = rd.next().await? {
                if let Incoming::Events { stamps, .. } = msg {
                    w.record(&stamps);
                }
            }
            anyhow::Ok(())
        }));
    }
    let end = t0 + seconds.as_nanos() as u64;
    let interval_ns = 1e9 / rate;
    let pacer = {
        let r = r.clone();
        std::thread::Builder::new()
            .name("slow-publisher".into())
            .spawn(move || paced_publisher(addr, r, size, t0, end, interval_ns))?
    };
    let mut rss_at = Vec::with_capacity(count);
    for i in 1..=count {
        let due = t0 + (i as u64) * window.as_nanos() as u64;
        tokio::time::sleep(Duration::from_nanos(due.saturating_sub(now_ns()))).await;
        rss_at.push(rss().unwrap_or(0));
    }
    let sent = tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut ended = 0;
    for r in &readers {
        if r.is_finished() {
            ended += 1;
        }
        r.abort();
    }
    let lats = windows.latencies();
    let w_s = window.as_secs_f64();
    let mut delivered = 0;
    let points = lats
        .iter()
        .zip(&rss_at)
        .enumerate()
        .map(|(i, (l, &kib))| {
            delivered += l.count;
            let some = |v: f64| (l.count > 0).then_some(v);
            Point {
                t_s: (i + 1) as f64 * w_s,
                p50_us: some(l.p50_us),
                p99_us: some(l.p99_us),
                max_us: some(l.max_us),
                deliveries: l.count,
                rss_mib: kib as f64 / 1024.0,
            }
        })
        .collect();
    let secs = seconds.as_secs_f64();
    // What became of the slow consumer: drain what reached its socket
    // until the broker's close, or until nothing more comes for 1 s.
    let mut slow = None;
    if let Some((mut rd, _wr)) = slow_rd {
        let mut got = 0u64;
        let mut fate = "still connected after the run".to_string();
        loop {
            match tokio::time::timeout(Duration::from_secs(1), rd.next()).await {
                Ok(Ok(Some(Incoming::Events { stamps, .. }))) => got += stamps.len() as u64,
                Ok(Ok(Some(Incoming::Other(Frame {
                    body: Body::Goodbye(g),
                    ..
                })))) => {
                    fate = format!("Goodbye {:?}: {}", g.code, g.message);
                    break;
                }
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) | Ok(Err(_)) => {
                    fate = "disconnected by the broker".into();
                    break;
                }
                Err(_) => break,
            }
        }
        slow = Some(format!(
            "slow consumer: {fate}; {got} of {sent} msgs had reached its socket"
        ));
    }
    if ended > 0 {
        let note = format!("{ended} reading subscribers ended early");
        slow = Some(match slow {
            Some(s) => format!("{s}; {note}"),
            None => note,
        });
    }
    Ok(SlowOutcome {
        points,
        achieved: sent as f64 / secs,
        deliveries: delivered as f64 / secs,
        slow,
    })
}

/// Builds a row.
pub fn row(scenario: &str, params: String, rate: f64, unit: &str) -> Row {
    Row::new(scenario, "confab", params, rate, unit)
}
