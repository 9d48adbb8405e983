//! A [`RoomLog`] wrapper that fails on demand, for testing what the broker
//! does when its storage does (the sequencer's property tests, the
//! supervision tests, and embedders' own fault tests).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use confab_codec::{RoomId, Seq};

use super::Durability;
use super::{
    Append, IdemKey, LogBounds, MetaEntry, MetaWrite, Original, RoomLog, SpaceState, SpaceStatus,
    StorageError, StoredRecord,
};

/// How the next commits end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitFault {
    /// Commits go through.
    None,
    /// The engine refuses the write: nothing is stored.
    Refuse,
    /// The engine stores the write and then reports an error (as a failed
    /// fsync does): the caller cannot know whether it is stored.
    WriteThenFail,
    /// The commit panics (a bug in the engine or its bindings).
    Panic,
    /// The disk is full: the engine refuses the write with
    /// [`StorageError::NoSpace`], nothing is stored (and
    /// [`RoomLog::probe_space`] fails the same way while this is set).
    NoSpace,
    /// The engine refuses the commit's first room only, as cluster mode
    /// refuses a room whose writer was fenced: nothing of that room is
    /// stored, the other rooms and the metadata are, and the commit
    /// reports [`StorageError::Rooms`] naming the room.
    RefuseFirstRoom,
}

impl CommitFault {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Refuse,
            2 => Self::WriteThenFail,
            3 => Self::Panic,
            4 => Self::NoSpace,
            5 => Self::RefuseFirstRoom,
            _ => Self::None,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Refuse => 1,
            Self::WriteThenFail => 2,
            Self::Panic => 3,
            Self::NoSpace => 4,
            Self::RefuseFirstRoom => 5,
        }
    }
}

/// What [`FaultyLog`]'s read hook is told about a read.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ReadSeen<'a> {
    /// The [`RoomLog`] method (`"bounds"`, `"meta_get"`, ...).
    pub method: &'static str,
    /// The room read, for the reads of one room.
    pub room: Option<&'a RoomId>,
}

/// Called before every read (on the reading thread, which it may block).
pub type ReadHook = Arc<dyn Fn(ReadSeen<'_>) + Send + Sync>;

/// Wraps a log; commits and reads fail as told, and reads can be watched
/// or held up by a hook.
pub struct FaultyLog {
    inner: Arc<dyn RoomLog>,
    commit: AtomicU8,
    reads: AtomicBool,
    hook: RwLock<Option<ReadHook>>,
    /// Full-disk state as the wrapper's callers see it (injected or not).
    space: SpaceState,
}

impl std::fmt::Debug for FaultyLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyLog")
            .field(
                "commit",
                &CommitFault::from_u8(self.commit.load(Ordering::SeqCst)),
            )
            .field("reads_fail", &self.reads.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

impl FaultyLog {
    /// Wraps `inner`, with no fault.
    pub fn new(inner: Arc<dyn RoomLog>) -> Self {
        Self {
            inner,
            commit: AtomicU8::new(0),
            reads: AtomicBool::new(false),
            hook: RwLock::new(None),
            space: SpaceState::default(),
        }
    }

    /// Sets how the following commits end.
    pub fn set_commit_fault(&self, fault: CommitFault) {
        self.commit.store(fault.to_u8(), Ordering::SeqCst);
    }

    /// Makes every read fail, or work again.
    pub fn set_read_fault(&self, fail: bool) {
        self.reads.store(fail, Ordering::SeqCst);
    }

    /// Calls `hook` before every read from now on (`None`: no more).
    pub fn set_read_hook(&self, hook: Option<ReadHook>) {
        *self.hook.write().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    fn read_fault(&self, method: &'static str, room: Option<&RoomId>) -> Result<(), StorageError> {
        let hook = self.hook.read().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(hook) = hook {
            hook(ReadSeen { method, room });
        }
        if self.reads.load(Ordering::SeqCst) {
            return Err(StorageError::Engine("injected read failure".into()));
        }
        Ok(())
    }
}

impl RoomLog for FaultyLog {
    fn commit(
        &self,
        batch: &[Append<'_>],
        meta: &[MetaWrite],
        durability: Durability,
    ) -> Result<(), StorageError> {
        let result = match CommitFault::from_u8(self.commit.load(Ordering::SeqCst)) {
            CommitFault::None => self.inner.commit(batch, meta, durability),
            CommitFault::Refuse => Err(StorageError::Engine("injected: write refused".into())),
            CommitFault::WriteThenFail => self
                .inner
                .commit(batch, meta, durability)
                .and(Err(StorageError::Engine("injected: fsync failed".into()))),
            CommitFault::Panic => panic!("injected: the storage engine fell over"),
            CommitFault::NoSpace => Err(injected_no_space()),
            CommitFault::RefuseFirstRoom => match batch.first() {
                None => self.inner.commit(batch, meta, durability),
                Some(first) => {
                    let refused = first.room.clone();
                    let rest: Vec<Append<'_>> = batch
                        .iter()
                        .filter(|a| *a.room != refused)
                        .cloned()
                        .collect();
                    self.inner
                        .commit(&rest, meta, durability)
                        .and(Err(StorageError::Rooms {
                            failed: vec![refused],
                            message: "injected: the room's append was refused".into(),
                        }))
                }
            },
        };
        self.space.observe(&result);
        result
    }

    fn meta_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.read_fault("meta_get", None)?;
        self.inner.meta_get(key)
    }

    fn meta_scan(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<MetaEntry>, StorageError> {
        self.read_fault("meta_scan", None)?;
        self.inner.meta_scan(prefix, after, limit)
    }

    fn bounds(&self, room: &RoomId) -> Result<LogBounds, StorageError> {
        self.read_fault("bounds", Some(room))?;
        self.inner.bounds(room)
    }

    fn read_range(
        &self,
        room: &RoomId,
        from: Seq,
        to: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        self.read_fault("read_range", Some(room))?;
        self.inner.read_range(room, from, to, max_count, max_bytes)
    }

    fn read_before(
        &self,
        room: &RoomId,
        before: Seq,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        self.read_fault("read_before", Some(room))?;
        self.inner.read_before(room, before, max_count, max_bytes)
    }

    fn trim(
        &self,
        room: &RoomId,
        before: Seq,
        forget: &[IdemKey<'_>],
        durability: Durability,
    ) -> Result<(), StorageError> {
        self.inner.trim(room, before, forget, durability)
    }

    fn original(&self, room: &RoomId, key: IdemKey<'_>) -> Result<Option<Original>, StorageError> {
        self.read_fault("original", Some(room))?;
        self.inner.original(room, key)
    }

    fn high_water(&self, sender: &str) -> Result<u64, StorageError> {
        self.read_fault("high_water", None)?;
        self.inner.high_water(sender)
    }

    fn log_rooms(&self, after: Option<&RoomId>, limit: usize) -> Result<Vec<RoomId>, StorageError> {
        self.read_fault("log_rooms", None)?;
        self.inner.log_rooms(after, limit)
    }

    fn room_dropped(&self, room: &RoomId) {
        self.inner.room_dropped(room);
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush()
    }

    fn space(&self) -> SpaceStatus {
        self.space.status()
    }

    fn probe_space(&self) -> Result<(), StorageError> {
        let result = match CommitFault::from_u8(self.commit.load(Ordering::SeqCst)) {
            CommitFault::NoSpace => Err(injected_no_space()),
            _ => self.inner.probe_space(),
        };
        self.space.observe(&result);
        result
    }
}

fn injected_no_space() -> StorageError {
    StorageError::NoSpace("injected: No space left on device".into())
}
