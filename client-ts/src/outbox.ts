/**
 * The outbox: publishes not yet acknowledged, in the order they were
 * queued. Each is sent as soon as there is a connection, resent with the
 * same client message id after every reconnection until the broker
 * acknowledges it (it stores it once, protocol 12.2), and sent again after
 * `RateLimited` (the broker's delay) and `StorageFull` (a backoff delay),
 * later publishes waiting behind it in order (docs/sdk.md section 5).
 *
 * @module
 */

import { type Body, type BodyOf, ErrorCode, MessageKind, encodeFrame, isValidId } from './codec/index.js';
import { Backoff, type BackoffConfig } from './backoff.js';
import { ClientError } from './errors.js';
import type { Host } from './host.js';
import { type Reply, reply } from './session.js';
import type { Message, PendingPublish, PublishAck } from './types.js';

const UTF8 = new TextEncoder();

/** A publish not yet acknowledged. */
interface PendingPub {
  publish: BodyOf<'Publish'>;
  reply: Reply<PublishAck>;
  /** Sent on the current connection and not answered yet. */
  onWire: boolean;
  /** Refusals with `RateLimited` while it was alone on the wire. */
  rateLimited: number;
  /** It was the only publish on the wire when last sent. */
  sentAlone: boolean;
  /** Times it was sent. */
  sends: number;
}

/** The outbox's settings. */
export interface OutboxOptions {
  capacity: number;
  rateLimitRetries: number;
  backoff: BackoffConfig;
  random: () => number;
}

/** Unacknowledged publishes. */
export class Outbox {
  private readonly pending = new Map<number, PendingPub>();
  private nextOrder = 0;
  private nextMsgId: bigint;
  private flushWaiters: (() => void)[] = [];
  private spaceWaiters: (() => void)[] = [];
  /** After a `RateLimited` or `StorageFull` refusal: nothing is sent before this. */
  private pausedUntil: number | null = null;
  private pauseTimer: ReturnType<typeof setTimeout> | undefined;
  /** Delays between resends after `StorageFull`: the backoff without its attempt limit. */
  private readonly storageFull: Backoff;
  /**
   * Most publishes on the wire: unlimited normally; after a refusal 1,
   * doubling with every acknowledgement (a slow start, so that a long
   * queue does not meet the limit all at once).
   */
  private window = Number.POSITIVE_INFINITY;

  constructor(
    private readonly host: Host,
    private readonly o: OutboxOptions,
  ) {
    this.storageFull = new Backoff({ ...o.backoff, maxAttempts: null }, o.random);
    // Ids increase over the device's lifetime: the clock in nanoseconds,
    // then one per publish (protocol 12.2); a random offset within the
    // millisecond keeps two instances started together apart.
    this.nextMsgId = BigInt(Date.now()) * 1_000_000n + BigInt(Math.floor(o.random() * 1_000_000));
  }

  /** Unacknowledged publishes. */
  get size(): number {
    return this.pending.size;
  }

  /** Whether another publish fits. */
  hasRoom(): boolean {
    return this.pending.size < this.o.capacity;
  }

  /** Resolves when a publish leaves the outbox (or the client stops). */
  waitForRoom(): Promise<void> {
    return new Promise((r) => this.spaceWaiters.push(r));
  }

  /** Resolves when the outbox is empty. */
  flush(): Promise<void> {
    if (this.pending.size === 0) return Promise.resolve();
    return new Promise((r) => this.flushWaiters.push(r));
  }

  /**
   * Checks a message and makes its `Publish` (without its id yet).
   *
   * @throws {ClientError} `InvalidConfig` or `Codec`.
   */
  static toPublish(m: Message): BodyOf<'Publish'> {
    const kind = m.kind ?? MessageKind.MESSAGE;
    if (!isValidId(m.room, 128)) throw new ClientError('InvalidConfig', `not a room id: ${JSON.stringify(m.room)}`);
    if (!Number.isInteger(kind) || !((kind >= 1 && kind <= 4) || (kind >= 128 && kind <= 255))) {
      throw new ClientError('InvalidConfig', `kind ${kind} is not publishable by a client (1-4, 128-255)`);
    }
    const refersTo = m.refersTo ?? null;
    if (kind >= 2 && kind <= 4 && refersTo === null) throw new ClientError('InvalidConfig', 'edits, deletes and reactions need refersTo');
    const payload = typeof m.payload === 'string' ? UTF8.encode(m.payload) : m.payload;
    if (!(payload instanceof Uint8Array)) throw new ClientError('InvalidConfig', 'payload must be a Uint8Array or a string');
    const publish: BodyOf<'Publish'> = { type: 'Publish', room: m.room, clientMsgId: 0n, kind, refersTo, thread: m.thread ?? null, payload };
    try {
      encodeFrame({ requestId: 1, flags: 0, body: publish });
    } catch (e) {
      throw new ClientError('Codec', e instanceof Error ? e.message : String(e));
    }
    return publish;
  }

  /** Queues a publish (the caller checked there is room) and sends it if it can. */
  queue(publish: BodyOf<'Publish'>): PendingPublish {
    const clientMsgId = this.nextMsgId;
    this.nextMsgId += 1n;
    const [rep, ack] = reply<PublishAck>();
    // A caller that never looks at `ack` learns of refusals from
    // `publishFailed`; an unobserved rejection must not crash a page.
    ack.catch(() => undefined);
    const order = this.nextOrder++;
    this.pending.set(order, { publish: { ...publish, clientMsgId }, reply: rep, onWire: false, rateLimited: 0, sentAlone: false, sends: 0 });
    this.send(order);
    return { clientMsgId, ack };
  }

  /** Sends, in order, every publish not on the wire, as far as the window allows. */
  sendWaiting(): void {
    for (const [order, p] of this.pending) if (!p.onWire) this.send(order);
  }

  /** The connection was lost: nothing is on the wire any more; all is resent on the next one. */
  onConnectionLost(): void {
    for (const p of this.pending.values()) p.onWire = false;
  }

  /** The client stops: every publish fails with `err`; waiters are released. */
  failAll(err: ClientError): void {
    if (this.pauseTimer !== undefined) clearTimeout(this.pauseTimer);
    for (const p of this.pending.values()) p.reply.reject(err);
    this.pending.clear();
    for (const w of [...this.flushWaiters, ...this.spaceWaiters]) w();
    this.flushWaiters = [];
    this.spaceWaiters = [];
  }

  /**
   * Sends a pending publish on the current connection, if any, unless
   * publishing is paused or the window is full: it goes when the pause
   * ends, in order.
   */
  private send(order: number): void {
    if (this.pausedUntil !== null && this.pausedUntil > Date.now()) return;
    let onWire = 0;
    for (const p of this.pending.values()) if (p.onWire) onWire++;
    if (onWire >= this.window) return;
    const s = this.host.session();
    const p = this.pending.get(order);
    if (s === null || p === undefined || p.onWire) return;
    const max = s.welcome.maxPayloadLen;
    if (p.publish.payload.length > max) {
      // Sending it would only earn a refusal, after every reconnection.
      this.complete(order, new ClientError('PayloadTooLarge', `payload of ${p.publish.payload.length} bytes; the broker takes ${max}`));
      return;
    }
    const rid = this.host.nextRid();
    p.onWire = true;
    p.sentAlone = onWire === 0;
    p.sends += 1;
    s.inflight.set(rid, { kind: 'publish', order });
    const err = this.host.send(s, { requestId: rid, flags: 0, body: p.publish });
    if (err !== null) {
      s.inflight.delete(rid);
      this.complete(order, err);
    }
  }

  private pause(ms: number): void {
    this.pausedUntil = Date.now() + ms;
    if (this.pauseTimer !== undefined) clearTimeout(this.pauseTimer);
    this.pauseTimer = setTimeout(() => {
      this.pauseTimer = undefined;
      this.pausedUntil = null;
      this.sendWaiting();
    }, ms);
  }

  private complete(order: number, result: PublishAck | ClientError): void {
    const p = this.pending.get(order);
    if (p === undefined) return;
    this.pending.delete(order);
    if (result instanceof ClientError) {
      p.reply.reject(result);
      this.host.emit({ type: 'publishFailed', room: p.publish.room, clientMsgId: p.publish.clientMsgId, error: result });
    } else {
      p.reply.resolve(result);
    }
    this.spaceWaiters.shift()?.();
    if (this.pending.size === 0) {
      for (const f of this.flushWaiters) f();
      this.flushWaiters = [];
    }
  }

  /** The broker's answer to the publish `order`. */
  onReply(order: number, body: Body): void {
    const p = this.pending.get(order);
    if (p === undefined) return;
    if (body.type === 'Error' && body.code === ErrorCode.RateLimited) {
      // Refusals of a publish sent alone count against the retries; those
      // of a burst (a queue resent after a reconnection) are of the SDK's
      // own making and are retried, paced by a window that starts at one.
      p.onWire = false;
      if (p.sentAlone) p.rateLimited += 1;
      if (this.o.rateLimitRetries > 0 && p.rateLimited <= this.o.rateLimitRetries) {
        this.window = 1;
        this.pause(Math.max(1, body.retryAfterMs));
        return;
      }
    }
    if (body.type === 'Error' && body.code === ErrorCode.StorageFull) {
      // Nothing was stored: resend with the same id after a backoff delay,
      // one at a time, later publishes waiting behind it in order.
      p.onWire = false;
      this.window = 1;
      const d = this.storageFull.nextDelay() ?? this.o.backoff.maxMs;
      if (this.storageFull.failureCount() === 1) console.warn('confab-client: the broker storage is full; publishes wait and are sent again with back-off');
      this.pause(Math.max(1, d));
      return;
    }
    if (body.type === 'PublishAck') {
      if (body.duplicate && p.sends === 1) {
        // Never sent before, yet already stored: an earlier run of this
        // device used the same id (its clock was set back).
        console.warn(`confab-client: first send of a publish acknowledged as a duplicate (client message id ${body.clientMsgId} reused)`);
      }
      this.complete(order, { room: body.room, clientMsgId: body.clientMsgId, seq: body.seq, timestampUs: body.timestampUs, duplicate: body.duplicate });
      this.storageFull.reset();
      if (this.window !== Number.POSITIVE_INFINITY) {
        this.window *= 2;
        if (this.window >= this.o.capacity) this.window = Number.POSITIVE_INFINITY;
      }
      this.sendWaiting();
      return;
    }
    const err = body.type === 'Error' ? ClientError.server(body.code, body.message, body.retryAfterMs) : new ClientError('UnexpectedReply', `${body.type} to a Publish`);
    this.complete(order, err);
    this.sendWaiting();
  }
}
