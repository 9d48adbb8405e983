//! Managed rooms: membership, receipts, typing and the read-side queries.
//! (The running broker's per-room subscriber snapshots are the fan-out's:
//! [`crate::fanout::Room`].)

pub(crate) mod membership;
mod queries;
pub(crate) mod receipts;
pub(crate) mod typing;

pub(crate) use queries::{access, info, list, status};

pub(crate) use crate::fanout::{Room, RoomRegistry};
