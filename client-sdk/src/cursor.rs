//! Cursor persistence: the last sequence delivered to the application, per
//! room.
//!
//! [`Client::subscribe`](crate::Client::subscribe) starts a room from its
//! stored cursor + 1, so an application restarted after any offline span
//! picks up exactly where it stopped: the broker replays everything after
//! the cursor from its log.
//!
//! The SDK moves a room's cursor when the application takes an event from
//! its [`Subscription`](crate::Subscription). `set` is called on that path,
//! inside async code, so implementations must not block: the provided
//! [`FileCursorStore`] updates memory and writes the file from a background
//! task.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use confab_codec::{RoomId, Seq};
use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tracing::warn;

use crate::error::ClientError;

/// Where the last delivered sequence of each room is kept.
///
/// Called from async code: `get`, `set` and `remove` must return quickly
/// and never block on IO. Durable implementations buffer in memory and
/// persist in the background or in [`CursorStore::flush`].
///
/// A store keeping cursors in the application's own database could look
/// like this (with a map standing in for the database):
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::Mutex;
/// use confab_client::confab_codec::{RoomId, Seq};
/// use confab_client::{ClientConfig, CursorStore};
///
/// #[derive(Debug, Default)]
/// struct AppDbCursors {
///     rows: Mutex<HashMap<RoomId, Seq>>,
/// }
///
/// impl CursorStore for AppDbCursors {
///     fn get(&self, room: &RoomId) -> Option<Seq> {
///         self.rows.lock().unwrap().get(room).copied()
///     }
///     fn set(&self, room: &RoomId, seq: Seq) {
///         // Must not block: a real database write would be queued here and
///         // committed by a background task or in `flush`.
///         self.rows.lock().unwrap().insert(room.clone(), seq);
///     }
///     fn remove(&self, room: &RoomId) {
///         self.rows.lock().unwrap().remove(room);
///     }
/// }
///
/// let config = ClientConfig::new("confab://127.0.0.1:7400", "alice", "phone")?
///     .cursor_store(AppDbCursors::default());
/// # let _ = config;
/// # Ok::<(), confab_client::ClientError>(())
/// ```
pub trait CursorStore: Send + Sync + fmt::Debug + 'static {
    /// The last sequence delivered in `room`, or `None` if the room was
    /// never read (or was forgotten).
    fn get(&self, room: &RoomId) -> Option<Seq>;

    /// Records that `seq` was delivered in `room`.
    fn set(&self, room: &RoomId, seq: Seq);

    /// Forgets `room`.
    fn remove(&self, room: &RoomId);

    /// The cursor of the last inbox sync the SDK ran by itself
    /// ([`ClientConfig::inbox_sync`](crate::ClientConfig::inbox_sync)), or
    /// 0. The default keeps none, so every automatic sync reports every
    /// room.
    fn inbox_cursor(&self) -> u64 {
        0
    }

    /// Records the cursor of an inbox sync the SDK ran by itself. Must not
    /// block, as [`CursorStore::set`]. The default forgets it.
    fn set_inbox_cursor(&self, _cursor: u64) {}

    /// Persists every change made so far. The default does nothing, for
    /// stores without persistence. Implementations should be cancel-safe
    /// (the provided ones are: an interrupted flush is redone by the next).
    ///
    /// # Errors
    /// [`ClientError::CursorStore`] if the changes could not be persisted.
    fn flush(&self) -> BoxFuture<'_, Result<(), ClientError>> {
        Box::pin(async { Ok(()) })
    }
}

/// Cursors in memory only: an application restart starts every room afresh.
/// The default store.
///
/// ```
/// use confab_client::confab_codec::{RoomId, Seq};
/// use confab_client::{CursorStore, MemoryCursorStore};
///
/// let store = MemoryCursorStore::new();
/// let room = RoomId::new("general")?;
/// store.set(&room, Seq(42));
/// assert_eq!(store.get(&room), Some(Seq(42)));
/// assert_eq!(store.snapshot().len(), 1);
/// # Ok::<(), confab_client::ClientError>(())
/// ```
#[derive(Debug, Default)]
pub struct MemoryCursorStore {
    map: Mutex<HashMap<RoomId, Seq>>,
    inbox: AtomicU64,
}

impl MemoryCursorStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of every cursor.
    pub fn snapshot(&self) -> HashMap<RoomId, Seq> {
        lock(&self.map).clone()
    }
}

impl CursorStore for MemoryCursorStore {
    fn get(&self, room: &RoomId) -> Option<Seq> {
        lock(&self.map).get(room).copied()
    }

    fn set(&self, room: &RoomId, seq: Seq) {
        lock(&self.map).insert(room.clone(), seq);
    }

    fn remove(&self, room: &RoomId) {
        lock(&self.map).remove(room);
    }

    fn inbox_cursor(&self) -> u64 {
        self.inbox.load(Ordering::Acquire)
    }

    fn set_inbox_cursor(&self, cursor: u64) {
        self.inbox.store(cursor, Ordering::Release);
    }
}

/// How long the background writer of a [`FileCursorStore`] waits after a
/// change before writing, so that a burst of deliveries costs one write.
pub const FILE_FLUSH_DELAY: Duration = Duration::from_millis(50);

const HEADER: &str = "confab-cursors v1";

/// Cursors in a file, loaded once at open and rewritten atomically (temp
/// file, fsync, rename, fsync of the directory) by a background task shortly
/// after each change, and by [`CursorStore::flush`].
///
/// A crash can lose at most the changes of the last [`FILE_FLUSH_DELAY`]:
/// after a restart those events are delivered again (the store is never
/// corrupted, and never moves backwards past a completed flush).
/// [`Client::close`](crate::Client::close) flushes.
///
/// The format is text: a header line, then one `seq<TAB>room` line per room
/// (room ids cannot contain control characters), and an `inbox<TAB>cursor`
/// line for the inbox cursor once there is one.
///
/// ```no_run
/// # async fn run() -> Result<(), confab_client::ClientError> {
/// use confab_client::FileCursorStore;
///
/// let store = FileCursorStore::open("/var/lib/myapp/cursors").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FileCursorStore {
    inner: Arc<FileInner>,
}

struct FileInner {
    path: PathBuf,
    map: Mutex<HashMap<RoomId, Seq>>,
    /// The inbox cursor (0: none).
    inbox: AtomicU64,
    /// Bumped by every change.
    version: AtomicU64,
    /// The version on disk; the lock serializes writers.
    written: tokio::sync::Mutex<u64>,
    wake: Arc<Notify>,
}

impl fmt::Debug for FileCursorStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileCursorStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl FileCursorStore {
    /// Loads the store from `path` (a missing file is an empty store) and
    /// starts its background writer. Must be called inside a tokio runtime.
    /// Cancel-safe: nothing is started before the file is read.
    ///
    /// # Errors
    /// [`ClientError::CursorStore`] if the file exists but cannot be read or
    /// is not a cursor file. A damaged file is never silently replaced: that
    /// would restart rooms live and skip messages.
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, ClientError> {
        let path = path.into();
        let (map, inbox) = match tokio::fs::read_to_string(&path).await {
            Ok(text) => parse(&text)
                .map_err(|e| ClientError::CursorStore(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HashMap::new(), 0),
            Err(e) => {
                return Err(ClientError::CursorStore(format!(
                    "cannot read {}: {e}",
                    path.display()
                )))
            }
        };
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(FileInner {
            path,
            map: Mutex::new(map),
            inbox: AtomicU64::new(inbox),
            version: AtomicU64::new(0),
            written: tokio::sync::Mutex::new(0),
            wake: wake.clone(),
        });
        tokio::spawn(background_writer(Arc::downgrade(&inner), wake));
        Ok(Self { inner })
    }

    /// The file's path.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), confab_client::ClientError> {
    /// let store = confab_client::FileCursorStore::open("cursors.txt").await?;
    /// println!("cursors kept in {}", store.path().display());
    /// # Ok(()) }
    /// ```
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn changed(&self) {
        self.inner.version.fetch_add(1, Ordering::AcqRel);
        self.inner.wake.notify_one();
    }
}

impl CursorStore for FileCursorStore {
    fn get(&self, room: &RoomId) -> Option<Seq> {
        lock(&self.inner.map).get(room).copied()
    }

    fn set(&self, room: &RoomId, seq: Seq) {
        let old = lock(&self.inner.map).insert(room.clone(), seq);
        if old != Some(seq) {
            self.changed();
        }
    }

    fn remove(&self, room: &RoomId) {
        if lock(&self.inner.map).remove(room).is_some() {
            self.changed();
        }
    }

    fn inbox_cursor(&self) -> u64 {
        self.inner.inbox.load(Ordering::Acquire)
    }

    fn set_inbox_cursor(&self, cursor: u64) {
        if self.inner.inbox.swap(cursor, Ordering::AcqRel) != cursor {
            self.changed();
        }
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), ClientError>> {
        Box::pin(write_if_changed(&self.inner))
    }
}

impl Drop for FileInner {
    fn drop(&mut self) {
        // Lets the background writer notice that the store is gone.
        self.wake.notify_one();
    }
}

async fn background_writer(inner: Weak<FileInner>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        tokio::time::sleep(FILE_FLUSH_DELAY).await;
        let Some(inner) = inner.upgrade() else { return };
        if let Err(e) = write_if_changed(&inner).await {
            warn!(error = %e, "cannot persist cursors; will retry on the next change");
        }
    }
}

async fn write_if_changed(inner: &FileInner) -> Result<(), ClientError> {
    let mut written = inner.written.lock().await;
    // Read the version before the snapshot: a change racing with it bumps
    // the version again and causes one more write later.
    let version = inner.version.load(Ordering::Acquire);
    if version == *written {
        return Ok(());
    }
    let text = render(&lock(&inner.map), inner.inbox.load(Ordering::Acquire));
    let path = inner.path.clone();
    tokio::task::spawn_blocking(move || write_atomic(&path, text.as_bytes()))
        .await
        .map_err(|e| ClientError::CursorStore(format!("writer task failed: {e}")))?
        .map_err(|e| {
            ClientError::CursorStore(format!("cannot write {}: {e}", inner.path.display()))
        })?;
    *written = version;
    Ok(())
}

fn render(map: &HashMap<RoomId, Seq>, inbox: u64) -> String {
    let mut rooms: Vec<_> = map.iter().collect();
    rooms.sort();
    let mut text = String::with_capacity(32 + rooms.len() * 24);
    text.push_str(HEADER);
    text.push('\n');
    for (room, seq) in rooms {
        text.push_str(&format!("{}\t{room}\n", seq.0));
    }
    if inbox != 0 {
        text.push_str(&format!("{INBOX}\t{inbox}\n"));
    }
    text
}

/// The first field of the inbox cursor's line (never a number).
const INBOX: &str = "inbox";

fn parse(text: &str) -> Result<(HashMap<RoomId, Seq>, u64), String> {
    let mut lines = text.lines();
    if lines.next() != Some(HEADER) {
        return Err(format!(
            "not a cursor file (expected the header `{HEADER}`)"
        ));
    }
    let mut map = HashMap::new();
    let mut inbox = 0;
    for (n, line) in lines.enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = || format!("line {} is malformed", n + 2);
        let (seq, room) = line.split_once('\t').ok_or_else(bad)?;
        if seq == INBOX {
            inbox = room.parse().map_err(|_| bad())?;
            continue;
        }
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        let room = RoomId::new(room).map_err(|_| bad())?;
        map.insert(room, Seq(seq));
    }
    Ok((map, inbox))
}

/// Replaces `path` with `data` so that a crash leaves either the old or the
/// new content, never a mix.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    // Makes the rename itself durable. Not possible on every platform.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a map half-updated.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn room(s: &str) -> RoomId {
        RoomId::new(s).unwrap()
    }

    #[test]
    fn memory_store() {
        let s = MemoryCursorStore::new();
        assert_eq!(s.get(&room("a")), None);
        s.set(&room("a"), Seq(5));
        s.set(&room("a"), Seq(7));
        s.set(&room("b"), Seq(1));
        assert_eq!(s.get(&room("a")), Some(Seq(7)));
        s.remove(&room("b"));
        assert_eq!(s.get(&room("b")), None);
        assert_eq!(s.snapshot().len(), 1);
    }

    #[test]
    fn render_and_parse_round_trip() {
        let mut map = HashMap::new();
        map.insert(room("general"), Seq(42));
        map.insert(room("with space and ünïcode"), Seq(u64::MAX));
        assert_eq!(parse(&render(&map, 0)).unwrap(), (map.clone(), 0));
        // A room may be called `inbox`: its line starts with a number.
        map.insert(room("inbox"), Seq(5));
        assert_eq!(parse(&render(&map, 77)).unwrap(), (map, 77));
        assert!(parse(&format!("{HEADER}\ninbox\tx\n")).is_err());
        assert!(parse("").is_err());
        assert!(parse("something else\n1\tx\n").is_err());
        assert!(parse(&format!("{HEADER}\nnot-a-number\tx\n")).is_err());
        assert!(parse(&format!("{HEADER}\n12\n")).is_err());
        assert_eq!(parse(&format!("{HEADER}\n")).unwrap().0.len(), 0);
    }

    #[tokio::test]
    async fn file_store_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursors");
        let s = FileCursorStore::open(&path).await.unwrap();
        assert_eq!(s.get(&room("a")), None);
        s.set(&room("a"), Seq(10));
        s.set(&room("b c"), Seq(3));
        s.flush().await.unwrap();
        s.set(&room("a"), Seq(11));
        s.remove(&room("b c"));
        assert_eq!(s.inbox_cursor(), 0);
        s.set_inbox_cursor(1_796_650_000_000_123);
        s.flush().await.unwrap();
        drop(s);

        let s = FileCursorStore::open(&path).await.unwrap();
        assert_eq!(s.inbox_cursor(), 1_796_650_000_000_123);
        assert_eq!(s.get(&room("a")), Some(Seq(11)));
        assert_eq!(s.get(&room("b c")), None);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("cursors")]);
    }

    #[tokio::test]
    async fn file_store_writes_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursors");
        let s = FileCursorStore::open(&path).await.unwrap();
        s.set(&room("r"), Seq(99));
        let mut found = false;
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if let Ok(text) = std::fs::read_to_string(&path) {
                if text.contains("99\tr") {
                    found = true;
                    break;
                }
            }
        }
        assert!(found, "the background writer never wrote the file");
    }

    #[tokio::test]
    async fn a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursors");
        std::fs::write(&path, "garbage").unwrap();
        let err = FileCursorStore::open(&path).await.unwrap_err();
        assert!(matches!(err, ClientError::CursorStore(_)));
    }

    #[tokio::test]
    async fn flush_without_changes_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cursors");
        let s = FileCursorStore::open(&path).await.unwrap();
        s.flush().await.unwrap();
        assert!(!path.exists());
    }
}
