//! Tests of the gap-sync state machine: scripted scenarios, then a property
//! test that drives it with a lossy, reordering, duplicating network and a
//! history oracle.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

/// A bare event: just its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ev(u64);

impl Sequenced for Ev {
    fn seq(&self) -> Seq {
        Seq(self.0)
    }
}

fn sync(last: Option<u64>) -> RoomSync<Ev> {
    RoomSync::new(last.map(Seq), 64, 100)
}

fn feed(s: &mut RoomSync<Ev>, seqs: &[u64]) -> Vec<Action<Ev>> {
    let mut out = Vec::new();
    for &n in seqs {
        s.on_event(Ev(n), &mut out);
    }
    out
}

fn delivered(actions: &[Action<Ev>]) -> Vec<u64> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver(e) => Some(e.0),
            _ => None,
        })
        .collect()
}

fn page(from: u64, to: u64) -> Vec<Ev> {
    (from..=to).map(Ev).collect()
}

#[test]
fn in_order_events_are_delivered() {
    let mut s = sync(Some(0));
    let out = feed(&mut s, &[1, 2, 3]);
    assert_eq!(delivered(&out), vec![1, 2, 3]);
    assert_eq!(s.last_delivered(), Some(Seq(3)));
    assert_eq!(s.start_at(), StartAt::From(Seq(4)));
}

#[test]
fn duplicates_are_dropped() {
    let mut s = sync(Some(5));
    let out = feed(&mut s, &[3, 5, 6, 6, 4]);
    assert_eq!(delivered(&out), vec![6]);
    let dups: Vec<_> = out
        .iter()
        .filter(|a| matches!(a, Action::Duplicate(_)))
        .collect();
    assert_eq!(dups.len(), 4);
}

#[test]
fn a_gap_is_filled_from_history_before_later_events() {
    let mut s = sync(Some(10));
    let out = feed(&mut s, &[11, 15, 16]);
    assert_eq!(delivered(&out), vec![11]);
    assert_eq!(
        out.iter()
            .filter(|a| matches!(a, Action::FetchHistory { .. }))
            .count(),
        1,
        "one request for the gap, not one per buffered event"
    );
    assert!(out.contains(&Action::FetchHistory {
        after: Seq(11),
        limit: 3
    }));
    assert_eq!(s.buffered(), 2);

    let mut out = Vec::new();
    s.on_history(Seq(1), page(12, 14), &mut out);
    assert_eq!(delivered(&out), vec![12, 13, 14, 15, 16]);
    assert_eq!(s.buffered(), 0);
    assert_eq!(s.last_delivered(), Some(Seq(16)));
}

#[test]
fn a_long_gap_is_read_page_by_page() {
    let mut s: RoomSync<Ev> = RoomSync::new(Some(Seq(0)), 64, 10);
    let out = feed(&mut s, &[26]);
    assert_eq!(
        out,
        vec![Action::FetchHistory {
            after: Seq(0),
            limit: 10
        }]
    );
    let mut out = Vec::new();
    s.on_history(Seq(1), page(1, 10), &mut out);
    assert_eq!(delivered(&out), (1..=10).collect::<Vec<_>>());
    assert_eq!(
        out.last(),
        Some(&Action::FetchHistory {
            after: Seq(10),
            limit: 10
        })
    );
    let mut out = Vec::new();
    s.on_history(Seq(1), page(11, 20), &mut out);
    assert_eq!(
        out.last(),
        Some(&Action::FetchHistory {
            after: Seq(20),
            limit: 5
        })
    );
    let mut out = Vec::new();
    s.on_history(Seq(1), page(21, 25), &mut out);
    assert_eq!(delivered(&out), vec![21, 22, 23, 24, 25, 26]);
}

#[test]
fn events_arriving_during_a_fill_are_buffered_or_delivered() {
    let mut s = sync(Some(0));
    feed(&mut s, &[3]);
    // The missing events show up live before the page does.
    let out = feed(&mut s, &[1, 2, 4]);
    assert_eq!(delivered(&out), vec![1, 2, 3, 4]);
    // The late page is all duplicates and asks for nothing more.
    let mut out = Vec::new();
    s.on_history(Seq(1), page(1, 2), &mut out);
    assert!(delivered(&out).is_empty());
    assert!(!out.iter().any(|a| matches!(a, Action::FetchHistory { .. })));
}

#[test]
fn an_unhelpful_page_falls_back_to_resubscribe() {
    let mut s = sync(Some(0));
    feed(&mut s, &[5]);
    let mut out = Vec::new();
    s.on_history(Seq(1), Vec::new(), &mut out);
    assert_eq!(out, vec![Action::Resubscribe { from: Seq(1) }]);
    // While resyncing, later events are dropped (they will be replayed),
    // in-order ones still go through.
    let out = feed(&mut s, &[7, 1]);
    assert_eq!(delivered(&out), vec![1]);
    let mut out = Vec::new();
    s.on_subscribed(Seq(7), Seq(1), false, &mut out);
    let out = feed(&mut s, &[2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(delivered(&out), vec![2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn a_failed_fill_falls_back_to_resubscribe() {
    let mut s = sync(Some(2));
    feed(&mut s, &[4]);
    let mut out = Vec::new();
    s.on_fill_failed(&mut out);
    assert_eq!(out, vec![Action::Resubscribe { from: Seq(3) }]);
}

#[test]
fn buffer_overflow_resubscribes() {
    let mut s: RoomSync<Ev> = RoomSync::new(Some(Seq(0)), 3, 100);
    let out = feed(&mut s, &[2, 3, 4]);
    assert_eq!(s.buffered(), 3);
    assert_eq!(out.len(), 1);
    let out = feed(&mut s, &[5]);
    assert_eq!(out, vec![Action::Resubscribe { from: Seq(1) }]);
    assert_eq!(s.buffered(), 0);
    // The page of the abandoned fill is ignored.
    let mut out = Vec::new();
    s.on_history(Seq(1), page(1, 1), &mut out);
    assert!(out.is_empty());
}

#[test]
fn live_start_is_anchored_by_the_subscribe_ack() {
    let mut s = sync(None);
    assert_eq!(s.start_at(), StartAt::Live);
    let mut out = Vec::new();
    s.on_subscribed(Seq(41), Seq(1), false, &mut out);
    assert!(out.is_empty());
    assert_eq!(s.last_delivered(), Some(Seq(41)));
    let out = feed(&mut s, &[42]);
    assert_eq!(delivered(&out), vec![42]);
}

#[test]
fn early_events_of_a_live_start_wait_for_the_head() {
    let mut s = sync(None);
    feed(&mut s, &[40, 42, 43]);
    let mut out = Vec::new();
    s.on_subscribed(Seq(41), Seq(1), false, &mut out);
    assert_eq!(delivered(&out), vec![42, 43]);
}

#[test]
fn truncated_history_is_reported_and_skipped() {
    let mut s = sync(Some(3));
    let mut out = Vec::new();
    s.on_subscribed(Seq(100), Seq(50), true, &mut out);
    assert_eq!(
        out,
        vec![Action::Gap {
            from: Seq(4),
            to: Seq(49),
            reason: GapReason::Trimmed,
        }]
    );
    let out = feed(&mut s, &[50]);
    assert_eq!(delivered(&out), vec![50]);

    // The same through a history page.
    let mut s = sync(Some(3));
    feed(&mut s, &[60]);
    let mut out = Vec::new();
    s.on_history(Seq(58), page(58, 59), &mut out);
    assert_eq!(
        out[0],
        Action::Gap {
            from: Seq(4),
            to: Seq(57),
            reason: GapReason::Trimmed,
        }
    );
    assert_eq!(delivered(&out), vec![58, 59, 60]);
}

fn gap(from: u64, to: u64, reason: GapReason) -> Action<Ev> {
    Action::Gap {
        from: Seq(from),
        to: Seq(to),
        reason,
    }
}

#[test]
fn a_broker_gap_is_skipped_once_and_never_fetched() {
    let mut s = sync(Some(3));
    let mut out = Vec::new();
    s.on_gap(Seq(4), Seq(9), GapReason::Trimmed, &mut out);
    assert_eq!(out, vec![gap(4, 9, GapReason::Trimmed)]);
    assert_eq!(s.start_at(), StartAt::From(Seq(10)));
    let out = feed(&mut s, &[10, 11]);
    assert_eq!(out, vec![Action::Deliver(Ev(10)), Action::Deliver(Ev(11))]);
    // The same range again (a replay after a reconnect) is not reported.
    let mut out = Vec::new();
    s.on_gap(Seq(4), Seq(9), GapReason::Trimmed, &mut out);
    assert!(out.is_empty());

    // A start truncated in the SubscribeAck, then the broker's Gap for the
    // same range (version 2 sends both): reported once.
    let mut s = sync(Some(3));
    let mut out = Vec::new();
    s.on_subscribed(Seq(20), Seq(10), true, &mut out);
    s.on_gap(Seq(4), Seq(9), GapReason::Trimmed, &mut out);
    assert_eq!(out, vec![gap(4, 9, GapReason::Trimmed)]);

    // Buffered events after the gap are delivered once it is skipped.
    let mut s = sync(Some(3));
    let out = feed(&mut s, &[12, 13]);
    assert_eq!(
        out,
        vec![Action::FetchHistory {
            after: Seq(3),
            limit: 8
        }]
    );
    let mut out = Vec::new();
    s.on_gap(Seq(4), Seq(11), GapReason::Deleted, &mut out);
    assert_eq!(
        out,
        vec![
            gap(4, 11, GapReason::Deleted),
            Action::Deliver(Ev(12)),
            Action::Deliver(Ev(13))
        ]
    );
}

#[test]
fn a_gap_after_missing_entries_resubscribes() {
    let mut s = sync(Some(3));
    let mut out = Vec::new();
    s.on_gap(Seq(6), Seq(9), GapReason::Trimmed, &mut out);
    assert_eq!(out, vec![Action::Resubscribe { from: Seq(4) }]);
}

#[test]
fn access_lost_ends_the_room() {
    // Everything up to the removal was delivered: an empty range.
    let mut s = sync(Some(7));
    let mut out = Vec::new();
    s.on_gap(Seq(8), Seq(7), GapReason::AccessLost, &mut out);
    assert_eq!(out, vec![gap(8, 7, GapReason::AccessLost)]);
    assert!(feed(&mut s, &[8]).is_empty());

    // With entries still missing (and buffered), they are reported from
    // the last delivered one on, and nothing more is delivered.
    let mut s = sync(Some(3));
    feed(&mut s, &[6]);
    let mut out = Vec::new();
    s.on_gap(Seq(7), Seq(9), GapReason::AccessLost, &mut out);
    assert_eq!(out, vec![gap(4, 9, GapReason::AccessLost)]);
    let mut out = Vec::new();
    s.on_history(Seq(1), page(4, 9), &mut out);
    s.on_subscribed(Seq(9), Seq(1), false, &mut out);
    assert!(out.is_empty());

    // Even while paused.
    let mut s = sync(Some(3));
    s.pause(Seq(5));
    let mut out = Vec::new();
    s.on_gap(Seq(6), Seq(6), GapReason::AccessLost, &mut out);
    assert_eq!(out, vec![gap(5, 6, GapReason::AccessLost)]);
}

#[test]
fn pause_forgets_and_resume_resubscribes() {
    let mut s = sync(Some(0));
    let out = feed(&mut s, &[1, 2, 3]);
    assert_eq!(delivered(&out), vec![1, 2, 3]);
    // Delivery of 3 failed: the app's buffer was full.
    s.pause(Seq(3));
    assert!(s.is_paused());
    assert_eq!(s.last_delivered(), Some(Seq(2)));
    assert!(feed(&mut s, &[3, 4, 9]).is_empty());
    let mut out = Vec::new();
    s.resume(&mut out);
    assert_eq!(out, vec![Action::Resubscribe { from: Seq(3) }]);
    let mut out = Vec::new();
    s.on_subscribed(Seq(9), Seq(1), false, &mut out);
    let out = feed(&mut s, &[3, 4, 5]);
    assert_eq!(delivered(&out), vec![3, 4, 5]);
}

#[test]
fn disconnect_drops_the_buffer_and_the_fill() {
    let mut s = sync(Some(1));
    feed(&mut s, &[5, 6]);
    s.on_disconnected();
    assert_eq!(s.buffered(), 0);
    assert_eq!(s.start_at(), StartAt::From(Seq(2)));
    // A late page of the old connection is ignored.
    let mut out = Vec::new();
    s.on_history(Seq(1), page(2, 4), &mut out);
    assert!(out.is_empty());
    let out = feed(&mut s, &[2]);
    assert_eq!(delivered(&out), vec![2]);
}

/// What the simulated broker does at one step.
#[derive(Debug, Clone)]
enum Net {
    /// Send the next event of the stream.
    Next,
    /// Lose the next event of the stream.
    Drop,
    /// Send the next event twice.
    Dup,
    /// Swap the next two events.
    Swap,
    /// Send an old event again.
    Replay(u64),
    /// Answer the outstanding history request now.
    Answer,
}

fn net() -> impl Strategy<Value = Net> {
    prop_oneof![
        6 => Just(Net::Next),
        1 => Just(Net::Drop),
        1 => Just(Net::Dup),
        1 => Just(Net::Swap),
        1 => (1u64..200).prop_map(Net::Replay),
        2 => Just(Net::Answer),
    ]
}

/// Drives a room through `script` over a log of `n` events. The live stream
/// is lossy; history always answers truthfully; a resubscription makes the
/// stream restart, in order, at the requested sequence. At the end the
/// stream is flushed without loss. Returns every delivered sequence.
fn simulate(n: u64, script: &[Net], max_buffer: usize, page_size: u16) -> Vec<u64> {
    let mut s: RoomSync<Ev> = RoomSync::new(Some(Seq(0)), max_buffer, page_size);
    let mut stream: std::collections::VecDeque<u64> = (1..=n).collect();
    let mut fill: Option<(u64, u16)> = None;
    let mut delivered_seqs = Vec::new();
    let mut out = Vec::new();

    let handle = |out: &mut Vec<Action<Ev>>,
                  stream: &mut std::collections::VecDeque<u64>,
                  fill: &mut Option<(u64, u16)>,
                  delivered_seqs: &mut Vec<u64>,
                  s: &mut RoomSync<Ev>| {
        // Actions may trigger more actions (resubscribe acks); loop.
        while !out.is_empty() {
            for action in std::mem::take(out) {
                match action {
                    Action::Deliver(e) => delivered_seqs.push(e.0),
                    Action::Duplicate(_) | Action::Gap { .. } => {}
                    Action::FetchHistory { after, limit } => *fill = Some((after.0, limit)),
                    Action::Resubscribe { from } => {
                        *fill = None;
                        *stream = (from.0..=n).collect();
                        s.on_subscribed(Seq(n), Seq(1), false, out);
                    }
                }
            }
        }
    };

    for step in script {
        match step {
            Net::Next => {
                if let Some(e) = stream.pop_front() {
                    s.on_event(Ev(e), &mut out);
                }
            }
            Net::Drop => {
                stream.pop_front();
            }
            Net::Dup => {
                if let Some(&e) = stream.front() {
                    s.on_event(Ev(e), &mut out);
                    s.on_event(Ev(e), &mut out);
                    stream.pop_front();
                }
            }
            Net::Swap => {
                if stream.len() >= 2 {
                    stream.swap(0, 1);
                }
            }
            Net::Replay(k) => {
                if *k <= n {
                    s.on_event(Ev(*k), &mut out);
                }
            }
            Net::Answer => {
                if let Some((after, limit)) = fill.take() {
                    let to = (after + u64::from(limit)).min(n);
                    s.on_history(Seq(1), page(after + 1, to), &mut out);
                }
            }
        }
        handle(
            &mut out,
            &mut stream,
            &mut fill,
            &mut delivered_seqs,
            &mut s,
        );
        // Invariant at every step: exactly 1..=k, in order.
        let k = delivered_seqs.len() as u64;
        assert_eq!(delivered_seqs, (1..=k).collect::<Vec<_>>());
    }

    // Flush: the rest of the stream arrives intact, with the last event
    // guaranteed (a gap at the very end is only detectable by a later
    // event), and history requests are answered until none is left.
    if stream.back() != Some(&n) {
        stream.push_back(n);
    }
    loop {
        if let Some((after, limit)) = fill.take() {
            let to = (after + u64::from(limit)).min(n);
            s.on_history(Seq(1), page(after + 1, to), &mut out);
        } else if let Some(e) = stream.pop_front() {
            s.on_event(Ev(e), &mut out);
        } else {
            break;
        }
        handle(
            &mut out,
            &mut stream,
            &mut fill,
            &mut delivered_seqs,
            &mut s,
        );
    }
    delivered_seqs
}

proptest! {
    #[test]
    fn every_event_exactly_once_in_order(
        n in 1u64..150,
        script in proptest::collection::vec(net(), 0..400),
        max_buffer in 1usize..32,
        page_size in 1u16..20,
    ) {
        let got = simulate(n, &script, max_buffer, page_size);
        prop_assert_eq!(got, (1..=n).collect::<Vec<_>>());
    }
}

#[test]
fn simulation_smoke() {
    use Net::*;
    let script = [
        Next,
        Drop,
        Drop,
        Next,
        Dup,
        Swap,
        Next,
        Next,
        Answer,
        Replay(1),
        Next,
    ];
    assert_eq!(simulate(20, &script, 4, 2), (1..=20).collect::<Vec<_>>());
}
