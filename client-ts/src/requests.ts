/**
 * Requests other than publishes and subscriptions: sent on the current
 * connection and matched to their reply by request id; kept while offline
 * (within the request timeout, and a bounded queue); read-only ones sent
 * again after a lost connection. Receipts are kept too, the furthest per
 * room and marker, and sent again until a `Pong` proves the broker read
 * them (docs/sdk.md section 13).
 *
 * @module
 */

import { type Body, CodecError, type Frame, HEADER_LEN, type ReceiptKind, type Seq, encodeFrame } from './codec/index.js';
import { ClientError } from './errors.js';
import type { Host } from './host.js';
import type { Reply, Session } from './session.js';

/** A request waiting for a connection. */
interface Deferred {
  body: Body;
  reply: Reply<Body>;
}

/** Whether a request only reads, so that sending it again cannot do anything twice. */
function isReadOnly(body: Body): boolean {
  return body.type === 'HistoryRequest' || body.type === 'GetRoomInfo' || body.type === 'ListRooms' || body.type === 'GetPresence' || body.type === 'GetMessageStatus';
}

/** Requests and receipts, across connections. */
export class Requests {
  private deferred: Deferred[] = [];
  /** Receipts for the next connection: the furthest per room and marker. */
  private readonly receipts = new Map<string, { room: string; kind: ReceiptKind; seq: Seq }>();
  private barrierQueued = false;

  constructor(
    private readonly host: Host,
    private readonly capacity: number,
  ) {}

  /**
   * Sends a request on the current connection: `reply` settles with its
   * answer, or at once for `noReply` requests (typing). While offline it
   * waits for a connection, unless the queue is full.
   */
  send(body: Body, mode: 'reply' | 'noReply', rep: Reply<Body>): void {
    const s = this.host.session();
    if (s === null) {
      this.deferred = this.deferred.filter((d) => !d.reply.settled());
      if (mode === 'noReply') rep.reject(new ClientError('NotConnected', 'not connected'));
      else if (this.deferred.length >= this.capacity) rep.reject(new ClientError('QueueFull', 'too many requests wait for a connection'));
      else this.deferred.push({ body, reply: rep });
      return;
    }
    const rid = this.host.nextRid();
    const frame: Frame = { requestId: rid, flags: 0, body };
    let len: number;
    try {
      len = encodeFrame(frame).length - HEADER_LEN;
    } catch (e) {
      rep.reject(new ClientError('Codec', e instanceof CodecError ? e.message : String(e)));
      return;
    }
    if (len > s.welcome.maxFrameLen) {
      rep.reject(new ClientError('Codec', `a ${body.type} of ${len} bytes is over the broker's frame limit of ${s.welcome.maxFrameLen}`));
      return;
    }
    if (mode === 'reply') {
      s.inflight.set(rid, { kind: 'request', reply: rep, retry: isReadOnly(body) ? body : null });
    } else {
      s.rememberNoReply(rid, body.type);
      rep.resolve({ type: 'Ack' });
    }
    const err = this.host.send(s, frame);
    if (err !== null) {
      s.inflight.delete(rid);
      rep.reject(err);
    }
  }

  /** A request the SDK makes for itself (restoring presence); a refusal is logged. */
  sendInternal(body: Body, name: string): void {
    const s = this.host.session();
    if (s === null) return;
    const rid = this.host.nextRid();
    s.inflight.set(rid, { kind: 'internal', name });
    this.host.send(s, { requestId: rid, flags: 0, body });
  }

  /** Moves a marker: sent now, or kept for the next connection. */
  receipt(room: string, kind: ReceiptKind, seq: Seq): void {
    const s = this.host.session();
    if (s === null) {
      this.keepReceipt(room, kind, seq);
      return;
    }
    s.sendReceipt(this.host.nextRid(), room, kind, seq);
    // One Ping after the receipts of this turn confirms them all.
    if (!this.barrierQueued) {
      this.barrierQueued = true;
      queueMicrotask(() => {
        this.barrierQueued = false;
        this.host.session()?.sendBarrier();
      });
    }
  }

  private keepReceipt(room: string, kind: ReceiptKind, seq: Seq): void {
    const key = `${kind}\u0000${room}`;
    const old = this.receipts.get(key);
    if (old === undefined || seq > old.seq) this.receipts.set(key, { room, kind, seq });
  }

  /** A connection is up: send what waited for it. */
  onConnected(): void {
    const deferred = this.deferred;
    this.deferred = [];
    for (const d of deferred) if (!d.reply.settled()) this.send(d.body, 'reply', d.reply);
    const receipts = [...this.receipts.values()];
    this.receipts.clear();
    for (const r of receipts) this.receipt(r.room, r.kind, r.seq);
  }

  /**
   * The connection `s` was lost. Read-only requests go again, in their
   * original order, on the next connection; the others fail with
   * `ConnectionLost` (they may have been carried out). Unconfirmed
   * receipts are kept.
   */
  onConnectionLost(s: Session): void {
    for (const r of s.takeReceipts()) this.keepReceipt(r.room, r.kind, r.seq);
    const retried: [number, Deferred][] = [];
    for (const [rid, inf] of s.inflight) {
      if (inf.kind === 'request') {
        if (inf.retry !== null && !inf.reply.settled()) retried.push([rid, { body: inf.retry, reply: inf.reply }]);
        else inf.reply.reject(new ClientError('ConnectionLost', 'the connection was lost before the reply; the request may have been carried out'));
      } else if (inf.kind === 'unsubscribe') {
        inf.reply?.resolve(); // the connection's subscriptions ended with it
      }
    }
    s.inflight.clear();
    retried.sort((x, y) => x[0] - y[0]);
    this.deferred = [...retried.map(([, d]) => d), ...this.deferred];
  }

  /** The client stops: everything waiting fails with `err`. */
  failAll(err: ClientError, s: Session | null): void {
    if (s !== null) {
      for (const inf of s.inflight.values()) {
        if (inf.kind === 'request') inf.reply.reject(err);
        else if (inf.kind === 'unsubscribe') inf.reply?.resolve();
      }
    }
    for (const d of this.deferred) d.reply.reject(err);
    this.deferred = [];
  }
}
