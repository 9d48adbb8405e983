//! The errors of cluster mode's storage and membership.

use crate::storage::StorageError;

/// A failure of the JetStream room log, a room writer or membership.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// NATS or JetStream failed (connection, API error, timeout). Nothing
    /// is known about an append that failed this way unless the error
    /// says so; [`crate::cluster::RoomWriter::append`] finds out itself.
    #[error("nats: {0}")]
    Nats(String),
    /// JetStream refused an append because the room's last chunk is not
    /// the one this writer expected: another writer appended since. The
    /// writer has stepped down for the room; nothing of the refused chunk
    /// is stored.
    #[error(
        "room {room}: append refused, another writer appended after stream sequence {expected}"
    )]
    Fenced {
        /// The room.
        room: String,
        /// The stream sequence of the room's last chunk as this writer
        /// knew it.
        expected: u64,
    },
    /// The writer stepped down for this room earlier: it writes nothing
    /// more to it. Take the room over again to write.
    #[error("room {0}: this writer stepped down; take the room over again")]
    SteppedDown(String),
    /// A chunk in the stream does not decode.
    #[error("room {room}: corrupt chunk at stream sequence {stream_seq}: {why}")]
    Corrupt {
        /// The room.
        room: String,
        /// Where in the stream.
        stream_seq: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The caller broke a precondition (appends not numbered from the
    /// head, another room's entries): a bug in the caller, nothing written.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// A setting is out of range.
    #[error("invalid cluster setting: {0}")]
    Config(String),
}

impl ClusterError {
    /// Whether the writer lost the room (refused append, or refused
    /// before): requests for it must go to the current owner.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            ClusterError::Fenced { .. } | ClusterError::SteppedDown(_)
        )
    }
}

impl From<ClusterError> for StorageError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Corrupt {
                room, stream_seq, ..
            } => StorageError::Corrupt {
                room,
                seq: stream_seq,
            },
            other => StorageError::Engine(other.to_string()),
        }
    }
}

/// A NATS error of any kind, as [`ClusterError::Nats`] with its context.
pub(crate) fn nats(what: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::Nats(format!("{what}: {e}"))
}
