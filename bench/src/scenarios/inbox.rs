//! `inbox`: a device in many rooms comes back after some of them changed.
//! How long, and how many bytes, until it is up to date: one inbox sync
//! (protocol version 2) plus the new messages of the changed rooms, beside
//! subscribing again to every room from its cursor (what a version 1
//! client does). Bytes are counted by a proxy between the device and the
//! broker, both directions, TLS-free TCP.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use confab_client::confab_codec::{DeviceId, JoinPolicy, RoomId, Seq, UserId};
use confab_client::{Client, ClientConfig, CursorStore, MemoryCursorStore};
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::proxy::Proxy;
use crate::report::Row;
use crate::target::BrokerProc;
use crate::{Ctx, Out};

/// `inbox` settings.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Rooms the device is a member of.
    #[arg(long, default_value_t = 10_000)]
    pub rooms: usize,
    /// Rooms that get new messages while the device is away.
    #[arg(long, default_value_t = 50)]
    pub changed: usize,
    /// New messages per changed room.
    #[arg(long, default_value_t = 3)]
    pub messages: usize,
}

impl Args {
    /// The suite's settings.
    pub fn suite(quick: bool) -> Args {
        Args {
            rooms: if quick { 2_000 } else { 10_000 },
            changed: 50,
            messages: 3,
        }
    }

    /// Runs planned: the two ways of catching up.
    pub(crate) fn plan(&self, ctx: &Ctx) -> usize {
        2 * usize::from(ctx.confab())
    }
}

fn config(addr: SocketAddr, user: &str, store: Option<Arc<MemoryCursorStore>>) -> ClientConfig {
    let mut c = ClientConfig::with_endpoint(
        confab_client::Endpoint::tcp(addr),
        format!("{user}:d"),
        DeviceId::new("d").expect("a valid device id"),
    );
    c.request_timeout = Duration::from_secs(120);
    c.connect_timeout = Duration::from_secs(10);
    if let Some(store) = store {
        c.cursor_store = store;
    }
    c
}

fn room(i: usize) -> RoomId {
    RoomId::new(format!("inbox-{i:05}")).expect("a valid room id")
}

/// What the device knew when it went away.
struct Away {
    /// Each room's head then.
    heads: HashMap<RoomId, Seq>,
    /// The inbox cursor then.
    cursor: u64,
    /// The rooms that changed, with their heads now.
    changed: Vec<(RoomId, Seq)>,
}

/// The device (`dev`) creates `rooms` rooms inviting `alice`, syncs once,
/// goes away; `alice` joins `changed` of them and posts `messages` in each.
async fn prepare(addr: SocketAddr, a: &Args) -> anyhow::Result<Away> {
    let dev = Client::connect(config(addr, "dev", None)).await?;
    let alice_id = UserId::new("alice")?;
    stream::iter(0..a.rooms)
        .map(|i| {
            let dev = &dev;
            let alice_id = alice_id.clone();
            async move {
                dev.create_group(Some(room(i)), "r", JoinPolicy::InviteOnly, vec![alice_id])
                    .await
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .context("creating the rooms")?;
    let before = dev.sync_inbox(0).await?;
    if before.rooms.len() != a.rooms {
        bail!(
            "the first sync reported {} rooms, not {}",
            before.rooms.len(),
            a.rooms
        );
    }
    let heads = before
        .rooms
        .iter()
        .map(|r| (r.room.clone(), r.head))
        .collect();
    dev.close().await;

    let alice = Client::connect(config(addr, "alice", None)).await?;
    // Spread over the id range.
    let step = (a.rooms / a.changed.max(1)).max(1);
    let mut changed = Vec::new();
    for i in (0..a.rooms).step_by(step).take(a.changed) {
        alice.join(room(i)).await?;
        let mut head = Seq(0);
        for m in 0..a.messages {
            head = alice
                .publish(room(i), format!("message {m} while you were away"))
                .await?
                .seq;
        }
        changed.push((room(i), head));
    }
    alice.close().await;
    Ok(Away {
        heads,
        cursor: before.cursor,
        changed,
    })
}

/// One inbox sync, then the new entries of each changed room from history.
async fn by_inbox(addr: SocketAddr, away: &Away) -> anyhow::Result<usize> {
    let dev = Client::connect(config(addr, "dev", None)).await?;
    let sync = dev.sync_inbox(away.cursor).await?;
    let got = stream::iter(sync.rooms.iter())
        .map(|r| {
            let dev = &dev;
            let from = away.heads.get(&r.room).map_or(1, |s| s.0 + 1);
            async move { dev.history(r.room.clone(), from..=r.head.0).await }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await?;
    let entries: usize = got.iter().map(Vec::len).sum();
    dev.close().await;
    if sync.rooms.len() != away.changed.len() {
        bail!(
            "the inbox sync reported {} rooms, {} changed",
            sync.rooms.len(),
            away.changed.len()
        );
    }
    Ok(entries)
}

/// Every room subscribed again from its cursor + 1 (the SDK's resume),
/// until every subscription is acknowledged and the new entries of the
/// changed rooms are in.
async fn by_resubscribing(addr: SocketAddr, away: &Away) -> anyhow::Result<usize> {
    let store = Arc::new(MemoryCursorStore::new());
    for (room, head) in &away.heads {
        store.set(room, *head);
    }
    let dev = Client::connect(config(addr, "dev", Some(store))).await?;
    let rooms: Vec<RoomId> = away.heads.keys().cloned().collect();
    let subs = stream::iter(rooms)
        .map(|r| {
            let dev = &dev;
            async move { dev.subscribe(r).await }
        })
        .buffer_unordered(256)
        .try_collect::<Vec<_>>()
        .await?;
    let wanted: HashMap<&RoomId, Seq> = away.changed.iter().map(|(r, s)| (r, *s)).collect();
    let mut entries = 0;
    let mut waiting: Vec<_> = subs
        .into_iter()
        .filter(|s| wanted.contains_key(s.room()))
        .collect();
    for sub in &mut waiting {
        let head = wanted[sub.room()];
        loop {
            let ev = sub.next().await.context("subscription ended")??;
            entries += 1;
            if ev.seq >= head {
                break;
            }
        }
    }
    dev.close().await;
    Ok(entries)
}

/// Runs both ways on one broker.
pub(crate) async fn run(ctx: &Ctx, out: &mut Out, a: &Args) {
    if !ctx.confab() {
        return;
    }
    let budget = ctx.budget(Duration::from_secs(120 + a.rooms as u64 / 50));
    let broker = match BrokerProc::start(&ctx.opts("wal")).await {
        Ok(b) => b,
        Err(e) => {
            ctx.progress
                .say(format!("inbox: the broker did not start: {e:#}"));
            return;
        }
    };
    let started = Instant::now();
    let away = match tokio::time::timeout(budget, prepare(broker.addr, a)).await {
        Ok(Ok(away)) => away,
        Ok(Err(e)) => {
            ctx.progress.say(format!("inbox: setup failed: {e:#}"));
            return;
        }
        Err(_) => {
            ctx.progress.say("inbox: setup timed out");
            return;
        }
    };
    let setup_s = started.elapsed().as_secs_f64();
    let expected = a.changed * a.messages;
    for (system, how) in [("confab-inbox-sync", true), ("confab-resubscribe", false)] {
        let params = format!(
            "{} rooms, {} changed x {} msgs, wal",
            a.rooms, a.changed, a.messages
        );
        let addr = broker.addr;
        let away = &away;
        ctx.run_one(out, "inbox", system, params.clone(), budget, async move {
            let proxy = Proxy::start(addr).await?;
            let t = Instant::now();
            let entries = if how {
                by_inbox(proxy.addr, away).await?
            } else {
                by_resubscribing(proxy.addr, away).await?
            };
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let (up, down) = proxy.bytes();
            if entries < expected {
                bail!("{entries} new entries received, {expected} expected");
            }
            let mut row = Row::new("inbox", system, params, ms, "ms");
            row.notes = format!(
                "{entries} entries; {} KiB up, {} KiB down",
                up / 1024,
                down / 1024
            );
            row.metrics.insert("bytes_up".into(), up as f64);
            row.metrics.insert("bytes_down".into(), down as f64);
            row.metrics.insert("entries".into(), entries as f64);
            row.metrics.insert("setup_s".into(), setup_s);
            Ok(row)
        })
        .await;
    }
}
