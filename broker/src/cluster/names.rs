//! NATS names of cluster mode: a room's subject, and the checks of the
//! configured names.
//!
//! A room id may hold any printable character, including `.`, `*`, `>`
//! and spaces, which NATS subjects give a meaning to; so a room's subject
//! token is its id in lowercase hex (at most 256 characters).

use std::fmt::Write as _;

use confab_codec::RoomId;

use super::ClusterError;
use crate::base::is_nats_token;

/// The subject of `room`'s log: `<prefix>.<hex of the room id>`.
pub(crate) fn room_subject(prefix: &str, room: &RoomId) -> String {
    let id = room.as_bytes();
    let mut s = String::with_capacity(prefix.len() + 1 + 2 * id.len());
    s.push_str(prefix);
    s.push('.');
    for b in id {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Checks a name used as NATS tokens (`what` names the setting): one or
/// more `.`-separated tokens of ASCII letters, digits, `-` and `_`, when
/// `dots` is true, or a single such token otherwise.
pub(crate) fn check_name(what: &str, name: &str, dots: bool) -> Result<(), ClusterError> {
    let token_ok = |t: &str| t.len() <= 64 && is_nats_token(t);
    let ok = if dots {
        name.split('.').all(token_ok)
    } else {
        token_ok(name)
    };
    if ok {
        Ok(())
    } else {
        Err(ClusterError::Config(format!(
            "{what} {name:?}: use 1-64 ASCII letters, digits, '-' or '_'{}",
            if dots { " per '.'-separated token" } else { "" }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_room_id_makes_one_valid_token() {
        let mut seen = std::collections::HashSet::new();
        for id in [
            "a",
            "room.with.dots",
            "* > spaces",
            "ünïcødé",
            "a.",
            "a",
            &"x".repeat(RoomId::MAX_LEN),
        ] {
            let room = RoomId::new(id).expect("id");
            let s = room_subject("confab.room", &room);
            let token = s.strip_prefix("confab.room.").expect("prefix");
            assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
            assert_eq!(token.len(), 2 * id.len());
            seen.insert(s);
        }
        assert_eq!(seen.len(), 6, "distinct ids, distinct subjects");
        assert_eq!(room_subject("p", &RoomId::new("Az").expect("id")), "p.417a");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("stream", "CONFAB_ROOMS", false).is_ok());
        assert!(check_name("prefix", "confab.room", true).is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>"] {
            assert!(check_name("stream", bad, false).is_err(), "{bad:?}");
        }
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>"] {
            assert!(check_name("prefix", bad, true).is_err(), "{bad:?}");
        }
    }
}
