//! The per-user room limit (`rooms.max_rooms_per_user`): how many managed
//! rooms a user is a member of (invitations do not count, so that nobody
//! can fill another user's quota by inviting them).
//!
//! The count is read from the user's room index (by a reader thread, see
//! [`super::reads`]) the first time a request needs it, then kept up to date
//! by every membership change; a failed commit drops every count.

use confab_codec::{ErrorCode, Role, UserId};

use super::core::{mismatch, Core, Halt};
use super::reads::{Answer, Need};

impl Core {
    /// Refuses with `TooManyRooms` when `user` may not become a member of
    /// one more room; waits while the user's count is read.
    pub(super) fn check_user_rooms(&mut self, user: &UserId) -> Result<(), Halt> {
        let max = self.rooms_cfg.max_rooms_per_user;
        let n = match self.joined.get(user) {
            Some(n) => *n,
            None => match self.reads.take(Need::Joined(user.clone())) {
                None => return Err(Halt::Wait),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Answer::Joined(n))) => {
                    self.joined.insert(user.clone(), n);
                    n
                }
                Some(Ok(other)) => return Err(mismatch(&other)),
            },
        };
        if n >= max {
            // Counted: a membership refused by the per-user room limit.
            metrics::counter!("confab_rate_limited_total", "kind" => "rooms_per_user").increment(1);
            return Err(Halt::Refuse(
                ErrorCode::TooManyRooms,
                format!("{user} is already a member of {n} rooms (the limit is {max})"),
            ));
        }
        Ok(())
    }

    /// Keeps the count in step with a membership change from `was` to
    /// `now` (None = not in the room). A count not in memory is read when
    /// needed; one being read is read again.
    pub(super) fn count_membership(&mut self, user: &UserId, was: Option<Role>, now: Option<Role>) {
        let member = |r: Option<Role>| r.is_some_and(|r| r != Role::Invited);
        if member(was) == member(now) {
            return;
        }
        self.reads.membership_changed(user);
        if let Some(n) = self.joined.get_mut(user) {
            if member(now) {
                *n += 1;
            } else {
                *n = n.saturating_sub(1);
            }
        }
    }
}
