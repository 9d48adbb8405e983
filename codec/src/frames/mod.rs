//! Frame bodies, grouped by feature area.

pub mod ephemeral;
pub mod messaging;
pub mod rooms;
pub mod session;
pub mod sync;
