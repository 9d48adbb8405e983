//! `confab admin cluster`: what each node says about itself, and the
//! report the command prints.
//!
//! Each node answers requests on `<node subject>.status` ([`serve_status`])
//! with a [`NodeStatus`] in JSON: its advertised address, the live set as
//! it sees it, and the rooms it writes and follows, with the writer's head
//! and the last sequence handed to its fan-out (at most
//! [`MAX_STATUS_ROOMS`] rooms, with the counts of all). The request's body
//! is ignored. [`report`] reads the node bucket (keys, heartbeat ages),
//! asks every node listed there, reads each listed room's head from the
//! stream, and prints nodes and rooms with their lag (stream head minus
//! what the node handed on).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use confab_codec::RoomId;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::error::nats;
use super::forward::node_subject;
use super::room_log::ClusterLog;
use super::{ClusterError, JetStreamLog, LiveNodes, NodeId};
use crate::config::ClusterConfig;

/// Most rooms one node lists in its status (the first in room order; the
/// counts cover all). Keeps a reply far below NATS's 1 MiB payload limit:
/// a room id is at most 128 bytes, at most 6 times that escaped in JSON.
pub const MAX_STATUS_ROOMS: usize = 500;

/// Most nodes the report reads from the bucket.
const MAX_NODES: usize = 1_000;

/// How long the report waits for each node's answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// What a node says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its id.
    pub node: String,
    /// The address it advertises to devices.
    pub address: String,
    /// The live nodes as it sees them.
    pub live: Vec<String>,
    /// Rooms it has a writer for (all of them).
    pub writing: usize,
    /// Rooms it follows (all of them).
    pub following: usize,
    /// At most [`MAX_STATUS_ROOMS`] of those rooms, in room order.
    pub rooms: Vec<RoomStatus>,
}

/// One room a node writes or follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomStatus {
    /// The room id.
    pub room: String,
    /// Whether the node owns the room by its own view of the live set.
    pub owner: bool,
    /// Whether it has a writer for the room.
    pub writer: bool,
    /// The writer's head (absent when it has none, or an append was in
    /// flight).
    pub head: Option<u64>,
    /// The last sequence handed to its fan-out, if it follows the room.
    pub applied: Option<u64>,
}

/// What [`serve_status`] reads.
pub(crate) struct StatusSource {
    pub(crate) client: async_nats::Client,
    pub(crate) stream: String,
    pub(crate) me: NodeId,
    pub(crate) address: String,
    pub(crate) live: watch::Receiver<Arc<LiveNodes>>,
    pub(crate) log: ClusterLog,
}

impl StatusSource {
    fn status(&self) -> NodeStatus {
        let live = self.live.borrow().clone();
        let held = self.log.rooms_held(MAX_STATUS_ROOMS);
        NodeStatus {
            node: self.me.to_string(),
            address: self.address.clone(),
            live: live.ids().map(ToString::to_string).collect(),
            writing: held.writing,
            following: held.following,
            rooms: held
                .rooms
                .into_iter()
                .map(|(room, h)| RoomStatus {
                    owner: live.owner(&room) == Some(&self.me),
                    room: room.as_str().to_owned(),
                    writer: h.writer,
                    head: h.head.map(|s| s.0),
                    applied: h.applied.map(|s| s.0),
                })
                .collect(),
        }
    }
}

/// Answers status requests until `stop`.
///
/// # Errors
/// If NATS refuses the subscription.
pub(crate) async fn serve_status(
    source: StatusSource,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<(), ClusterError> {
    let subject = format!("{}.status", node_subject(&source.stream, &source.me));
    let mut requests = source
        .client
        .subscribe(subject)
        .await
        .map_err(|e| nats("subscribe to the node's status requests", e))?;
    tasks.spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = requests.next() => match m { Some(m) => m, None => return },
            };
            let Some(reply) = msg.reply else { continue };
            let body = match serde_json::to_vec(&source.status()) {
                Ok(b) => b,
                Err(e) => {
                    debug!(error = %e, "status does not encode");
                    continue;
                }
            };
            if let Err(e) = source.client.publish(reply, body.into()).await {
                debug!(error = %e, "status reply not sent");
            }
        }
    });
    Ok(())
}

/// A node as the bucket and its answer show it.
struct Seen {
    /// The bucket's value: its advertised address.
    address: String,
    /// Time since its last heartbeat, by this machine's clock.
    age: Option<Duration>,
    /// Its answer, or why there is none.
    status: Result<NodeStatus, String>,
}

/// The report of `confab admin cluster`: the nodes in the bucket (address,
/// time since the last heartbeat, alive or expired, their own view of the
/// live set, rooms written and followed), then every room they listed,
/// per node, with the stream's head and the lag.
///
/// # Errors
/// If NATS cannot be reached or the bucket cannot be read.
pub async fn report(cfg: &ClusterConfig) -> Result<String, ClusterError> {
    let client = cfg.connect().await?;
    let membership = cfg.membership_config();
    let js = jetstream::new(client.clone());
    let bucket = js
        .get_key_value(membership.bucket.clone())
        .await
        .map_err(|e| nats("open the node bucket (no node ever joined?)", e))?;
    let ttl = bucket
        .status()
        .await
        .map_err(|e| nats("read the node bucket's settings", e))?
        .max_age();
    let mut keys = bucket
        .keys()
        .await
        .map_err(|e| nats("list the node bucket", e))?;
    let mut nodes: BTreeMap<String, Seen> = BTreeMap::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| nats("list the node bucket", e))?;
        if nodes.len() >= MAX_NODES {
            break;
        }
        let Some(entry) = bucket
            .entry(key.clone())
            .await
            .map_err(|e| nats("read a node key", e))?
            .filter(|e| e.operation == kv::Operation::Put)
        else {
            continue;
        };
        let age = heartbeat_age(entry.created.unix_timestamp_nanos());
        let status = match NodeId::new(key.clone()) {
            Ok(id) => ask(&client, &cfg.stream, &id).await,
            Err(e) => Err(e.to_string()),
        };
        let address = String::from_utf8_lossy(&entry.value).into_owned();
        nodes.insert(
            key,
            Seen {
                address,
                age,
                status,
            },
        );
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "stream {}, node bucket {} (ttl {} s): {} nodes",
        cfg.stream,
        membership.bucket,
        ttl.as_secs(),
        nodes.len()
    );
    out.push_str("node\taddress\theartbeat\tstate\tsees\twriting\tfollowing\n");
    for (id, seen) in &nodes {
        let heartbeat = seen
            .age
            .map_or("-".to_owned(), |a| format!("{:.1}s ago", a.as_secs_f64()));
        let alive = seen.age.is_some_and(|a| a < ttl);
        let state = if alive { "alive" } else { "expiring" };
        match &seen.status {
            Ok(s) => {
                let _ = writeln!(
                    out,
                    "{id}\t{}\t{heartbeat}\t{state}\t{}\t{}\t{}",
                    seen.address,
                    s.live.join(","),
                    s.writing,
                    s.following
                );
            }
            Err(why) => {
                let _ = writeln!(
                    out,
                    "{id}\t{}\t{heartbeat}\t{state}, no answer ({why})\t-\t-\t-",
                    seen.address
                );
            }
        }
    }
    let listed: Vec<(&String, &RoomStatus)> = nodes
        .iter()
        .filter_map(|(id, s)| s.status.as_ref().ok().map(|s| (id, s)))
        .flat_map(|(id, s)| s.rooms.iter().map(move |r| (id, r)))
        .collect();
    if listed.is_empty() {
        return Ok(out);
    }
    let log = JetStreamLog::open(client, cfg.log_config()).await?;
    let mut heads: BTreeMap<&str, Option<u64>> = BTreeMap::new();
    for (_, r) in &listed {
        if heads.contains_key(r.room.as_str()) {
            continue;
        }
        let head = match RoomId::new(r.room.as_str()) {
            Ok(room) => log
                .last_chunk(&room)
                .await
                .ok()
                .map(|c| c.map_or(0, |c| c.last.0)),
            Err(_) => None,
        };
        heads.insert(&r.room, head);
    }
    out.push_str("room\tnode\trole\twriter_head\tapplied\tstream_head\tlag\n");
    let mut rows: Vec<&(&String, &RoomStatus)> = listed.iter().collect();
    rows.sort_by(|a, b| (a.1.room.as_str(), a.0).cmp(&(b.1.room.as_str(), b.0)));
    for (id, r) in rows {
        let head = heads.get(r.room.as_str()).copied().flatten();
        let role = match (r.owner, r.writer) {
            (true, true) => "owner,writer",
            (true, false) => "owner",
            (false, true) => "writer (not owner)",
            (false, false) => "follower",
        };
        // What the node's devices are behind by: the stream's head minus
        // what it handed to its fan-out (or wrote, if it does not follow).
        let at = r.applied.or(r.head);
        let lag = match (head, at) {
            (Some(h), Some(a)) => h.saturating_sub(a).to_string(),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "{}\t{id}\t{role}\t{}\t{}\t{}\t{lag}",
            r.room,
            opt(r.head),
            opt(r.applied),
            opt(head),
        );
    }
    Ok(out)
}

/// Asks one node for its status.
async fn ask(
    client: &async_nats::Client,
    stream: &str,
    node: &NodeId,
) -> Result<NodeStatus, String> {
    let subject = format!("{}.status", node_subject(stream, node));
    let reply = tokio::time::timeout(STATUS_TIMEOUT, client.request(subject, Vec::new().into()))
        .await
        .map_err(|_| format!("none within {STATUS_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&reply.payload).map_err(|e| format!("a bad answer: {e}"))
}

/// Time since `created_nanos` (Unix nanoseconds), if not in the future.
fn heartbeat_age(created_nanos: i128) -> Option<Duration> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    let created = u128::try_from(created_nanos).ok()?;
    now.checked_sub(created)
        .and_then(|d| u64::try_from(d).ok())
        .map(Duration::from_nanos)
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".to_owned(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_round_trips_and_junk_is_an_error() {
        let s = NodeStatus {
            node: "a".into(),
            address: "127.0.0.1:7400".into(),
            live: vec!["a".into(), "b".into()],
            writing: 1,
            following: 2,
            rooms: vec![RoomStatus {
                room: "r \"x\"".into(),
                owner: true,
                writer: true,
                head: Some(3),
                applied: None,
            }],
        };
        let bytes = serde_json::to_vec(&s).expect("encodes");
        let back: NodeStatus = serde_json::from_slice(&bytes).expect("decodes");
        assert_eq!(back, s);
        for junk in [&b""[..], b"{", b"[]", b"{\"node\":1}", &[0xff; 64]] {
            assert!(serde_json::from_slice::<NodeStatus>(junk).is_err());
        }
    }

    #[test]
    fn heartbeat_ages_are_never_negative() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as i128;
        assert!(heartbeat_age(now - 1_000_000_000).is_some_and(|a| a >= Duration::from_secs(1)));
        assert_eq!(heartbeat_age(now + 60_000_000_000), None);
        assert_eq!(heartbeat_age(-5), None);
    }
}
