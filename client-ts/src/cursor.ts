/**
 * Cursor stores: where a device keeps, per room, the last sequence handed
 * to the application, so that `subscribe` resumes after it across page
 * loads and app restarts.
 *
 * @module
 */

import type { Seq } from './codec/index.js';

/**
 * Where cursors live. `get` and `set` are synchronous because they sit on
 * the delivery path: an implementation keeps the values in memory and
 * persists them in the background (and in `flush`).
 */
export interface CursorStore {
  /** The last sequence delivered in `room`, if any. */
  get(room: string): Seq | undefined;
  /** Records that `seq` was delivered in `room` (cursors only move forward). */
  set(room: string, seq: Seq): void;
  /** Forgets `room`. */
  remove(room: string): void;
  /** Persists what is pending. Called by `Client.close`. */
  flush?(): Promise<void>;
}

/** Cursors in memory only: they live as long as the page (or process). */
export class MemoryCursorStore implements CursorStore {
  protected readonly cursors = new Map<string, Seq>();

  get(room: string): Seq | undefined {
    return this.cursors.get(room);
  }

  set(room: string, seq: Seq): void {
    const old = this.cursors.get(room);
    if (old === undefined || seq > old) this.cursors.set(room, seq);
  }

  remove(room: string): void {
    this.cursors.delete(room);
  }

  /** A copy of every cursor. */
  snapshot(): Map<string, Seq> {
    return new Map(this.cursors);
  }
}

/** The part of the Web Storage API a {@link LocalStorageCursorStore} uses. */
export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/**
 * Cursors in `localStorage` (or any {@link StorageLike}), one JSON object
 * under one key. Writes are batched: at most one per `delayMs` (and one on
 * `flush`), and a page that unloads flushes through `pagehide`.
 */
export class LocalStorageCursorStore extends MemoryCursorStore {
  private timer: ReturnType<typeof setTimeout> | undefined;

  /**
   * @param key the storage key, one per device id if a page may switch users.
   * @param storage defaults to `globalThis.localStorage`.
   */
  constructor(
    private readonly key: string = 'confab.cursors',
    private readonly storage: StorageLike = defaultStorage(),
    private readonly delayMs = 250,
  ) {
    super();
    const raw = this.storage.getItem(key);
    if (raw !== null) {
      try {
        const parsed: unknown = JSON.parse(raw);
        if (typeof parsed === 'object' && parsed !== null) {
          for (const [room, value] of Object.entries(parsed)) {
            if (typeof value === 'string' && /^[0-9]+$/.test(value)) this.cursors.set(room, BigInt(value));
          }
        }
      } catch {
        // A corrupt entry starts over: the rooms resume live or from their
        // `subscribe` start, which is what a device without cursors does.
      }
    }
    const g = globalThis as { addEventListener?: (t: string, f: () => void) => void };
    g.addEventListener?.('pagehide', () => this.write());
  }

  override set(room: string, seq: Seq): void {
    super.set(room, seq);
    this.schedule();
  }

  override remove(room: string): void {
    super.remove(room);
    this.schedule();
  }

  async flush(): Promise<void> {
    this.write();
  }

  private schedule(): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => this.write(), this.delayMs);
  }

  private write(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    const obj: Record<string, string> = {};
    for (const [room, seq] of this.cursors) obj[room] = seq.toString();
    this.storage.setItem(this.key, JSON.stringify(obj));
  }
}

function defaultStorage(): StorageLike {
  const s = (globalThis as { localStorage?: StorageLike }).localStorage;
  if (s === undefined) throw new Error('no localStorage here: pass a StorageLike');
  return s;
}

/**
 * Cursors in IndexedDB (one object store, one record per room). Open it
 * with {@link IndexedDbCursorStore.open}, which loads every cursor, so
 * that `get` stays synchronous; writes go to the database in the
 * background, batched, and `flush` waits for them.
 */
export class IndexedDbCursorStore extends MemoryCursorStore {
  private dirty = new Map<string, Seq | null>();
  private writing: Promise<void> = Promise.resolve();
  private timer: ReturnType<typeof setTimeout> | undefined;

  private constructor(
    private readonly db: IDBDatabase,
    private readonly delayMs: number,
  ) {
    super();
  }

  /**
   * Opens (or creates) the database `name` and loads its cursors.
   *
   * @throws if IndexedDB is missing or refuses to open.
   */
  static async open(name = 'confab-cursors', delayMs = 250): Promise<IndexedDbCursorStore> {
    const idb = (globalThis as { indexedDB?: IDBFactory }).indexedDB;
    if (idb === undefined) throw new Error('no IndexedDB here');
    const db = await new Promise<IDBDatabase>((resolve, reject) => {
      const req = idb.open(name, 1);
      req.onupgradeneeded = () => req.result.createObjectStore('cursors');
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error ?? new Error('cannot open IndexedDB'));
    });
    const store = new IndexedDbCursorStore(db, delayMs);
    await new Promise<void>((resolve, reject) => {
      const tx = db.transaction('cursors', 'readonly');
      const req = tx.objectStore('cursors').openCursor();
      req.onsuccess = () => {
        const c = req.result;
        if (c === null) return resolve();
        if (typeof c.key === 'string' && typeof c.value === 'string' && /^[0-9]+$/.test(c.value)) {
          store.cursors.set(c.key, BigInt(c.value));
        }
        c.continue();
      };
      req.onerror = () => reject(req.error ?? new Error('cannot read IndexedDB'));
    });
    return store;
  }

  override set(room: string, seq: Seq): void {
    super.set(room, seq);
    const now = this.cursors.get(room);
    if (now !== undefined) this.dirty.set(room, now);
    this.schedule();
  }

  override remove(room: string): void {
    super.remove(room);
    this.dirty.set(room, null);
    this.schedule();
  }

  async flush(): Promise<void> {
    this.write();
    await this.writing;
  }

  /** Closes the database (after a flush). */
  async close(): Promise<void> {
    await this.flush();
    this.db.close();
  }

  private schedule(): void {
    if (this.timer !== undefined) return;
    this.timer = setTimeout(() => this.write(), this.delayMs);
  }

  private write(): void {
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.dirty.size === 0) return;
    const batch = this.dirty;
    this.dirty = new Map();
    this.writing = this.writing.then(
      () =>
        new Promise<void>((resolve) => {
          const tx = this.db.transaction('cursors', 'readwrite');
          const os = tx.objectStore('cursors');
          for (const [room, seq] of batch) {
            if (seq === null) os.delete(room);
            else os.put(seq.toString(), room);
          }
          tx.oncomplete = () => resolve();
          // A failed write leaves the older cursor in the database: after a
          // reload the room replays a little more, never less.
          tx.onerror = () => resolve();
          tx.onabort = () => resolve();
        }),
    );
  }
}
