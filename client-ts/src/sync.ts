/**
 * Per-room gap sync: the pure state machine behind exactly-once, in-order
 * delivery (a port of the Rust SDK's `client-sdk/src/sync.rs`).
 *
 * The broker promises a gap-free stream per subscription, but the SDK does
 * not rely on it: every room entry goes through a {@link RoomSync}, which
 * knows the last sequence handed to the application and decides, entry by
 * entry, what to do:
 *
 * - `seq == last + 1`: deliver it, then everything buffered that now follows;
 * - `seq <= last`: a duplicate (a replay overlapping what was seen), drop it;
 * - `seq > last + 1`: a gap. Buffer the entry and ask for the missing range
 *   from history (`HistoryRequest After last`). Further out-of-order entries
 *   are buffered too, up to a bound; past it the buffer is dropped and the
 *   room is resubscribed from `last + 1`, which makes the broker replay
 *   everything in order.
 *
 * No IO, no clock: inputs are method calls, outputs are {@link SyncAction}s
 * pushed to an array. The client performs them.
 *
 * @module
 */

import type { Seq, StartAt } from './codec/index.js';

/** What the client must do after an input. */
export type SyncAction<E> =
  /** Hand this entry to the application; it is the next one in order. */
  | { kind: 'deliver'; event: E }
  /** This sequence was already delivered; it was dropped. */
  | { kind: 'duplicate'; seq: Seq }
  /** Read history after `after` (exclusive), at most `limit` entries, and feed the page to `onHistory`. */
  | { kind: 'fetchHistory'; after: Seq; limit: number }
  /** Subscribe again from this sequence, then report the result to `onSubscribed`. */
  | { kind: 'resubscribe'; from: Seq }
  /** These sequences are no longer retained by the broker and will never be delivered. */
  | { kind: 'truncated'; from: Seq; to: Seq };

type Mode = 'normal' | 'resyncing';

/** The sync state of one room. `E` is anything with a `seq`. */
export class RoomSync<E extends { seq: Seq }> {
  /** Last delivered sequence; `null` for a live subscription whose head is not known yet. */
  private last: Seq | null;
  /** Entries after a gap, by sequence; every key is above `last + 1`. */
  private readonly buffer = new Map<Seq, E>();
  /** The anchor of the history request in flight, if any. */
  private fill: Seq | null = null;
  private mode: Mode = 'normal';
  private readonly maxBuffer: number;
  private readonly page: number;

  /**
   * A room whose last delivered sequence is `last` (`null`: start live). At
   * most `maxBuffer` out-of-order entries are held; history is read `page`
   * entries at a time.
   */
  constructor(last: Seq | null, maxBuffer: number, page: number) {
    this.last = last;
    this.maxBuffer = Math.max(1, maxBuffer);
    this.page = Math.min(0xffff, Math.max(1, page));
  }

  /** The last delivered sequence. */
  lastDelivered(): Seq | null {
    return this.last;
  }

  /** Entries held after a gap. */
  buffered(): number {
    return this.buffer.size;
  }

  /** Where a (re)subscription must start so that nothing is missed. */
  startAt(): StartAt {
    return this.last === null ? 'live' : { from: this.last + 1n };
  }

  /** A room entry arrived (live or replayed). */
  onEvent(event: E, out: SyncAction<E>[]): void {
    const last = this.last;
    if (last === null) {
      // Live subscription not anchored yet: keep the entry until the
      // SubscribeAck tells the head (the broker sends the ack first, so
      // this is defensive).
      if (this.buffer.size < this.maxBuffer) this.buffer.set(event.seq, event);
      return;
    }
    const seq = event.seq;
    if (seq <= last) {
      out.push({ kind: 'duplicate', seq });
    } else if (seq === last + 1n) {
      this.deliver(event, out);
    } else if (this.mode === 'resyncing') {
      // The resubscription will replay it in order.
    } else if (this.buffer.size >= this.maxBuffer && !this.buffer.has(seq)) {
      this.resync(out);
    } else {
      this.buffer.set(seq, event);
      this.requestFill(out);
    }
  }

  /**
   * The page answering the outstanding `fetchHistory`: `first` is the
   * room's oldest retained sequence, `events` ascending. While a gap
   * remains, the next page is requested as long as each page moves
   * delivery forward; a page that does not falls back to a resubscription,
   * so a disagreeing broker cannot cause a request loop.
   */
  onHistory(first: Seq, events: E[], out: SyncAction<E>[]): void {
    const anchor = this.fill;
    if (anchor === null) return;
    this.fill = null;
    if (this.last === null) return;
    this.skipTruncated(first, out);
    for (const event of events) {
      const last = this.last;
      if (last === null) break;
      const seq = event.seq;
      if (seq <= last) out.push({ kind: 'duplicate', seq });
      else if (seq === last + 1n) this.deliver(event, out);
      else if (this.buffer.size < this.maxBuffer) this.buffer.set(seq, event);
    }
    if (this.buffer.size === 0 || this.mode !== 'normal') return;
    if (this.last !== null && this.last > anchor) {
      this.requestFill(out);
    } else {
      // History has nothing between `last` and the buffered entries: the
      // broker's view disagrees with ours. Start over from the log.
      this.resync(out);
    }
  }

  /** The outstanding history request failed. Falls back to a resubscription if a gap remains. */
  onFillFailed(out: SyncAction<E>[]): void {
    if (this.fill !== null && this.buffer.size > 0 && this.mode === 'normal') {
      this.fill = null;
      this.resync(out);
    } else {
      this.fill = null;
    }
  }

  /**
   * The broker accepted a (re)subscription: `head` is the room's last
   * sequence, `first` its oldest retained one, `truncated` whether the
   * requested start was older than `first`.
   */
  onSubscribed(head: Seq, first: Seq, truncated: boolean, out: SyncAction<E>[]): void {
    this.mode = 'normal';
    if (this.last === null) this.last = head;
    if (truncated) this.skipTruncated(first, out);
    this.drainBuffer(out);
    if (this.buffer.size > 0) this.requestFill(out);
  }

  /**
   * The connection was lost. The next connection resubscribes from
   * `last + 1`, which replays everything buffered here, so the buffer and
   * any history request are dropped.
   */
  onDisconnected(): void {
    this.buffer.clear();
    this.fill = null;
    this.mode = 'normal';
  }

  private deliver(event: E, out: SyncAction<E>[]): void {
    this.last = event.seq;
    out.push({ kind: 'deliver', event });
    this.drainBuffer(out);
  }

  /** Delivers buffered entries that now follow `last`; drops stale ones. */
  private drainBuffer(out: SyncAction<E>[]): void {
    let last = this.last;
    if (last === null) return;
    for (const seq of [...this.buffer.keys()].sort(cmp)) {
      const event = this.buffer.get(seq);
      if (event === undefined) continue;
      if (seq <= last) {
        this.buffer.delete(seq);
        out.push({ kind: 'duplicate', seq });
      } else if (seq === last + 1n) {
        this.buffer.delete(seq);
        out.push({ kind: 'deliver', event });
        last = seq;
      } else {
        break;
      }
    }
    this.last = last;
  }

  /** Everything before `first` is gone from the broker: skip it. */
  private skipTruncated(first: Seq, out: SyncAction<E>[]): void {
    const last = this.last;
    if (last === null) return;
    if (first > last + 1n) {
      out.push({ kind: 'truncated', from: last + 1n, to: first - 1n });
      this.last = first - 1n;
      this.drainBuffer(out);
    }
  }

  /** Asks for the entries between `last` and the first buffered one, unless a request is out. */
  private requestFill(out: SyncAction<E>[]): void {
    const last = this.last;
    if (last === null || this.buffer.size === 0 || this.fill !== null) return;
    const next = [...this.buffer.keys()].sort(cmp)[0];
    if (next === undefined) return;
    const missing = next - last - 1n;
    const limit = Number(missing > BigInt(this.page) ? BigInt(this.page) : missing < 1n ? 1n : missing);
    this.fill = last;
    out.push({ kind: 'fetchHistory', after: last, limit });
  }

  /** Drops the buffer and resubscribes from `last + 1`. */
  private resync(out: SyncAction<E>[]): void {
    this.buffer.clear();
    this.fill = null;
    this.mode = 'resyncing';
    if (this.last !== null) out.push({ kind: 'resubscribe', from: this.last + 1n });
  }
}

function cmp(a: bigint, b: bigint): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
