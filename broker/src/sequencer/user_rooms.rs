//! The per-user room limit (`rooms.max_rooms_per_user`): how many managed
//! rooms a user is a member of (invitations do not count, so that nobody
//! can fill another user's quota by inviting them).
//!
//! The count is loaded from the user's room index the first time the
//! sequencer needs it (on its own thread), then kept up to date by every
//! membership change; a failed commit drops every count.

use confab_codec::{ErrorCode, Role, UserId};

use super::core::Core;
use crate::rooms::membership::{member_key, role_from, user_prefix};
use crate::storage::StorageError;

/// Keys read per storage scan.
const PAGE: usize = 1024;

impl Core {
    /// The number of managed rooms `user` is a member of.
    fn joined_count(&mut self, user: &UserId) -> Result<usize, StorageError> {
        if let Some(n) = self.joined.get(user) {
            return Ok(*n);
        }
        let prefix = user_prefix(user);
        let mut n = 0;
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self.log.meta_scan(&prefix, after.as_deref(), PAGE)?;
            for (k, _) in &page {
                let room = k
                    .get(prefix.len()..)
                    .and_then(|r| std::str::from_utf8(r).ok())
                    .and_then(|r| confab_codec::RoomId::new(r).ok());
                let Some(room) = room else { continue };
                let role = self
                    .log
                    .meta_get(&member_key(&room, user))?
                    .and_then(|v| v.first().copied().and_then(role_from));
                if role.is_some_and(|r| r != Role::Invited) {
                    n += 1;
                }
            }
            match page.last() {
                Some((last, _)) if page.len() == PAGE => after = Some(last.clone()),
                _ => break,
            }
        }
        self.joined.insert(user.clone(), n);
        Ok(n)
    }

    /// Refuses with `TooManyRooms` when `user` may not become a member of
    /// one more room.
    pub(super) fn check_user_rooms(&mut self, user: &UserId) -> Result<(), (ErrorCode, String)> {
        let max = self.rooms_cfg.max_rooms_per_user;
        let n = self
            .joined_count(user)
            .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
        if n >= max {
            // Counted: a membership refused by the per-user room limit.
            metrics::counter!("confab_rate_limited_total", "kind" => "rooms_per_user").increment(1);
            return Err((
                ErrorCode::TooManyRooms,
                format!("{user} is already a member of {n} rooms (the limit is {max})"),
            ));
        }
        Ok(())
    }

    /// Keeps the count in step with a membership change from `was` to
    /// `now` (None = not in the room).
    pub(super) fn count_membership(&mut self, user: &UserId, was: Option<Role>, now: Option<Role>) {
        let member = |r: Option<Role>| r.is_some_and(|r| r != Role::Invited);
        if member(was) == member(now) {
            return;
        }
        if !self.joined.contains_key(user) && self.joined_count(user).is_err() {
            // Loaded again (from storage, after this commit) when needed.
            return;
        }
        if let Some(n) = self.joined.get_mut(user) {
            if member(now) {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
        }
    }
}
