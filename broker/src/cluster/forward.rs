//! Publishes for rooms another node owns: sent to the owner over NATS
//! request/reply, answered with the owner's reply frame.
//!
//! Each node serves `<node subject>.req` ([`serve_requests`]): a request is
//! an envelope (version byte, the device's user and device ids, each with a
//! u16 length, then the encoded `Publish` frame); the owner hands it to its
//! own sequencer as a publish of that device and answers with the encoded
//! reply frame (`PublishAck` or `Error`). The receiving node always handles
//! what it receives, whatever its own view of the owner: views differ for
//! a moment when the live set changes, and the fence, not the routing,
//! keeps two writers of a room apart.
//!
//! The sending side ([`Forwarder`]) keeps the order of a device's
//! publishes: one task publishes every forwarded request, in the order the
//! sessions handed them over, with a reply subject of its own per request
//! on one subscription of the node. An owner that does not answer within
//! [`FORWARD_TIMEOUT`], that leaves the live set meanwhile (it crashed: its
//! key expired), or that has no responder (it is gone) gets the device an
//! `Internal` error; the device retries with the same client message id,
//! and once membership names a new owner the retry goes there and is
//! answered with the original sequence if the first attempt was stored.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use confab_codec::{
    Body, DeviceId, ErrorCode, ErrorFrame, Frame, Publish, UserId, PROTOCOL_VERSION,
};
use futures_util::StreamExt;
use rustc_hash::FxHashMap;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{ClusterError, LiveNodes, NodeId};
use crate::base::sender_key;
use crate::fanout::{ConnCtx, DirectReply, Outbox};
use crate::sequencer::{PublishReq, SeqMsg, SeqTx};
use crate::shared::Forward;
use crate::stats::Stats;

/// How long a forwarded publish waits for the owner's reply.
pub(crate) const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// The envelope's version byte.
const ENVELOPE_V1: u8 = 1;

/// The subject prefix of a node's requests and replies: one per stream
/// (one cluster) and node.
pub(crate) fn node_subject(stream: &str, node: &NodeId) -> String {
    format!("confab.node.{stream}.{node}")
}

/// What both sides need: this node on NATS.
#[derive(Debug, Clone)]
pub(crate) struct NodeLink {
    /// The node's NATS connection.
    pub(crate) client: async_nats::Client,
    /// The stream (names the cluster in the node subjects).
    pub(crate) stream: String,
    /// This node.
    pub(crate) me: NodeId,
    /// The largest frame accepted in a request or a reply.
    pub(crate) max_frame_len: u32,
}

/// The sending side: implements [`Forward`] for the sessions.
#[derive(Debug)]
pub(crate) struct Forwarder {
    me: NodeId,
    live: watch::Receiver<Arc<LiveNodes>>,
    tx: mpsc::UnboundedSender<(NodeId, PublishReq)>,
}

impl Forward for Forwarder {
    fn forward(&self, req: PublishReq) -> Option<PublishReq> {
        let owner = match self.live.borrow().owner(&req.room) {
            Some(o) if *o != self.me => o.clone(),
            // Ours, or no live node known (NATS is down): the local
            // sequencer answers (its commit fails without JetStream).
            _ => return Some(req),
        };
        self.tx.send((owner, req)).err().map(|e| e.0 .1)
    }
}

/// A publish in flight to another node.
struct InFlight {
    req: PublishReq,
    to: NodeId,
    sent: Instant,
}

/// Publishes in flight to other nodes, by reply id.
type Pending = Mutex<FxHashMap<u64, InFlight>>;

/// Starts the sending side: its task and the subscription to this node's
/// replies.
///
/// # Errors
/// If NATS refuses the subscription.
pub(crate) async fn start_forwarder(
    node: &NodeLink,
    live: watch::Receiver<Arc<LiveNodes>>,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<Forwarder, ClusterError> {
    let NodeLink {
        client,
        stream,
        me,
        max_frame_len,
    } = node.clone();
    let prefix = node_subject(&stream, &me);
    let replies = client
        .subscribe(format!("{prefix}.rep.*"))
        .await
        .map_err(|e| super::error::nats("subscribe to the node's replies", e))?;
    let (tx, rx) = mpsc::unbounded_channel();
    let pending: Arc<Pending> = Arc::new(Mutex::new(FxHashMap::default()));
    tasks.spawn(send_requests(
        client,
        stream,
        prefix,
        rx,
        pending.clone(),
        stop.clone(),
    ));
    tasks.spawn(take_replies(
        replies,
        pending,
        live.clone(),
        max_frame_len,
        stop,
    ));
    Ok(Forwarder { me, live, tx })
}

/// Publishes the forwarded requests in order.
async fn send_requests(
    client: async_nats::Client,
    stream: String,
    prefix: String,
    mut rx: mpsc::UnboundedReceiver<(NodeId, PublishReq)>,
    pending: Arc<Pending>,
    stop: CancellationToken,
) {
    let next_id = AtomicU64::new(1);
    loop {
        let (owner, req) = tokio::select! {
            _ = stop.cancelled() => break,
            r = rx.recv() => match r { Some(r) => r, None => break },
        };
        let payload = match envelope(&req) {
            Ok(p) => p,
            Err(message) => {
                answer(req, error(ErrorCode::InvalidRequest, message));
                continue;
            }
        };
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        let subject = format!("{}.req", node_subject(&stream, &owner));
        lock(&pending).insert(
            id,
            InFlight {
                req,
                to: owner.clone(),
                sent: Instant::now(),
            },
        );
        if let Err(e) = client
            .publish_with_reply(subject, format!("{prefix}.rep.{id}"), payload)
            .await
        {
            if let Some(InFlight { req, .. }) = lock(&pending).remove(&id) {
                answer(
                    req,
                    error(
                        ErrorCode::Internal,
                        format!("cannot reach node {owner}: {e}"),
                    ),
                );
            }
        }
    }
    // Stopping: what is in flight is answered as the broker stops.
    for (_, InFlight { req, .. }) in lock(&pending).drain() {
        answer(
            req,
            error(ErrorCode::ShuttingDown, "server shutting down".into()),
        );
    }
}

/// Hands the owners' replies to the devices, and fails the requests that
/// got none in time, or whose node left the live set (crashed: its key
/// expired), so that the device's retry goes to the room's next owner.
async fn take_replies(
    mut replies: async_nats::Subscriber,
    pending: Arc<Pending>,
    mut live: watch::Receiver<Arc<LiveNodes>>,
    max_frame_len: u32,
    stop: CancellationToken,
) {
    let mut sweep = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = sweep.tick() => fail_pending(&pending, |f| {
                (f.sent.elapsed() >= FORWARD_TIMEOUT)
                    .then_some("the room's owner did not answer in time; retry")
            }),
            changed = live.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = live.borrow_and_update().clone();
                fail_pending(&pending, |f| {
                    (!now.contains(&f.to)).then_some("the room's owner left the cluster; retry")
                });
            }
            msg = replies.next() => {
                let Some(msg) = msg else { return };
                let id = msg.subject.rsplit('.').next().and_then(|t| t.parse::<u64>().ok());
                let Some(InFlight { req, .. }) = id.and_then(|id| lock(&pending).remove(&id)) else {
                    continue;
                };
                let frame = if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
                    error(ErrorCode::Internal, "the room's owner is not reachable; retry".into())
                } else {
                    decode_frame(msg.payload, max_frame_len).unwrap_or_else(|m| {
                        warn!(error = %m, "a bad reply from a node");
                        error(ErrorCode::Internal, "a bad reply from the room's owner; retry".into())
                    })
                };
                answer(req, frame);
            }
        }
    }
}

/// Answers with an `Internal` error (retryable) every request in flight
/// for which `why` gives a reason.
fn fail_pending(pending: &Pending, why: impl Fn(&InFlight) -> Option<&'static str>) {
    let failed: Vec<(PublishReq, &'static str)> = {
        let mut p = lock(pending);
        let ids: Vec<(u64, &'static str)> = p
            .iter()
            .filter_map(|(id, f)| why(f).map(|w| (*id, w)))
            .collect();
        ids.into_iter()
            .filter_map(|(id, w)| p.remove(&id).map(|f| (f.req, w)))
            .collect()
    };
    for (req, why) in failed {
        answer(req, error(ErrorCode::Internal, why.into()));
    }
}

/// Gives the device its reply, with its request id, and its publish
/// permit back.
fn answer(req: PublishReq, reply: Body) {
    let acked = matches!(reply, Body::PublishAck(_));
    if !(acked && req.no_reply) {
        let frame = Frame::request(req.request_id, reply);
        match frame.to_bytes() {
            Ok(bytes) => req.conn.outbox.push_control(bytes),
            Err(e) => warn!(error = %e, "cannot encode a forwarded reply"),
        }
    }
    req.conn.inflight.add_permits(1);
}

fn error(code: ErrorCode, message: String) -> Body {
    Body::Error(ErrorFrame {
        code,
        retry_after_ms: 0,
        message,
    })
}

/// The request envelope of `req` (see the module docs).
fn envelope(req: &PublishReq) -> Result<Bytes, String> {
    let publish = Frame::new(Publish {
        room: req.room.clone(),
        client_msg_id: req.client_msg_id,
        kind: req.kind,
        refers_to: req.refers_to,
        thread: req.thread,
        payload: req.payload.clone(),
    })
    .to_bytes()
    .map_err(|e| e.to_string())?;
    let user = req.conn.user.as_str().as_bytes();
    let device = req.conn.device.as_str().as_bytes();
    let mut buf = BytesMut::with_capacity(5 + user.len() + device.len() + publish.len());
    buf.put_u8(ENVELOPE_V1);
    for id in [user, device] {
        let len = u16::try_from(id.len()).map_err(|_| "an id is too long".to_owned())?;
        buf.put_u16(len);
        buf.put_slice(id);
    }
    buf.put_slice(&publish);
    Ok(buf.freeze())
}

/// The device and the publish of an envelope; every length is checked.
fn open_envelope(mut b: Bytes, max_frame_len: u32) -> Result<(UserId, DeviceId, Publish), String> {
    if b.remaining() < 1 || b.get_u8() != ENVELOPE_V1 {
        return Err("unknown envelope version".into());
    }
    let mut ids = Vec::with_capacity(2);
    for _ in 0..2 {
        if b.remaining() < 2 {
            return Err("truncated envelope".into());
        }
        let len = usize::from(b.get_u16());
        if b.remaining() < len {
            return Err("truncated envelope".into());
        }
        let id = b.split_to(len);
        ids.push(String::from_utf8(id.to_vec()).map_err(|_| "an id is not UTF-8".to_owned())?);
    }
    let device = DeviceId::new(ids.pop().unwrap_or_default()).map_err(|e| e.to_string())?;
    let user = UserId::new(ids.pop().unwrap_or_default()).map_err(|e| e.to_string())?;
    match decode_frame(b, max_frame_len)? {
        Body::Publish(p) => Ok((user, device, p)),
        other => Err(format!("a {} where a Publish was expected", other.name())),
    }
}

/// One whole frame's body, nothing after it.
fn decode_frame(b: Bytes, max_frame_len: u32) -> Result<Body, String> {
    let mut buf = BytesMut::from(&b[..]);
    match Frame::decode(&mut buf, max_frame_len) {
        Ok(Some(f)) if buf.is_empty() => Ok(f.body),
        Ok(_) => Err("not one whole frame".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A plain map, consistent between statements.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The owner's side: serves `<node subject>.req` until stopped, each
/// request as a publish of the forwarding device into the local
/// sequencer, in the order they arrive, each answered when committed.
///
/// # Errors
/// If NATS refuses the subscription.
pub(crate) async fn serve_requests(
    node: &NodeLink,
    sequencer: SeqTx,
    stats: Arc<Stats>,
    tasks: TaskTracker,
    stop: CancellationToken,
) -> Result<(), ClusterError> {
    let NodeLink {
        client,
        stream,
        me,
        max_frame_len,
    } = node.clone();
    let mut requests = client
        .subscribe(format!("{}.req", node_subject(&stream, &me)))
        .await
        .map_err(|e| super::error::nats("subscribe to the node's requests", e))?;
    let inner = tasks.clone();
    tasks.spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => return,
                m = requests.next() => match m { Some(m) => m, None => return },
            };
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            let (user, device, p) = match open_envelope(msg.payload, max_frame_len) {
                Ok(x) => x,
                Err(message) => {
                    debug!(error = %message, "a bad forwarded request");
                    respond(&client, reply, error(ErrorCode::InvalidRequest, message)).await;
                    continue;
                }
            };
            let (direct, answered) = DirectReply::new();
            let conn = Arc::new(ConnCtx {
                sender_key: sender_key(user.as_str(), device.as_str()),
                user,
                device,
                // Replies go through `direct`; nothing is delivered here.
                outbox: Arc::new(Outbox::new(1, stats.clone())),
                inflight: Semaphore::new(0),
                requests: Arc::new(Semaphore::new(1)),
                system: false,
                direct: Some(direct),
                version: PROTOCOL_VERSION,
            });
            let req = PublishReq::new(conn, 0, false, p, Instant::now());
            // In arrival order, as a session hands its publishes over.
            if sequencer.send(SeqMsg::Publish(req)).await.is_err() {
                respond(
                    &client,
                    reply,
                    error(ErrorCode::ShuttingDown, "server shutting down".into()),
                )
                .await;
                return;
            }
            let client = client.clone();
            inner.spawn(async move {
                let body = match tokio::time::timeout(FORWARD_TIMEOUT, answered).await {
                    Ok(Ok(frame)) => frame.body,
                    _ => error(ErrorCode::Internal, "not committed in time; retry".into()),
                };
                respond(&client, reply, body).await;
            });
        }
    });
    Ok(())
}

async fn respond(client: &async_nats::Client, reply: async_nats::Subject, body: Body) {
    match Frame::new(body).to_bytes() {
        Ok(bytes) => {
            if let Err(e) = client.publish(reply, bytes).await {
                debug!(error = %e, "cannot answer a forwarded request");
            }
        }
        Err(e) => warn!(error = %e, "cannot encode a reply to a forwarded request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_refuse_every_truncation() {
        let publish = Frame::new(Publish {
            room: confab_codec::RoomId::new("r").expect("room"),
            client_msg_id: 7,
            kind: confab_codec::MessageKind::MESSAGE,
            refers_to: None,
            thread: None,
            payload: Bytes::from_static(b"hi"),
        })
        .to_bytes()
        .expect("encode");
        let mut buf = BytesMut::new();
        buf.put_u8(ENVELOPE_V1);
        for id in [&b"alice"[..], b"phone"] {
            buf.put_u16(id.len() as u16);
            buf.put_slice(id);
        }
        buf.put_slice(&publish);
        let whole = buf.freeze();
        let (user, device, p) = open_envelope(whole.clone(), 1 << 20).expect("whole");
        assert_eq!((user.as_str(), device.as_str()), ("alice", "phone"));
        assert_eq!(p.client_msg_id, 7);
        for n in 0..whole.len() {
            assert!(
                open_envelope(whole.slice(..n), 1 << 20).is_err(),
                "prefix {n}"
            );
        }
    }
}
