use bytes::Bytes;
use confab_codec::{DeviceId, MessageKind, RoomId, Seq, UserId};
use proptest::prelude::*;

use super::*;

fn ev(seq: u64, kind: MessageKind, target: Option<u64>, who: &str, payload: &str) -> RoomEvent {
    RoomEvent {
        room: RoomId::new("r").expect("id"),
        seq: Seq(seq),
        timestamp_us: seq,
        sender: UserId::new(who).expect("id"),
        device: DeviceId::new("d").expect("id"),
        client_msg_id: 0,
        kind,
        refers_to: target.map(Seq),
        thread: None,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        replayed: false,
        gaps: Vec::new(),
    }
}

/// A conversation exercising every rule.
fn script() -> Vec<RoomEvent> {
    use MessageKind as K;
    vec![
        ev(1, K::MESSAGE, None, "alice", "helo"),
        ev(2, K::MESSAGE, None, "bob", "hi"),
        ev(3, K::EDIT, Some(1), "alice", "hello"),
        ev(4, K::REACTION, Some(1), "bob", "+1"),
        ev(5, K::REACTION, Some(1), "carol", "+1"),
        ev(6, K::REACTION, Some(1), "bob", "+1"),
        ev(7, K::REACTION, Some(1), "carol", "heart"),
        ev(8, K::EDIT, Some(1), "alice", "hello all"),
        // Not the sender: ignored.
        ev(9, K::EDIT, Some(1), "bob", "hacked"),
        // Carol withdraws her heart.
        ev(10, K::DELETE, Some(7), "carol", ""),
        ev(11, K::EDIT, Some(2), "bob", "hi there"),
        ev(12, K::DELETE, Some(2), "bob", ""),
        // An edit after the delete is ignored.
        ev(13, K::EDIT, Some(2), "bob", "back"),
        ev(14, K::MEMBER_JOINED, None, "dave", ""),
        ev(15, K::MESSAGE, Some(1), "dave", "reply"),
    ]
}

fn check(view: &RoomView) {
    assert_eq!(view.len(), 3);
    let first = view.get(Seq(1)).expect("message 1");
    assert_eq!(&first.content[..], b"hello all");
    assert_eq!(first.edited, Some(Seq(8)));
    assert!(!first.deleted);
    let counts = first.reaction_counts();
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(counts.get(&b"+1"[..]), Some(&2));
    let users = first.reactions();
    let plus: Vec<&str> = users[&b"+1"[..]].iter().map(UserId::as_str).collect();
    assert_eq!(plus, ["bob", "carol"]);
    let second = view.get(Seq(2)).expect("message 2");
    assert!(second.deleted);
    assert!(second.content.is_empty());
    assert_eq!(second.edited, None);
    let reply = view.get(Seq(15)).expect("the reply");
    assert_eq!(reply.reply_to, Some(Seq(1)));
    assert_eq!(&reply.content[..], b"reply");
}

#[test]
fn folds_in_order() {
    let mut view = RoomView::new();
    view.extend(&script());
    check(&view);
}

#[test]
fn folds_backwards_and_twice() {
    // History paged backwards delivers the newest entries first.
    let mut view = RoomView::new();
    let mut events = script();
    events.reverse();
    view.extend(&events);
    view.extend(&events);
    check(&view);
}

#[test]
fn an_edit_of_an_unknown_target_waits() {
    let mut view = RoomView::new();
    view.apply(&ev(5, MessageKind::EDIT, Some(1), "alice", "new"));
    assert!(view.is_empty());
    view.apply(&ev(1, MessageKind::MESSAGE, None, "alice", "old"));
    assert_eq!(&view.get(Seq(1)).expect("message").content[..], b"new");
}

proptest! {
    #[test]
    fn any_order_gives_the_same_view(order in Just(script()).prop_shuffle()) {
        let mut view = RoomView::new();
        view.extend(&order);
        check(&view);
    }
}
