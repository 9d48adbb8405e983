/**
 * One live connection after its handshake: in-flight requests, the
 * heartbeat clock, and receipts not yet known to be read by the broker.
 *
 * @module
 */

import type { Body, Frame, ReceiptKind, Seq, BodyOf } from './codec/index.js';
import type { ClientError, DisconnectReason } from './errors.js';
import type { Link } from './transport.js';

/** A pending promise, settled once. */
export interface Reply<T> {
  resolve(v: T): void;
  reject(e: ClientError): void;
  /** Settled already (answered, or timed out): nobody waits for it. */
  settled(): boolean;
}

/** Makes a {@link Reply} and its promise. */
export function reply<T>(): [Reply<T>, Promise<T>] {
  let done = false;
  let res!: (v: T) => void;
  let rej!: (e: ClientError) => void;
  const p = new Promise<T>((a, b) => {
    res = a;
    rej = b;
  });
  return [
    {
      resolve: (v) => {
        if (!done) {
          done = true;
          res(v);
        }
      },
      reject: (e) => {
        if (!done) {
          done = true;
          rej(e);
        }
      },
      settled: () => done,
    },
    p,
  ];
}

/** What a reply (or an `Error`) to a request id completes. */
export type Inflight =
  /** A publish, by its key in the outbox. */
  | { kind: 'publish'; order: number }
  /** A subscribe (or the Hello's resume): rooms and subscription ids in request order. */
  | { kind: 'subscribe'; items: [string, number][] }
  /** An unsubscribe, with the caller waiting for it if any. */
  | { kind: 'unsubscribe'; reply: Reply<void> | null }
  /** A gap fill of a room's subscription. */
  | { kind: 'fill'; room: string; id: number }
  /** An application request; `retry` holds it when it is read-only, to send again after a loss. */
  | { kind: 'request'; reply: Reply<Body>; retry: Body | null }
  /** A request the SDK made for itself; errors are logged. */
  | { kind: 'internal'; name: string };

/** Remembered ids of requests without a success reply, to name them in logs. */
const NO_REPLY_MEMORY = 64;

/** A connection that completed its handshake. */
export class Session {
  readonly inflight = new Map<number, Inflight>();
  private readonly noReply: [number, string][] = [];
  /** A connection-level `Error` (request id 0), reported if no `Goodbye` follows. */
  connError: { code: number; message: string } | null = null;
  private lastRecv: number;
  private lastSent: number;
  private pingOutstanding = false;
  private pingSentAt = 0;
  private nonce = 0n;
  /**
   * Receipts sent on this connection that the broker may not have read,
   * with the nonce of the `Ping` sent after them: the broker handles a
   * connection's frames in order, so its `Pong` proves they were read.
   */
  private readonly receipts = new Map<string, { room: string; kind: ReceiptKind; seq: Seq; nonce: bigint }>();
  private barrierDue = false;
  private tick: ReturnType<typeof setInterval> | undefined;
  private readonly every: number;

  constructor(
    readonly link: Link,
    readonly welcome: BodyOf<'Welcome'>,
    private readonly heartbeatMs: number,
    private readonly deadAfterMs: number,
    private readonly now: () => number,
    onDead: (reason: DisconnectReason) => void,
  ) {
    this.lastRecv = now();
    this.lastSent = this.lastRecv;
    const every = Math.max(20, Math.min(1000, Math.floor(Math.min(heartbeatMs, deadAfterMs) / 4)));
    this.tick = setInterval(() => {
      const reason = this.onTimer();
      if (reason !== null) onDead(reason);
    }, every);
    this.every = every;
  }

  /**
   * Sends a frame.
   *
   * @throws {CodecError} if it cannot be encoded.
   */
  send(f: Frame): void {
    this.link.send(f);
    this.lastSent = this.now();
  }

  /** Stops the clock; the link is closed by the caller. */
  stop(): void {
    if (this.tick !== undefined) clearInterval(this.tick);
    this.tick = undefined;
  }

  /** A frame arrived: the link is alive. */
  received(): void {
    this.lastRecv = this.now();
    this.pingOutstanding = false;
  }

  /** Remembers a request that has no success reply. */
  rememberNoReply(rid: number, name: string): void {
    if (this.noReply.length === NO_REPLY_MEMORY) this.noReply.shift();
    this.noReply.push([rid, name]);
  }

  /** The name of a remembered no-reply request. */
  noReplyName(rid: number): string | undefined {
    return this.noReply.find(([r]) => r === rid)?.[1];
  }

  /**
   * Sends a receipt with request id `rid`, unless one at least as far for
   * the same room and marker is still unconfirmed (the broker would ignore
   * it). Confirmed by the next `Ping` ({@link Session.sendBarrier}).
   */
  sendReceipt(rid: number, room: string, kind: ReceiptKind, seq: Seq): void {
    const key = `${kind}\u0000${room}`;
    const old = this.receipts.get(key);
    if (old !== undefined && old.seq >= seq) return;
    this.receipts.set(key, { room, kind, seq, nonce: this.nonce + 1n });
    this.barrierDue = true;
    this.rememberNoReply(rid, 'Receipt');
    this.send({ requestId: rid, flags: 0, body: { type: 'Receipt', room, kind, seq } });
  }

  /** Sends the `Ping` that confirms the receipts sent since the last one. */
  sendBarrier(): void {
    if (!this.barrierDue) return;
    this.barrierDue = false;
    this.nonce += 1n;
    this.send({ requestId: 0, flags: 0, body: { type: 'Ping', nonce: this.nonce } });
  }

  /** A `Pong`: the receipts sent before its `Ping` were read. */
  onPong(nonce: bigint): void {
    for (const [k, r] of this.receipts) if (r.nonce <= nonce) this.receipts.delete(k);
  }

  /** The receipts the broker may not have read, to send again on the next connection. */
  takeReceipts(): { room: string; kind: ReceiptKind; seq: Seq }[] {
    const out = [...this.receipts.values()].map(({ room, kind, seq }) => ({ room, kind, seq }));
    this.receipts.clear();
    return out;
  }

  /**
   * Heartbeat duty (protocol 6.4): a `Ping` when nothing was sent or
   * received for the heartbeat interval, and a dead link when nothing was
   * received for the dead-link timeout while a `Ping` has been waiting for
   * its answer for the rest of that timeout. The second condition matters
   * in browsers, which run the timers of a hidden tab as rarely as once a
   * minute: a late timer sends its `Ping` and gives the broker time to
   * answer it, instead of declaring a live link dead. Exposed for tests.
   */
  onTimer(): DisconnectReason | null {
    const now = this.now();
    const grace = Math.max(this.deadAfterMs - this.heartbeatMs, 2 * this.every);
    if (this.pingOutstanding && now - this.lastRecv >= this.deadAfterMs && now - this.pingSentAt >= grace) {
      return { kind: 'heartbeatTimeout' };
    }
    const idleSince = Math.min(this.lastSent, this.lastRecv);
    if (!this.pingOutstanding && now - idleSince >= this.heartbeatMs) {
      this.nonce += 1n;
      this.pingOutstanding = true;
      this.pingSentAt = now;
      try {
        this.send({ requestId: 0, flags: 0, body: { type: 'Ping', nonce: this.nonce } });
      } catch {
        // A Ping always encodes.
      }
    }
    return null;
  }
}
