/**
 * The followed rooms: their subscriptions on the current connection and
 * their per-room {@link RoomSync}, whose actions this module performs
 * (deliver, fill a gap from history, resubscribe, report a truncation).
 *
 * @module
 */

import { type Body, ErrorCode, type EventRecord, type Seq, type SubscribeItem, type SubscribeResult } from './codec/index.js';
import type { CursorStore } from './cursor.js';
import { ClientError } from './errors.js';
import type { Host } from './host.js';
import { type Reply, type Session, reply } from './session.js';
import { RoomSync, type SyncAction } from './sync.js';
import type { RoomEvent, SubscribeOptions } from './types.js';

const UTF8 = new TextEncoder();

/** Most rooms per `Subscribe` frame, so that every ack fits one frame (7.3.2). */
const SUBSCRIBE_CHUNK = 1000;

/** Where a room's subscription stands on the current connection. */
type Wire = 'idle' | 'pending' | 'active';

/** A followed room. */
interface Room {
  /** Tells successive subscriptions of one room apart. */
  id: number;
  sync: RoomSync<EventRecord>;
  opts: SubscribeOptions;
  wire: Wire;
  /** The `subscribe` call waiting for the broker's first answer. */
  ack: Reply<void> | null;
}

/** The rooms' settings. */
export interface RoomsOptions {
  cursorStore: CursorStore;
  maxOutOfOrder: number;
  historyPageSize: number;
}

/** Runs application code; what it throws never reaches the SDK. */
export function safe(f: () => void): void {
  try {
    f();
  } catch (e) {
    console.error('confab-client: an application callback threw', e);
  }
}

/** The followed rooms. */
export class Rooms {
  private readonly rooms = new Map<string, Room>();
  private nextId = 1;

  constructor(
    private readonly host: Host,
    private readonly o: RoomsOptions,
  ) {}

  has(room: string): boolean {
    return this.rooms.has(room);
  }

  /**
   * Follows `room` from `from` (inclusive), else from the cursor + 1, else
   * live; subscribes at once if connected (`ack` is then settled by the
   * broker's answer). Returns the subscription's id.
   */
  add(room: string, opts: SubscribeOptions, ack: Reply<void> | null): number {
    const from = opts.from;
    const last = from !== undefined ? (from > 1n ? from : 1n) - 1n : (this.o.cursorStore.get(room) ?? null);
    const id = this.nextId++;
    this.rooms.set(room, { id, sync: new RoomSync(last, this.o.maxOutOfOrder, this.o.historyPageSize), opts, wire: 'idle', ack });
    if (this.host.session() !== null) this.subscribe([room]);
    return id;
  }

  /** Stops following `room` (subscription `id`); resolves when the broker confirmed it. */
  remove(room: string, id: number): Promise<void> | null {
    const r = this.rooms.get(room);
    if (r === undefined || r.id !== id) return null;
    this.rooms.delete(room);
    safe(() => r.opts.onEnd?.(null));
    const s = this.host.session();
    if (s === null || r.wire === 'idle') return null;
    const [rep, done] = reply<void>();
    const rid = this.host.nextRid();
    s.inflight.set(rid, { kind: 'unsubscribe', reply: rep });
    this.host.send(s, { requestId: rid, flags: 0, body: { type: 'Unsubscribe', rooms: [room] } });
    return done;
  }

  /**
   * The `Hello.resume` items of every room, as far as `budget` bytes
   * allow (3.4); the rooms resumed are marked pending by {@link Rooms.resumed}.
   */
  resumeItems(budget: number): { items: SubscribeItem[]; ids: [string, number][] } {
    const items: SubscribeItem[] = [];
    const ids: [string, number][] = [];
    let left = budget;
    for (const [room, r] of this.rooms) {
      const len = 1 + UTF8.encode(room).length + 9;
      if (len > left) continue;
      left -= len;
      items.push({ room, start: r.sync.startAt() });
      ids.push([room, r.id]);
    }
    return { items, ids };
  }

  /**
   * A connection is up: the rooms of its `Hello.resume` (request `helloRid`)
   * wait for its `SubscribeAck`; the others are subscribed now. Returns the
   * rooms resumed.
   */
  connected(s: Session, helloRid: number, resumed: [string, number][]): string[] {
    const names: string[] = [];
    for (const [room, id] of resumed) {
      const r = this.rooms.get(room);
      if (r !== undefined && r.id === id) {
        r.wire = 'pending';
        names.push(room);
      }
    }
    if (resumed.length > 0) s.inflight.set(helloRid, { kind: 'subscribe', items: resumed });
    this.subscribe([...this.rooms].filter(([, r]) => r.wire === 'idle').map(([room]) => room));
    return names;
  }

  /** The connection was lost: every room is resumed on the next one. */
  onConnectionLost(): void {
    for (const r of this.rooms.values()) {
      r.wire = 'idle';
      r.sync.onDisconnected();
      r.ack?.resolve(); // registered; resumed on the next connection
      r.ack = null;
    }
  }

  /** The client stops: subscriptions end with `error` (`null` after `close`). */
  endAll(error: ClientError | null, err: ClientError): void {
    for (const r of this.rooms.values()) {
      r.ack?.reject(err);
      safe(() => r.opts.onEnd?.(error));
    }
    this.rooms.clear();
  }

  /** Room entries arrived (`Event`, `EventBatch`). */
  onEvents(room: string, records: EventRecord[], replayed: boolean): void {
    for (const rec of records) {
      const r = this.rooms.get(room);
      if (r === undefined) return;
      const out: SyncAction<EventRecord>[] = [];
      r.sync.onEvent(rec, out);
      this.apply(room, out, replayed);
    }
  }

  /** The broker's answer to a `Subscribe` (or the `Hello.resume`) of `items`. */
  onSubscribeReply(s: Session, rid: number, items: [string, number][], body: Body): void {
    if (body.type === 'SubscribeAck') {
      this.onSubscribeAck(s, rid, items, body.results);
      return;
    }
    const err = body.type === 'Error' ? ClientError.server(body.code, body.message, body.retryAfterMs) : new ClientError('UnexpectedReply', `${body.type} to a Subscribe`);
    for (const [room, id] of items) this.end(room, id, err);
  }

  /** The broker's answer to a gap fill of subscription `id`. */
  onFillReply(room: string, id: number, body: Body): void {
    const r = this.rooms.get(room);
    if (r === undefined || r.id !== id) return;
    const out: SyncAction<EventRecord>[] = [];
    if (body.type === 'HistoryPage') r.sync.onHistory(body.first, body.events, out);
    else r.sync.onFillFailed(out);
    this.apply(room, out, true);
  }

  /** Subscribes rooms on the current connection from their positions. */
  private subscribe(rooms: string[]): void {
    const s = this.host.session();
    if (s === null) return;
    for (let i = 0; i < rooms.length; i += SUBSCRIBE_CHUNK) {
      const items: SubscribeItem[] = [];
      const ids: [string, number][] = [];
      for (const room of rooms.slice(i, i + SUBSCRIBE_CHUNK)) {
        const r = this.rooms.get(room);
        if (r === undefined) continue;
        items.push({ room, start: r.sync.startAt() });
        ids.push([room, r.id]);
        r.wire = 'pending';
      }
      if (items.length === 0) continue;
      const rid = this.host.nextRid();
      s.inflight.set(rid, { kind: 'subscribe', items: ids });
      this.host.send(s, { requestId: rid, flags: 0, body: { type: 'Subscribe', items } });
    }
  }

  private onSubscribeAck(s: Session, rid: number, items: [string, number][], results: SubscribeResult[]): void {
    // An ack too large for one frame comes in several, with the same
    // request id, in request order (protocol 7.3.2): the rooms past this
    // frame's results wait for the next one.
    if (results.length > 0 && results.length < items.length) {
      s.inflight.set(rid, { kind: 'subscribe', items: items.slice(results.length) });
      items = items.slice(0, results.length);
    }
    items.forEach(([room, id], i) => {
      const result = results[i];
      if (result === undefined) {
        this.end(room, id, new ClientError('UnexpectedReply', 'a SubscribeAck without a result for this room'));
        return;
      }
      const accepted = result.code === ErrorCode.Normal || result.code === ErrorCode.HistoryTruncated;
      const r = this.rooms.get(room);
      if (r === undefined || r.id !== id) {
        if (accepted && r === undefined) {
          // Unsubscribed while the subscribe was in flight.
          const urid = this.host.nextRid();
          s.inflight.set(urid, { kind: 'unsubscribe', reply: null });
          this.host.send(s, { requestId: urid, flags: 0, body: { type: 'Unsubscribe', rooms: [room] } });
        }
        return;
      }
      if (!accepted) {
        this.end(room, id, ClientError.server(result.code, `subscription to room ${room} refused`, 0));
        return;
      }
      const start = r.sync.startAt();
      if (start !== 'live' && result.head + 1n < start.from) {
        // The broker lost entries this client already delivered (its data
        // restored from an old backup): new entries reuse delivered
        // sequences and are dropped as duplicates.
        console.warn(`confab-client: room ${room}: head ${result.head} is behind this client's cursor ${start.from - 1n}`);
      }
      r.wire = 'active';
      r.ack?.resolve();
      r.ack = null;
      const out: SyncAction<EventRecord>[] = [];
      r.sync.onSubscribed(result.head, result.first, result.code === ErrorCode.HistoryTruncated, out);
      this.apply(room, out, true);
    });
  }

  /** The subscription ended for good. */
  private end(room: string, id: number, err: ClientError): void {
    const r = this.rooms.get(room);
    if (r === undefined || r.id !== id) return;
    this.rooms.delete(room);
    r.ack?.reject(err);
    safe(() => r.opts.onEnd?.(err));
  }

  /** Performs a room's sync actions. */
  private apply(room: string, actions: SyncAction<EventRecord>[], replayed: boolean): void {
    for (const a of actions) {
      const r = this.rooms.get(room);
      if (r === undefined) return;
      switch (a.kind) {
        case 'deliver': {
          const event: RoomEvent = { ...a.event, room, replayed };
          safe(() => r.opts.onEvent(event));
          this.o.cursorStore.set(room, a.event.seq);
          break;
        }
        case 'duplicate':
          break;
        case 'fetchHistory':
          this.fill(room, r.id, a.after, a.limit);
          break;
        case 'resubscribe':
          this.subscribe([room]);
          break;
        case 'truncated':
          this.host.emit({ type: 'historyTruncated', room, from: a.from, to: a.to });
          break;
      }
    }
  }

  private fill(room: string, id: number, after: Seq, limit: number): void {
    const s = this.host.session();
    if (s === null) {
      // Offline: the resumption on reconnect fills the gap.
      this.rooms.get(room)?.sync.onFillFailed([]);
      return;
    }
    const rid = this.host.nextRid();
    s.inflight.set(rid, { kind: 'fill', room, id });
    this.host.send(s, { requestId: rid, flags: 0, body: { type: 'HistoryRequest', room, direction: 'After', anchor: after, limit } });
  }
}
