//! The scenarios against Confab.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use confab_codec::{RoomId, Seq, StartAt};

use super::{now_ns, payload, Knobs};
use crate::client::{connect, Incoming};
use crate::report::{histogram, Latency, Row};

fn room(name: &str) -> anyhow::Result<RoomId> {
    Ok(RoomId::new(name)?)
}

/// Closed-loop publish throughput: `conns` connections, each keeping
/// `window` publishes in flight, to `rooms` rooms. Counts acknowledgements.
pub async fn publish(
    addr: SocketAddr,
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
        let acked = acked.clone();
        let stop = stop.clone();
        let room_ids: Vec<RoomId> = (0..rooms)
            .map(|r| room(&format!("pub-{}", (c + r * conns) % rooms.max(1))))
            .collect::<anyhow::Result<_>>()?;
        tasks.push(tokio::spawn(async move {
            let (mut rd, mut wr) = connect(addr, &format!("pub{c}"), "bench").await?;
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
        t.abort();
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
    for s in 0..subs {
        let (mut rd, mut wr) = connect(addr, &format!("sub{s}"), "bench")
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
) -> anyhow::Result<(f64, Latency)> {
    let r = room(&format!("lat-{}", now_ns()))?;
    let hist = Arc::new(Mutex::new(histogram()));
    let received = Arc::new(AtomicU64::new(0));
    let measure_from = Arc::new(AtomicU64::new(u64::MAX));
    let mut readers = Vec::new();
    for s in 0..subs {
        let (mut rd, mut wr) = connect(addr, &format!("lat{s}"), "bench").await?;
        wr.queue_subscribe(std::slice::from_ref(&r), StartAt::Live)?;
        wr.flush().await?;
        rd.wait_subscribed().await?;
        let (hist, received, measure_from) = (hist.clone(), received.clone(), measure_from.clone());
        readers.push(tokio::spawn(async move {
            let _keep = wr;
            let mut local = histogram();
            let mut n = 0u64;
            while let Some(msg) = rd.next().await? {
                if let Incoming::Events { stamps, .. } = msg {
                    let now = now_ns();
                    let from = measure_from.load(Ordering::Relaxed);
                    for s in stamps {
                        if s >= from {
                            local.saturating_record(now.saturating_sub(s).max(1));
                            n += 1;
                        }
                    }
                    if n >= 1024 {
                        if let Ok(mut h) = hist.lock() {
                            h.add(&local).ok();
                        }
                        received.fetch_add(n, Ordering::Relaxed);
                        local.reset();
                        n = 0;
                    }
                }
            }
            if let Ok(mut h) = hist.lock() {
                h.add(&local).ok();
            }
            received.fetch_add(n, Ordering::Relaxed);
            anyhow::Ok(())
        }));
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
    let sent = tokio::task::spawn_blocking(move || pacer.join())
        .await?
        .map_err(|_| anyhow::anyhow!("publisher thread panicked"))??;
    // Let the tail arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in &readers {
        r.abort();
    }
    for r in readers {
        let _ = r.await;
    }
    let measured = sent.saturating_sub(((warm_end - start) as f64 / interval_ns) as u64);
    let achieved = measured as f64 / k.duration.as_secs_f64();
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?;
    Ok((achieved, Latency::from_ns(&h)))
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
    use confab_codec::{DeviceId, Frame, Hello, MessageKind, Publish};

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
        },
    )
    .encode(&mut out)?;
    stream.write_all(&out)?;
    out.clear();
    // Acks (and the Welcome) are read and dropped by a helper thread so
    // they never delay a send.
    let mut reader = stream.try_clone()?;
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
    });
    let mut sent = 0u64;
    loop {
        let now = now_ns();
        if now >= end {
            break;
        }
        let due = ((now - start) as f64 / interval_ns) as u64;
        while sent < due {
            let intended = start + (sent as f64 * interval_ns) as u64;
            sent += 1;
            Frame::request(
                (sent as u32).max(2),
                Publish {
                    room: room.clone(),
                    client_msg_id: sent,
                    kind: MessageKind::MESSAGE,
                    refers_to: None,
                    thread: None,
                    payload: payload(size, intended),
                },
            )
            .encode(&mut out)?;
        }
        if !out.is_empty() {
            stream.write_all(&out)?;
            out.clear();
        }
        let next = start + (sent as f64 * interval_ns) as u64;
        let wait = next.saturating_sub(now_ns());
        if wait > 20_000 {
            std::thread::sleep(Duration::from_nanos(wait - 10_000));
        } else {
            std::thread::yield_now();
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = drain.join();
    Ok(sent)
}

/// Catch-up replay speed: fills a room with `count` messages, then times a
/// new subscriber reading them all from sequence 1.
pub async fn replay(addr: SocketAddr, count: u64, size: usize) -> anyhow::Result<f64> {
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
    Ok(count as f64 / t0.elapsed().as_secs_f64())
}

/// Builds a row.
pub fn row(scenario: &str, params: String, rate: f64, unit: &str) -> Row {
    Row {
        scenario: scenario.into(),
        system: "confab".into(),
        params,
        rate,
        unit: unit.into(),
        offered: None,
        latency: None,
        notes: String::new(),
    }
}
