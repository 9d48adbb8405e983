//! Rendezvous (highest random weight) hashing: which live node owns a
//! room.
//!
//! Every node scores every (node, room) pair with the same hash and the
//! highest score wins, so nodes that see the same live set agree on every
//! owner without talking to each other, and a node that leaves or joins
//! moves only the rooms it wins or loses (about 1/n of them), not a
//! reshuffle of all rooms as `hash % n` would.

use confab_codec::RoomId;
use xxhash_rust::xxh3::xxh3_64;

use super::NodeId;

/// The score of `node` for `room`: XXH3-64 (a fixed, portable function, so
/// nodes of any build agree) of the node id's length, the node id, and the
/// room id.
pub fn score(node: &NodeId, room: &RoomId) -> u64 {
    let (n, r) = (node.as_str().as_bytes(), room.as_bytes());
    let mut buf = Vec::with_capacity(1 + n.len() + r.len());
    // Node ids are at most 64 bytes: the length prefix keeps ("ab", "c")
    // and ("a", "bc") apart.
    buf.push(n.len() as u8);
    buf.extend_from_slice(n);
    buf.extend_from_slice(r);
    xxh3_64(&buf)
}

/// The owner of `room` among `nodes`: the highest [`score`], ties (which
/// need a 64-bit collision) to the greater node id. `None` when there is
/// no node.
pub fn owner<'a>(room: &RoomId, nodes: impl IntoIterator<Item = &'a NodeId>) -> Option<&'a NodeId> {
    nodes
        .into_iter()
        .max_by(|a, b| (score(a, room), *a).cmp(&(score(b, room), *b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<NodeId> {
        names.iter().map(|n| NodeId::new(*n).expect("id")).collect()
    }

    fn rooms(n: usize) -> Vec<RoomId> {
        (0..n)
            .map(|i| RoomId::new(format!("room-{i}")).expect("id"))
            .collect()
    }

    #[test]
    fn the_owner_does_not_depend_on_the_order_of_the_nodes() {
        let a = nodes(&["n1", "n2", "n3"]);
        let b = nodes(&["n3", "n1", "n2"]);
        for r in rooms(200) {
            assert_eq!(owner(&r, &a), owner(&r, &b));
        }
        assert_eq!(owner(&rooms(1)[0], &Vec::<NodeId>::new()), None);
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_rooms_and_they_spread() {
        let all = nodes(&["n1", "n2", "n3", "n4"]);
        let rest: Vec<NodeId> = all.iter().filter(|n| n.as_str() != "n2").cloned().collect();
        let mut moved_to = std::collections::HashMap::new();
        let mut owned = std::collections::HashMap::new();
        for r in rooms(4000) {
            let before = owner(&r, &all).expect("owner");
            *owned.entry(before.as_str()).or_insert(0) += 1;
            let after = owner(&r, &rest).expect("owner");
            if before.as_str() == "n2" {
                *moved_to.entry(after.as_str()).or_insert(0) += 1;
            } else {
                assert_eq!(before, after, "{r}: only n2's rooms move");
            }
        }
        // Balanced within a wide margin, and n2's rooms go to all others.
        for n in ["n1", "n2", "n3", "n4"] {
            let c = owned[n];
            assert!((700..1300).contains(&c), "{n} owns {c} of 4000");
        }
        assert_eq!(moved_to.len(), 3, "{moved_to:?}");
    }

    #[test]
    fn scores_are_stable_across_builds() {
        // XXH3-64 is specified: this value must never change, or nodes of
        // two builds would disagree on owners.
        let n = NodeId::new("node-a").expect("id");
        let r = RoomId::new("general").expect("id");
        assert_ne!(
            score(&n, &r),
            score(&NodeId::new("node-b").expect("id"), &r)
        );
        let mut buf = vec![6u8];
        buf.extend_from_slice(b"node-ageneral");
        assert_eq!(score(&n, &r), xxh3_64(&buf));
        assert_eq!(score(&n, &r), 0xe477_5fa0_0136_2392);
    }
}
