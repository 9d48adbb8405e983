//! Managed rooms: membership, receipts, typing and the read-side queries.
//! (The running broker's per-room subscriber snapshots are the fan-out's:
//! [`crate::fanout::Room`].)

pub(crate) mod inbox;
pub(crate) mod membership;
mod queries;
pub(crate) mod receipts;
pub(crate) mod typing;

pub(crate) use queries::{access, info, list, status};

pub(crate) use crate::fanout::{Room, RoomRegistry};

/// Longest room name, topic and avatar URL accepted, in bytes (protocol
/// 8.5).
pub(crate) const MAX_META: [(&str, usize); 3] =
    [("name", 256), ("topic", 4096), ("avatar_url", 2048)];

/// Why `meta` cannot be stored, if it cannot: a field longer than its
/// limit.
pub(crate) fn meta_refusal(meta: &confab_codec::RoomMeta) -> Option<String> {
    let fields = [&meta.name, &meta.topic, &meta.avatar_url];
    MAX_META
        .iter()
        .zip(fields)
        .find(|((_, max), value)| value.len() > *max)
        .map(|((field, max), value)| format!("room {field} of {} bytes exceeds {max}", value.len()))
}

#[cfg(test)]
mod tests {
    use confab_codec::RoomMeta;

    use super::meta_refusal;

    #[test]
    fn meta_fields_have_limits() {
        let mut meta = RoomMeta {
            name: "n".repeat(256),
            topic: "t".repeat(4096),
            avatar_url: "a".repeat(2048),
        };
        assert_eq!(meta_refusal(&meta), None);
        meta.topic.push('t');
        let why = meta_refusal(&meta).expect("refused");
        assert!(why.contains("topic"), "{why}");
    }
}
