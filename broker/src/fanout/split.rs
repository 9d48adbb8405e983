//! Replies and pushes that list things, cut into frames that each stay
//! within the frame limit (protocol 3.4: the server never sends a body
//! longer than `max_frame_len`). A `SubscribeAck` for thousands of rooms
//! with long ids, the receipts of a busy group commit, a presence window
//! with many changes: each becomes several frames of the same kind.

use confab_codec::{
    Frame, PresenceEntry, PresenceEvent, ReceiptEntry, ReceiptEvent, RoomId, SubscribeAck,
    SubscribeResult,
};

/// Body bytes of a frame besides its list's items, with room to spare
/// (a request id, a room id, the list's count).
const OVERHEAD: usize = 256;

/// Cuts `items` into runs whose encodings take at most `max_body` bytes
/// with [`OVERHEAD`], `size` giving an item's encoded bytes. There is
/// always at least one run (empty when `items` is), and at most 65,535
/// items in a run (a list's count is a `u16`).
fn runs<T>(items: Vec<T>, max_body: usize, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let budget = max_body.saturating_sub(OVERHEAD).max(1);
    let mut out = Vec::new();
    let mut run = Vec::new();
    let mut used = 0;
    for item in items {
        let n = size(&item);
        if !run.is_empty() && (used + n > budget || run.len() == usize::from(u16::MAX)) {
            out.push(std::mem::take(&mut run));
            used = 0;
        }
        used += n;
        run.push(item);
    }
    out.push(run);
    out
}

fn room_len(r: &RoomId) -> usize {
    1 + r.as_str().len()
}

/// The `SubscribeAck` frames of request `rid`: one, unless the results do
/// not fit in one frame of `max_body` bytes; then several, with the same
/// request id, the results in request order (protocol 7.3.2).
pub(crate) fn subscribe_acks(
    rid: u32,
    results: Vec<SubscribeResult>,
    max_body: usize,
) -> Vec<Frame> {
    runs(results, max_body, |r| room_len(&r.room) + 2 + 8 + 8)
        .into_iter()
        .map(|results| Frame::request(rid, SubscribeAck { results }))
        .collect()
}

/// `ReceiptEvent` frames for one room's moved markers.
pub(crate) fn receipt_events(
    room: &RoomId,
    entries: Vec<ReceiptEntry>,
    max_body: usize,
) -> Vec<Frame> {
    let size = |e: &ReceiptEntry| 1 + e.user.as_str().len() + 1 + e.device.as_str().len() + 1 + 8;
    runs(entries, max_body.saturating_sub(room_len(room)), size)
        .into_iter()
        .filter(|entries| !entries.is_empty())
        .map(|entries| {
            Frame::new(ReceiptEvent {
                room: room.clone(),
                entries,
            })
        })
        .collect()
}

/// `PresenceEvent` frames for these entries.
pub(crate) fn presence_events(entries: Vec<PresenceEntry>, max_body: usize) -> Vec<Frame> {
    runs(entries, max_body, |e| 1 + e.user.as_str().len() + 1 + 8)
        .into_iter()
        .filter(|entries| !entries.is_empty())
        .map(|entries| Frame::new(PresenceEvent { entries }))
        .collect()
}

#[cfg(test)]
mod tests {
    use confab_codec::{DeviceId, ErrorCode, PresenceStatus, ReceiptKind, Seq, UserId};

    use super::*;

    fn long(prefix: &str, i: usize, len: usize) -> String {
        let mut s = format!("{prefix}{i}-");
        while s.len() < len {
            s.push('x');
        }
        s
    }

    fn body_len(f: &Frame) -> usize {
        f.encoded_len().expect("encodable") - confab_codec::HEADER_LEN
    }

    #[test]
    fn a_subscribe_ack_too_large_for_one_frame_is_cut_in_order() {
        let max = 64 << 10;
        let results: Vec<_> = (0..2_000)
            .map(|i| SubscribeResult {
                room: RoomId::new(long("room", i, 128)).expect("id"),
                code: ErrorCode::Normal,
                head: Seq(i as u64),
                first: Seq(1),
            })
            .collect();
        let frames = subscribe_acks(7, results.clone(), max);
        assert!(frames.len() > 1, "{} frames", frames.len());
        let mut back = Vec::new();
        for f in frames {
            assert!(body_len(&f) <= max, "{} > {max}", body_len(&f));
            assert_eq!(f.request_id, 7);
            match f.body {
                confab_codec::Body::SubscribeAck(a) => back.extend(a.results),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, results);
    }

    #[test]
    fn small_and_empty_acks_are_one_frame() {
        assert_eq!(subscribe_acks(1, Vec::new(), 1 << 20).len(), 1);
        let one = vec![SubscribeResult {
            room: RoomId::new("r").expect("id"),
            code: ErrorCode::Normal,
            head: Seq(0),
            first: Seq(1),
        }];
        assert_eq!(subscribe_acks(1, one, 1 << 20).len(), 1);
    }

    #[test]
    fn receipts_and_presence_fit_the_limit() {
        let max = 16 << 10;
        let room = RoomId::new(long("room", 0, 128)).expect("id");
        let entries: Vec<_> = (0..500)
            .map(|i| ReceiptEntry {
                user: UserId::new(long("u", i, 128)).expect("id"),
                device: DeviceId::new(long("d", i, 64)).expect("id"),
                kind: ReceiptKind::Read,
                seq: Seq(9),
            })
            .collect();
        let frames = receipt_events(&room, entries, max);
        assert!(frames.len() > 1);
        assert_eq!(
            frames
                .iter()
                .map(|f| match &f.body {
                    confab_codec::Body::ReceiptEvent(e) => e.entries.len(),
                    _ => 0,
                })
                .sum::<usize>(),
            500
        );
        assert!(frames.iter().all(|f| body_len(f) <= max));
        assert!(receipt_events(&room, Vec::new(), max).is_empty());

        let entries: Vec<_> = (0..500)
            .map(|i| PresenceEntry {
                user: UserId::new(long("u", i, 128)).expect("id"),
                status: PresenceStatus::Online,
                last_seen_us: 1,
            })
            .collect();
        let frames = presence_events(entries, max);
        assert!(frames.len() > 1);
        assert!(frames.iter().all(|f| body_len(f) <= max));
    }
}
