//! `resume`: N devices come back after being away while M messages were
//! posted in each of their rooms. Time until every device has every
//! message it missed, and bytes on the wire per delivered message (both
//! ways, counted by a proxy), for Confab (each device subscribes to its
//! rooms from its cursor + 1) and for NATS JetStream (each device has a
//! durable pull consumer filtered on its rooms' subjects, created before it
//! went away; on return it pulls until it has them all): the nearest peer
//! feature.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_nats::jetstream;
use confab_client::confab_codec::{DeviceId, RoomId, Seq};
use confab_client::{Client, ClientConfig, Endpoint};
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::proxy::Proxy;
use crate::peers::nats::{JsSync, NatsServer};
use crate::report::Row;
use crate::target::BrokerProc;
use crate::{Ctx, Out, PeerKind};

/// `resume` settings.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Devices that come back.
    #[arg(long, default_value_t = 100)]
    pub devices: usize,
    /// Rooms in all.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Rooms each device follows (at most `rooms`).
    #[arg(long, default_value_t = 10)]
    pub per_device: usize,
    /// Messages posted in each room while the devices are away.
    #[arg(long, default_value_t = 100)]
    pub messages: usize,
}

impl Args {
    /// The suite's settings.
    pub fn suite(quick: bool) -> Args {
        Args {
            devices: if quick { 50 } else { 100 },
            rooms: 100,
            per_device: 10,
            messages: if quick { 50 } else { 100 },
        }
    }

    /// Runs planned: Confab and, when available, JetStream.
    pub(crate) fn plan(&self, ctx: &Ctx) -> usize {
        usize::from(ctx.confab()) + ctx.available(&[PeerKind::NatsJs(JsSync::Default)]).len()
    }

    /// The rooms device `d` follows: `per_device` distinct ones spread
    /// over all.
    fn rooms_of(&self, d: usize) -> Vec<usize> {
        let per = self.per_device.clamp(1, self.rooms.max(1));
        let step = (self.rooms / per).max(1);
        (0..per).map(|j| (d + j * step) % self.rooms).collect()
    }

    fn deliveries(&self) -> usize {
        self.devices * self.per_device.clamp(1, self.rooms.max(1)) * self.messages
    }

    fn params(&self, size: usize) -> String {
        format!(
            "{} devices x {} rooms, {} msgs/room while away, {size} B",
            self.devices, self.per_device, self.messages
        )
    }
}

fn room(r: usize) -> RoomId {
    RoomId::new(format!("resume-{r:04}")).expect("a valid room id")
}

fn client_config(addr: std::net::SocketAddr, user: &str) -> ClientConfig {
    let mut c = ClientConfig::with_endpoint(
        Endpoint::tcp(addr),
        format!("{user}:d"),
        DeviceId::new("d").expect("a valid device id"),
    );
    c.request_timeout = Duration::from_secs(120);
    c.connect_timeout = Duration::from_secs(10);
    c
}

/// Confab: the messages are posted, then every device connects through
/// the proxy and subscribes to its rooms from seq 1 (its cursor + 1: it
/// had seen nothing), reading until each room's last message.
async fn confab_run(broker: &BrokerProc, a: &Args, size: usize) -> anyhow::Result<Row> {
    let publisher = Client::connect(client_config(broker.addr, "poster")).await?;
    let body = bytes::Bytes::from(vec![0x61u8; size]);
    stream::iter((0..a.messages).flat_map(|_| 0..a.rooms))
        .map(|r| publisher.publish(room(r), body.clone()))
        .buffer_unordered(512)
        .try_collect::<Vec<_>>()
        .await
        .context("posting")?;
    publisher.close().await;

    let proxy = Proxy::start(broker.addr).await?;
    let t = Instant::now();
    let head = Seq(a.messages as u64);
    let got = stream::iter(0..a.devices)
        .map(|d| {
            let addr = proxy.addr;
            async move {
                let dev = Client::connect(client_config(addr, &format!("dev{d}"))).await?;
                let mut n = 0usize;
                for r in a.rooms_of(d) {
                    let mut sub = dev.subscribe_from(room(r), Seq(1)).await?;
                    loop {
                        let ev = sub.next().await.context("subscription ended")??;
                        n += 1;
                        if ev.seq >= head {
                            break;
                        }
                    }
                }
                dev.close().await;
                anyhow::Ok(n)
            }
        })
        .buffer_unordered(a.devices.max(1))
        .try_fold(0usize, |acc, n| async move { Ok(acc + n) })
        .await?;
    let secs = t.elapsed().as_secs_f64();
    finish("confab", a, size, got, secs, &proxy)
}

/// JetStream: one file stream over every room's subject; a durable pull
/// consumer per device (filtered on its rooms, no acks: delivered is
/// done, as Confab's cursor), created before the messages are posted;
/// then every device connects through the proxy and pulls (batches of
/// 1,000) until it has them all.
async fn nats_run(server: &NatsServer, a: &Args, size: usize) -> anyhow::Result<Row> {
    let admin = jetstream::new(server.connect().await?);
    let stream = admin
        .create_stream(jetstream::stream::Config {
            name: "RESUME".into(),
            subjects: vec!["resume.>".into()],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("creating the stream: {e}"))?;
    for d in 0..a.devices {
        stream
            .create_consumer(jetstream::consumer::pull::Config {
                durable_name: Some(format!("dev{d}")),
                filter_subjects: a
                    .rooms_of(d)
                    .into_iter()
                    .map(|r| format!("resume.{r}"))
                    .collect(),
                ack_policy: jetstream::consumer::AckPolicy::None,
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating consumer dev{d}: {e}"))?;
    }
    let body = bytes::Bytes::from(vec![0x61u8; size]);
    // At most 1,024 acknowledgements outstanding (the context's own
    // in-flight limit would otherwise block the publisher).
    let mut inflight = std::collections::VecDeque::with_capacity(1024);
    for r in (0..a.messages).flat_map(|_| 0..a.rooms) {
        if inflight.len() >= 1024 {
            if let Some(ack) = inflight.pop_front() {
                let ack: jetstream::context::PublishAckFuture = ack;
                ack.await.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
            }
        }
        let ack = admin
            .publish(format!("resume.{r}"), body.clone())
            .await
            .map_err(|e| anyhow::anyhow!("publish: {e}"))?;
        inflight.push_back(ack);
    }
    for ack in inflight {
        ack.await.map_err(|e| anyhow::anyhow!("publish ack: {e}"))?;
    }

    let proxy = Proxy::start(server_addr(server)?).await?;
    let url = format!("nats://{}", proxy.addr);
    let per_device = a.per_device.clamp(1, a.rooms.max(1)) * a.messages;
    let t = Instant::now();
    let got = stream::iter(0..a.devices)
        .map(|d| {
            let url = url.clone();
            async move {
                let client = async_nats::connect(&url)
                    .await
                    .with_context(|| format!("connecting device {d}"))?;
                let js = jetstream::new(client);
                let stream = js
                    .get_stream("RESUME")
                    .await
                    .map_err(|e| anyhow::anyhow!("stream: {e}"))?;
                let consumer: jetstream::consumer::PullConsumer = stream
                    .get_consumer(&format!("dev{d}"))
                    .await
                    .map_err(|e| anyhow::anyhow!("consumer dev{d}: {e}"))?;
                // Batches of 1,000 (the client's default is 200): fewer
                // pull round trips.
                let mut messages = consumer
                    .stream()
                    .max_messages_per_batch(1_000)
                    .messages()
                    .await
                    .map_err(|e| anyhow::anyhow!("pull: {e}"))?;
                let mut n = 0usize;
                while n < per_device {
                    match messages.next().await {
                        Some(Ok(_)) => n += 1,
                        Some(Err(e)) => bail!("device {d} after {n}: {e}"),
                        None => bail!("device {d}: the pull ended after {n}"),
                    }
                }
                anyhow::Ok(n)
            }
        })
        .buffer_unordered(a.devices.max(1))
        .try_fold(0usize, |acc, n| async move { Ok(acc + n) })
        .await?;
    let secs = t.elapsed().as_secs_f64();
    finish("nats-js", a, size, got, secs, &proxy)
}

fn server_addr(server: &NatsServer) -> anyhow::Result<std::net::SocketAddr> {
    server
        .url
        .trim_start_matches("nats://")
        .parse()
        .context("the nats-server address")
}

fn finish(
    system: &str,
    a: &Args,
    size: usize,
    got: usize,
    secs: f64,
    proxy: &Proxy,
) -> anyhow::Result<Row> {
    let expected = a.deliveries();
    if got < expected {
        bail!("{got} messages delivered, {expected} expected");
    }
    let (up, down) = proxy.bytes();
    let per_msg = (up + down) as f64 / got.max(1) as f64;
    let mut row = Row::new("resume", system, a.params(size), secs * 1e3, "ms");
    row.notes = format!(
        "{got} msgs in {secs:.2} s ({:.0}/s); {per_msg:.0} B/msg on the wire ({} KiB up, {} KiB down)",
        got as f64 / secs.max(1e-9),
        up / 1024,
        down / 1024
    );
    row.metrics.insert("bytes_per_msg".into(), per_msg);
    row.metrics
        .insert("msgs_per_s".into(), got as f64 / secs.max(1e-9));
    row.metrics.insert("bytes_up".into(), up as f64);
    row.metrics.insert("bytes_down".into(), down as f64);
    Ok(row)
}

/// Runs Confab, then JetStream when available.
pub(crate) async fn run(ctx: &Ctx, out: &mut Out, a: &Args) {
    let size = ctx.size();
    let budget = ctx.budget(Duration::from_secs(60 + a.deliveries() as u64 / 2_000));
    let a = Arc::new(a.clone());
    if ctx.confab() {
        let a = a.clone();
        ctx.run_one(
            out,
            "resume",
            "confab",
            a.params(size),
            budget,
            async move {
                let broker = BrokerProc::start(&ctx.opts("wal")).await?;
                confab_run(&broker, &a, size).await
            },
        )
        .await;
    }
    for kind in ctx.available(&[PeerKind::NatsJs(JsSync::Default)]) {
        let a = a.clone();
        ctx.run_one(
            out,
            "resume",
            kind.system(),
            a.params(size),
            budget,
            async move {
                let server =
                    NatsServer::start(ctx.nats_bin()?, ctx.cpus(), Some(JsSync::Default)).await?;
                nats_run(&server, &a, size).await
            },
        )
        .await;
    }
}
