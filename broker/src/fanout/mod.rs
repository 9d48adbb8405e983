//! Fan-out: committed events go from the sequencer to every subscribed
//! device's bounded outbox, on a dedicated thread.
//!
//! The thread receives, in commit order, batches of committed events and
//! subscription changes. Because both travel through the same ordered
//! channel, a subscription registered "at head H" sees exactly the events
//! after H live, and reads the ones before from the log: no gap, no
//! duplicate. Each event is encoded once; every recipient gets a clone of
//! the same `Bytes`. While the thread is idle, the sequencer carries out
//! small messages itself (see `handoff`): one thread hand-off less.

mod conn;
mod handoff;
mod outbox;
mod replay;
mod room;
mod split;
mod subscription;

use std::sync::Arc;

use bytes::Bytes;
use confab_codec::{ErrorCode, GapReason, Seq, StartAt, SubscribeResult};
use tokio::runtime::Handle;
use tokio_util::task::TaskTracker;
use tracing::warn;

pub(crate) use conn::{ConnCtx, DirectReply, Held};
pub(crate) use handoff::{channel, FanoutRx, Handoff};
pub(crate) use outbox::{Drained, Outbox, Source};
pub(crate) use room::{Room, RoomRegistry};
pub(crate) use split::{presence_events, receipt_events, subscribe_acks};
pub(crate) use subscription::{gap_frame, CatchupCtx, Offer, Subscription};
#[cfg(test)]
pub(crate) use subscription::{read_batch, CatchupStep};

use crate::storage::LogBounds;

/// One committed event, encoded as an `Event` frame.
#[derive(Debug)]
pub(crate) struct Committed {
    pub(crate) room: Arc<Room>,
    pub(crate) seq: Seq,
    pub(crate) frame: Bytes,
    /// When the publish was received (or the batch began, for entries the
    /// server wrote), for the publish-to-deliver histogram.
    pub(crate) received: std::time::Instant,
}

/// One room of a subscribe request, once the sequencer stamped it.
#[derive(Debug)]
pub(crate) struct SubscribeItem {
    /// Index of this room's result in the reply.
    pub(crate) index: usize,
    pub(crate) sub: Arc<Subscription>,
    /// An earlier subscription of the same device to the same room.
    pub(crate) replaces: Option<Arc<Subscription>>,
    pub(crate) start: StartAt,
    /// The room's log bounds at this point of the commit order.
    pub(crate) bounds: LogBounds,
    /// Set by the sequencer when the device may not follow the room.
    pub(crate) refused: Option<ErrorCode>,
}

/// A subscribe request on its way to the fan-out thread.
#[derive(Debug)]
pub(crate) struct SubscribeCmd {
    pub(crate) outbox: Arc<Outbox>,
    /// The subscribing user, for authorization.
    pub(crate) user: confab_codec::UserId,
    /// The embedding service's system principal, which may follow any room.
    pub(crate) system: bool,
    pub(crate) request_id: u32,
    /// One result per requested room; refused rooms are already filled in.
    pub(crate) results: Vec<SubscribeResult>,
    pub(crate) items: Vec<SubscribeItem>,
    pub(crate) held: Held,
}

/// Messages to the fan-out thread.
#[derive(Debug)]
pub(crate) enum FanoutMsg {
    Committed(Vec<Committed>),
    Subscribe(SubscribeCmd),
    Unsubscribe(Vec<Arc<Subscription>>),
    /// An ephemeral frame (receipts, typing) for every device following the
    /// room; dropped for devices whose queue is full.
    Ephemeral {
        room: Arc<Room>,
        frame: Bytes,
    },
    /// Ends every subscription of `user` to `room` (left or removed).
    Evict {
        room: Arc<Room>,
        user: confab_codec::UserId,
    },
    /// The sequencer has stopped: exit after what came before.
    Stop,
}

/// Runs the fan-out loop until every sender is gone.
pub(crate) fn run(rx: FanoutRx, ctx: Arc<CatchupCtx>, runtime: Handle, tasks: TaskTracker) {
    let mut to_wake: Vec<Arc<Outbox>> = Vec::new();
    let mut catch_up = |sub: Arc<Subscription>, lagged: bool| {
        tasks.spawn_on(sub.catch_up(ctx.clone(), lagged), &runtime);
    };
    while let Some(msg) = rx.recv() {
        if matches!(msg, FanoutMsg::Stop) {
            break;
        }
        // One message is one group commit (or a subscription change), so
        // waking the touched writers after each gives one wake-up per
        // device per commit, however many events the commit holds.
        handle(msg, &ctx, &mut catch_up, &mut to_wake);
        for outbox in to_wake.drain(..) {
            outbox.wake();
        }
        // Only now may the sequencer carry out the next message itself.
        rx.done();
    }
}

/// Carries out one message. A subscription that must read from the log
/// (a backlog, or a lag) is handed to `catch_up` with whether it lagged:
/// the thread above starts a catch-up task, the deterministic simulation
/// (`crate::sim`) steps it itself.
pub(crate) fn handle(
    msg: FanoutMsg,
    ctx: &Arc<CatchupCtx>,
    catch_up: &mut dyn FnMut(Arc<Subscription>, bool),
    to_wake: &mut Vec<Arc<Outbox>>,
) {
    match msg {
        FanoutMsg::Committed(events) => {
            let mut delivered = 0u64;
            let mut rest = &events[..];
            while !rest.is_empty() {
                let (run, tail) = rest.split_at(run_len(rest, ctx));
                rest = tail;
                delivered += deliver_run(run, ctx, catch_up, to_wake);
                for ev in run {
                    ctx.stats
                        .hist
                        .publish_deliver
                        .record(ev.received.elapsed().as_secs_f64());
                }
            }
            // One atomic add per group commit, not per delivery.
            ctx.stats
                .delivered
                .fetch_add(delivered, std::sync::atomic::Ordering::Relaxed);
        }
        FanoutMsg::Subscribe(cmd) => subscribe(cmd, ctx, catch_up),
        FanoutMsg::Unsubscribe(subs) => {
            for sub in subs {
                sub.close();
                sub.room.remove_subscriber(&sub);
            }
        }
        FanoutMsg::Ephemeral { room, frame } => {
            for sub in room.subscribers().iter() {
                if sub.outbox.try_push_event(sub.lane, &frame) && sub.outbox.mark_wake(sub.lane) {
                    to_wake.push(sub.outbox.clone());
                }
            }
        }
        FanoutMsg::Evict { room, user } => {
            // After the entry that ended the membership went through this
            // thread (the sequencer sends it first): a version 2 device is
            // told what it was not sent, up to that entry.
            let subs = room.subscribers();
            for sub in subs.iter().filter(|s| s.user.as_ref() == Some(&user)) {
                sub.end_access_lost();
                room.remove_subscriber(sub);
            }
        }
        FanoutMsg::Stop => {}
    }
}

/// How many of `events`, from the first, form one *run*: consecutive
/// sequences of one room, at most `catchup_batch` of them and about
/// `max_bytes` of records, which a live device gets as one `EventBatch`.
fn run_len(events: &[Committed], ctx: &CatchupCtx) -> usize {
    let Some((first, rest)) = events.split_first() else {
        return 0;
    };
    let mut bytes = first.frame.len();
    let mut n = 1;
    for ev in rest {
        bytes += ev.frame.len();
        let next = first.seq.0.saturating_add(n as u64);
        if n >= ctx.batch
            || bytes > ctx.max_bytes
            || ev.seq.0 != next
            || !Arc::ptr_eq(&ev.room, &first.room)
        {
            break;
        }
        n += 1;
    }
    n
}

/// Hands one run of a room's committed events to its subscribers. A device
/// that is live at the run's first sequence gets the whole run as one
/// `EventBatch` (protocol 7.4.4: a server MAY batch live events), shared
/// by every such device: one queue entry and one wake-up per device per
/// commit, however many events the commit holds for the room. Any other
/// device (registered in the middle of the run, catching up) is offered
/// the events one by one. Returns the deliveries made.
fn deliver_run(
    run: &[Committed],
    ctx: &Arc<CatchupCtx>,
    catch_up: &mut dyn FnMut(Arc<Subscription>, bool),
    to_wake: &mut Vec<Arc<Outbox>>,
) -> u64 {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return 0;
    };
    let subs = first.room.subscribers();
    if subs.is_empty() {
        return 0;
    }
    let batch = if run.len() > 1 {
        let records: Vec<Bytes> = run
            .iter()
            .map(|ev| {
                ev.frame.slice(confab_codec::raw::event_record_range(
                    &first.room.id,
                    ev.frame.len(),
                ))
            })
            .collect();
        confab_codec::raw::event_batch_frame(0, 0, &first.room.id, &records).ok()
    } else {
        None
    };
    let mut delivered = 0u64;
    let mut outcome = |sub: &Arc<Subscription>, offer: Offer, count: u64| match offer {
        Offer::Delivered => {
            delivered += count;
            if sub.outbox.mark_wake(sub.lane) {
                to_wake.push(sub.outbox.clone());
            }
        }
        Offer::Skipped => {}
        Offer::Lagged => {
            ctx.stats
                .lag_switches
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            catch_up(sub.clone(), true);
        }
    };
    for sub in subs.iter() {
        if let Some(batch) = &batch {
            if let Some(offer) = sub.offer_run(first.seq, last.seq, batch) {
                outcome(sub, offer, run.len() as u64);
                continue;
            }
        }
        for ev in run {
            outcome(sub, sub.offer(ev.seq, &ev.frame), 1);
        }
    }
    delivered
}

fn subscribe(
    mut cmd: SubscribeCmd,
    ctx: &Arc<CatchupCtx>,
    catch_up: &mut dyn FnMut(Arc<Subscription>, bool),
) {
    let mut catchups = Vec::new();
    let mut gaps = Vec::new();
    for item in &cmd.items {
        if let Some(code) = item.refused {
            item.sub.close();
            if let Some(result) = cmd.results.get_mut(item.index) {
                result.code = code;
            }
            continue;
        }
        let LogBounds { head, first } = item.bounds;
        let (next, code) = match item.start {
            StartAt::Live => (head.next(), ErrorCode::Normal),
            // From(0) means From(1) (protocol 4.4): only a start below a
            // `first` above 1 lost entries.
            StartAt::From(n) if n.0.max(1) < first.0 && first <= head => {
                (first, ErrorCode::HistoryTruncated)
            }
            StartAt::From(n) => (
                Seq(n.0.max(first.0.min(head.0 + 1)).max(1)),
                ErrorCode::Normal,
            ),
        };
        if let Some(old) = &item.replaces {
            old.close();
        }
        if item.sub.register(next, head) {
            catchups.push(item.sub.clone());
        }
        if let (StartAt::From(n), ErrorCode::HistoryTruncated) = (item.start, code) {
            if item.sub.reports_gaps() {
                gaps.push((item.sub.clone(), n.0.max(1), first.0 - 1));
            }
        }
        item.sub
            .room
            .add_subscriber(&item.sub, item.replaces.as_ref());
        if let Some(result) = cmd.results.get_mut(item.index) {
            result.code = code;
            result.head = head;
            result.first = first;
        }
    }
    let results = std::mem::take(&mut cmd.results);
    for ack in subscribe_acks(cmd.request_id, results, ctx.max_frame_len) {
        match ack.to_bytes() {
            Ok(bytes) => cmd.outbox.push_subscribe_ack(bytes),
            Err(e) => warn!(error = %e, "cannot encode SubscribeAck"),
        }
    }
    // The entries a start below `first` asked for and retention removed:
    // after the ack (on a byte stream the ack is queued in the same lane),
    // before the backlog, which the catch-up tasks started below queue
    // behind it, and before any live entry, which only this thread offers.
    for (sub, from, to) in gaps {
        match gap_frame(&sub.room.id, from, to, GapReason::Trimmed) {
            Ok(frame) => sub.outbox.push_event_forced(sub.lane, frame),
            Err(e) => warn!(error = %e, "cannot encode Gap"),
        }
    }
    for sub in catchups {
        catch_up(sub, false);
    }
}
