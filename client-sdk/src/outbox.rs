//! Durable outbox: publishes that survive the application being killed.
//!
//! Without an [`OutboxStore`], unacknowledged publishes live in the
//! client's memory: they survive reconnections and broker restarts, not the
//! application's own death. With one (a [`FileOutboxStore`], or an
//! implementation over the application's own database), every publish is
//! made durable before [`Client::enqueue`](crate::Client::enqueue) (and
//! `publish`, `publish_message`, `publish_nowait`) returns, and removed once
//! the broker acknowledged it. A client started on the same store sends
//! what an earlier run left, with the same client message ids, before
//! anything new: the broker stores each id once, so a publish that was
//! stored but not yet removed from the store is acknowledged as a duplicate
//! with its original sequence, never stored twice.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use confab_codec::{Body, Frame, Publish};
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::error::ClientError;

/// Where publishes wait, durably, for their acknowledgement.
///
/// The client calls [`OutboxStore::add`] for every publish before the
/// publishing call returns and [`OutboxStore::remove`] once the broker
/// acknowledged it (or refused it for good); a new client takes what an
/// earlier run left with [`OutboxStore::restored`].
pub trait OutboxStore: Send + Sync + 'static {
    /// The publishes an earlier run left unacknowledged, in the order they
    /// were made (ascending client message id). Called once, when a client
    /// starts on the store.
    fn restored(&self) -> Vec<Publish>;

    /// Makes `publish` durable: registers it before returning (a
    /// [`OutboxStore::remove`] of its id may follow at once, even before the
    /// future is polled) and returns a future that resolves once it would
    /// survive the application (or the machine) dying. Implementations batch
    /// concurrent calls.
    ///
    /// # Errors
    /// [`ClientError::Outbox`] if it cannot be stored (IO error, the
    /// store's limit reached).
    fn add(&self, publish: &Publish) -> BoxFuture<'_, Result<(), ClientError>>;

    /// Forgets the publish with this client message id. Must not block;
    /// need not be durable at once (a publish forgotten but found again
    /// after a crash is sent again and acknowledged as a duplicate).
    fn remove(&self, client_msg_id: u64);

    /// Writes everything pending (removals included).
    fn flush(&self) -> BoxFuture<'_, Result<(), ClientError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The file's first bytes.
const MAGIC: &[u8; 8] = b"CFBOX\x00\x00\x01";
/// A record's header: body length (4), CRC-32C of the body (4).
const RECORD_HEADER: usize = 8;
const TAG_ADD: u8 = 1;
const TAG_REMOVE: u8 = 2;
/// Journals smaller than this are never compacted.
const COMPACT_MIN: u64 = 1 << 20;

/// The default [`FileOutboxStore`] limit on the bytes of unacknowledged
/// publishes (64 MiB).
pub const DEFAULT_OUTBOX_MAX_BYTES: u64 = 64 << 20;

/// An outbox in one file: an append-only journal of additions and
/// removals, each record checksummed (CRC-32C), synced (`fdatasync`) before
/// the publishes it adds are acknowledged to the application; concurrent
/// additions share one sync. It is rewritten (temp file, sync, rename,
/// sync of the directory) when it grows past four times what it holds.
///
/// A crash can leave a record half written at the end: it belongs to an
/// addition whose call never returned, and is dropped when the file is
/// opened. Damage anywhere else makes [`FileOutboxStore::open`] fail
/// rather than silently lose publishes.
///
/// ```no_run
/// # async fn run() -> Result<(), confab_client::ClientError> {
/// use confab_client::{Client, ClientConfig, FileCursorStore, FileOutboxStore};
///
/// let config = ClientConfig::new("confab://127.0.0.1:7400", "alice:phone", "phone")?
///     .cursor_store(FileCursorStore::open("/var/lib/myapp/cursors").await?)
///     .outbox_store(FileOutboxStore::open("/var/lib/myapp/outbox").await?);
/// let client = Client::start(config)?;
/// // Durable once this returns, even offline: sent after a restart if need be.
/// let pending = client.publish_nowait("general", "on my way").await?;
/// # let _ = pending;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct FileOutboxStore {
    inner: Arc<FileInner>,
}

struct FileInner {
    path: PathBuf,
    max_bytes: u64,
    /// What the store holds, by client message id, and its payload bytes.
    state: Mutex<Held>,
    /// Restored publishes, taken once.
    restored: Mutex<Option<Vec<Publish>>>,
    ops: mpsc::UnboundedSender<Op>,
}

#[derive(Default)]
struct Held {
    live: BTreeMap<u64, Bytes>,
    live_bytes: u64,
}

enum Op {
    /// A record to append, and who waits for it to be durable.
    Add(Bytes, oneshot::Sender<Result<(), ClientError>>),
    Remove(Bytes),
    Flush(oneshot::Sender<Result<(), ClientError>>),
}

impl fmt::Debug for FileOutboxStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileOutboxStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl FileOutboxStore {
    /// Opens (or creates) the outbox file at `path`, with the default limit
    /// ([`DEFAULT_OUTBOX_MAX_BYTES`]), and starts its writer. Must be called
    /// inside a tokio runtime.
    ///
    /// # Errors
    /// [`ClientError::Outbox`] if the file cannot be read or written, or is
    /// damaged (anywhere but in a last, half-written record).
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, ClientError> {
        Self::open_with_limit(path, DEFAULT_OUTBOX_MAX_BYTES).await
    }

    /// Like [`FileOutboxStore::open`], holding at most `max_bytes` of
    /// unacknowledged publishes (encoded): beyond it, publishing fails with
    /// [`ClientError::Outbox`] until acknowledgements make room.
    ///
    /// # Errors
    /// As [`FileOutboxStore::open`].
    pub async fn open_with_limit(
        path: impl Into<PathBuf>,
        max_bytes: u64,
    ) -> Result<Self, ClientError> {
        let path = path.into();
        let p = path.clone();
        let (file, held) = tokio::task::spawn_blocking(move || load(&p))
            .await
            .map_err(|e| ClientError::Outbox(format!("loader task failed: {e}")))?
            .map_err(|e| ClientError::Outbox(format!("{}: {e}", path.display())))?;
        let restored = held
            .live
            .values()
            .filter_map(|record| decode_publish(record.clone()))
            .collect();
        let (ops, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(FileInner {
            path: path.clone(),
            max_bytes,
            state: Mutex::new(held),
            restored: Mutex::new(Some(restored)),
            ops,
        });
        tokio::spawn(writer(file, path, Arc::downgrade(&inner), rx));
        Ok(Self { inner })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// How many publishes it holds (added and not removed).
    pub fn len(&self) -> usize {
        lock(&self.inner.state).live.len()
    }

    /// Whether it holds no publish.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl OutboxStore for FileOutboxStore {
    fn restored(&self) -> Vec<Publish> {
        lock(&self.inner.restored).take().unwrap_or_default()
    }

    fn add(&self, publish: &Publish) -> BoxFuture<'_, Result<(), ClientError>> {
        let record = match Frame::request(0, publish.clone()).to_bytes() {
            Ok(frame) => frame,
            Err(e) => return Box::pin(async move { Err(ClientError::Codec(e)) }),
        };
        let id = publish.client_msg_id;
        {
            let mut held = lock(&self.inner.state);
            let size = record.len() as u64;
            if held.live_bytes + size > self.inner.max_bytes {
                let max = self.inner.max_bytes;
                return Box::pin(async move {
                    Err(ClientError::Outbox(format!(
                        "full: the unacknowledged publishes take its limit of {max} bytes"
                    )))
                });
            }
            if let Some(old) = held.live.insert(id, record.clone()) {
                held.live_bytes -= old.len() as u64;
            }
            held.live_bytes += size;
        }
        let (tx, rx) = oneshot::channel();
        let sent = self
            .inner
            .ops
            .send(Op::Add(encode_record(TAG_ADD, id, &record), tx));
        Box::pin(async move {
            if sent.is_err() {
                return Err(ClientError::Outbox("its writer stopped".into()));
            }
            rx.await
                .map_err(|_| ClientError::Outbox("its writer stopped".into()))?
        })
    }

    fn remove(&self, client_msg_id: u64) {
        let removed = {
            let mut held = lock(&self.inner.state);
            match held.live.remove(&client_msg_id) {
                Some(old) => {
                    held.live_bytes -= old.len() as u64;
                    true
                }
                None => false,
            }
        };
        if removed {
            let _ = self
                .inner
                .ops
                .send(Op::Remove(encode_record(TAG_REMOVE, client_msg_id, &[])));
        }
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), ClientError>> {
        let (tx, rx) = oneshot::channel();
        let sent = self.inner.ops.send(Op::Flush(tx));
        Box::pin(async move {
            if sent.is_err() {
                return Err(ClientError::Outbox("its writer stopped".into()));
            }
            rx.await
                .map_err(|_| ClientError::Outbox("its writer stopped".into()))?
        })
    }
}

/// A record: length, CRC-32C, then tag, client message id and (for an
/// addition) the `Publish` frame.
fn encode_record(tag: u8, id: u64, frame: &[u8]) -> Bytes {
    let body_len = 1 + 8 + frame.len();
    let mut b = BytesMut::with_capacity(RECORD_HEADER + body_len);
    b.put_u32(body_len as u32);
    b.put_u32(0);
    b.put_u8(tag);
    b.put_u64(id);
    b.put_slice(frame);
    let crc = crc32c::crc32c(&b[RECORD_HEADER..]);
    b[4..8].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

fn decode_publish(frame: Bytes) -> Option<Publish> {
    let mut buf = BytesMut::from(&frame[..]);
    match Frame::decode(&mut buf, u32::MAX) {
        Ok(Some(Frame {
            body: Body::Publish(p),
            ..
        })) => Some(p),
        _ => None,
    }
}

/// Reads the journal (creating it if missing), drops a half-written last
/// record, and returns the file positioned for appending with what it
/// holds.
fn load(path: &Path) -> std::io::Result<(File, Held)> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    if bytes.is_empty() {
        file.write_all(MAGIC)?;
        file.sync_all()?;
        sync_dir(path);
        return Ok((file, Held::default()));
    }
    let damaged = |what: String| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        if MAGIC.starts_with(&bytes[..bytes.len().min(MAGIC.len())]) && bytes.len() < MAGIC.len() {
            // Created, and cut short before its header was synced.
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(MAGIC)?;
            file.sync_all()?;
            return Ok((file, Held::default()));
        }
        return Err(damaged("not an outbox file".into()));
    }
    let mut held = Held::default();
    let mut at = MAGIC.len();
    let mut good_end = at;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn = rest.len() < RECORD_HEADER || {
            let len = (&rest[0..4]).get_u32() as usize;
            rest.len() < RECORD_HEADER + len
        };
        if torn {
            break;
        }
        let len = (&rest[0..4]).get_u32() as usize;
        let crc = (&rest[4..8]).get_u32();
        let body = &rest[RECORD_HEADER..RECORD_HEADER + len];
        let end = at + RECORD_HEADER + len;
        if crc32c::crc32c(body) != crc || body.len() < 9 {
            if end == bytes.len() {
                // The last record, half written when the application died:
                // its addition never returned.
                break;
            }
            return Err(damaged(format!("record at offset {at} is damaged")));
        }
        let mut b = body;
        let tag = b.get_u8();
        let id = b.get_u64();
        match tag {
            TAG_ADD => {
                let frame = Bytes::copy_from_slice(b);
                if decode_publish(frame.clone()).is_none() {
                    return Err(damaged(format!("record at offset {at} holds no publish")));
                }
                held.live_bytes += frame.len() as u64;
                if let Some(old) = held.live.insert(id, frame) {
                    held.live_bytes -= old.len() as u64;
                }
            }
            TAG_REMOVE => {
                if let Some(old) = held.live.remove(&id) {
                    held.live_bytes -= old.len() as u64;
                }
            }
            other => {
                return Err(damaged(format!(
                    "record at offset {at} has an unknown tag {other}"
                )))
            }
        }
        at = end;
        good_end = end;
    }
    if good_end < bytes.len() {
        warn!(path = %path.display(), dropped = bytes.len() - good_end, "outbox: dropping a half-written last record");
        file.set_len(good_end as u64)?;
        file.sync_all()?;
    }
    file.seek(SeekFrom::Start(good_end as u64))?;
    Ok((file, held))
}

/// Appends and syncs batches of records; compacts the journal when it has
/// grown well past what it holds.
async fn writer(
    file: File,
    path: PathBuf,
    inner: std::sync::Weak<FileInner>,
    mut rx: mpsc::UnboundedReceiver<Op>,
) {
    let mut file = Some(file);
    let mut failed: Option<String> = None;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
        }
        let mut data = BytesMut::new();
        let mut waiters = Vec::new();
        for op in batch {
            match op {
                Op::Add(record, tx) => {
                    data.put_slice(&record);
                    waiters.push(tx);
                }
                Op::Remove(record) => data.put_slice(&record),
                Op::Flush(tx) => waiters.push(tx),
            }
        }
        let result = match (&failed, file.take()) {
            (None, Some(f)) => write_batch(f, data.freeze(), &path, &inner)
                .await
                .map(|f| file = Some(f)),
            (Some(e), _) => Err(e.clone()),
            (None, None) => Err("no file".into()),
        };
        if let Err(e) = &result {
            warn!(path = %path.display(), error = %e, "outbox: cannot write");
            failed = Some(e.clone());
        }
        for tx in waiters {
            let _ = tx.send(
                result
                    .clone()
                    .map_err(|e| ClientError::Outbox(format!("{}: {e}", path.display()))),
            );
        }
    }
}

/// Appends one batch and syncs it; then, if the journal holds mostly what
/// was removed, rewrites it from a snapshot of what is held now (records
/// still on their way are appended after it).
async fn write_batch(
    file: File,
    data: Bytes,
    path: &Path,
    inner: &std::sync::Weak<FileInner>,
) -> Result<File, String> {
    let failed = |e: tokio::task::JoinError| format!("writer task failed: {e}");
    let (file, len) = tokio::task::spawn_blocking(move || append(file, &data))
        .await
        .map_err(failed)?
        .map_err(|e| e.to_string())?;
    let snapshot = inner.upgrade().and_then(|i| {
        let held = lock(&i.state);
        (len > COMPACT_MIN && len > 4 * (held.live_bytes + 64)).then(|| held.live.clone())
    });
    let Some(live) = snapshot else {
        return Ok(file);
    };
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        drop(file);
        compact(&path, &live)
    })
    .await
    .map_err(failed)?
    .map_err(|e| e.to_string())
}

/// Appends `data` and syncs it; returns the file and its length.
fn append(mut file: File, data: &[u8]) -> std::io::Result<(File, u64)> {
    if !data.is_empty() {
        file.write_all(data)?;
        file.sync_data()?;
    }
    let len = file.stream_position()?;
    Ok((file, len))
}

/// Replaces the journal with one holding only `live` (temp file, sync,
/// rename, sync of the directory): a crash leaves the old or the new one.
fn compact(path: &Path, live: &BTreeMap<u64, Bytes>) -> std::io::Result<File> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut out = BytesMut::from(&MAGIC[..]);
    for (id, frame) in live {
        out.put_slice(&encode_record(TAG_ADD, *id, frame));
    }
    let mut f = File::create(&tmp)?;
    f.write_all(&out)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(path);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    f.seek(SeekFrom::End(0))?;
    Ok(f)
}

fn sync_dir(path: &Path) {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use confab_codec::{MessageKind, RoomId};

    use super::*;

    fn publish(id: u64, text: &str) -> Publish {
        Publish {
            room: RoomId::new("r").unwrap(),
            client_msg_id: id,
            kind: MessageKind::MESSAGE,
            refers_to: None,
            thread: None,
            payload: Bytes::copy_from_slice(text.as_bytes()),
        }
    }

    #[tokio::test]
    async fn survives_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let s = FileOutboxStore::open(&path).await.unwrap();
        assert!(s.restored().is_empty());
        for i in 1..=5 {
            s.add(&publish(i, &format!("m{i}"))).await.unwrap();
        }
        s.remove(2);
        s.remove(4);
        s.flush().await.unwrap();
        drop(s);
        let s = FileOutboxStore::open(&path).await.unwrap();
        let ids: Vec<u64> = s.restored().iter().map(|p| p.client_msg_id).collect();
        assert_eq!(ids, vec![1, 3, 5]);
        assert_eq!(s.len(), 3);
        // Taken once.
        assert!(s.restored().is_empty());
    }

    #[tokio::test]
    async fn a_half_written_last_record_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let s = FileOutboxStore::open(&path).await.unwrap();
        s.add(&publish(1, "kept")).await.unwrap();
        s.add(&publish(2, "torn")).await.unwrap();
        drop(s);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let full = std::fs::read(&path).unwrap();
        // Every cut inside the last record leaves the first one.
        let second = full.len()
            - encode_record(
                TAG_ADD,
                2,
                &Frame::request(0, publish(2, "torn")).to_bytes().unwrap(),
            )
            .len();
        for cut in second + 1..full.len() {
            std::fs::write(&path, &full[..cut]).unwrap();
            let s = FileOutboxStore::open(&path).await.unwrap();
            let ids: Vec<u64> = s.restored().iter().map(|p| p.client_msg_id).collect();
            assert_eq!(ids, vec![1], "cut at {cut}");
            assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, second);
        }
    }

    #[tokio::test]
    async fn damage_before_the_end_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let s = FileOutboxStore::open(&path).await.unwrap();
        s.add(&publish(1, "first")).await.unwrap();
        s.add(&publish(2, "second")).await.unwrap();
        drop(s);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[MAGIC.len() + RECORD_HEADER + 3] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = FileOutboxStore::open(&path).await.unwrap_err();
        assert!(matches!(err, ClientError::Outbox(_)), "{err}");
        std::fs::write(&path, b"something else entirely").unwrap();
        assert!(FileOutboxStore::open(&path).await.is_err());
    }

    #[tokio::test]
    async fn the_limit_refuses_and_frees() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let s = FileOutboxStore::open_with_limit(&path, 200).await.unwrap();
        s.add(&publish(1, &"x".repeat(100))).await.unwrap();
        let err = s.add(&publish(2, &"y".repeat(100))).await.unwrap_err();
        assert!(err.to_string().contains("full"), "{err}");
        s.remove(1);
        s.add(&publish(2, &"y".repeat(100))).await.unwrap();
    }

    #[tokio::test]
    async fn compaction_keeps_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox");
        let s = FileOutboxStore::open(&path).await.unwrap();
        let big = "z".repeat(4000);
        for i in 1..=600u64 {
            s.add(&publish(i, &big)).await.unwrap();
            if i % 100 != 0 {
                s.remove(i);
            }
        }
        s.flush().await.unwrap();
        // 600 records of 4 KiB were written; 6 are held.
        assert!(std::fs::metadata(&path).unwrap().len() < COMPACT_MIN + 64 * 1024);
        drop(s);
        let s = FileOutboxStore::open(&path).await.unwrap();
        let ids: Vec<u64> = s.restored().iter().map(|p| p.client_msg_id).collect();
        assert_eq!(ids, vec![100, 200, 300, 400, 500, 600]);
    }
}
