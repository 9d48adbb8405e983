// A small in-memory broker over WebSocket, speaking protocol v1 with this
// package's codec, with fault knobs: skipped live deliveries, split
// SubscribeAcks, lost acknowledgements, refused publishes, refused Hellos,
// cut connections, hostile bytes. Used to test the SDK's logic where the
// real broker cannot be made to misbehave; the behaviour it imitates is
// checked against the real broker by test/broker/.

import { type AddressInfo } from 'node:net';

import { WebSocket, WebSocketServer } from 'ws';

import {
  type Body,
  type BodyOf,
  DEFAULT_MAX_FRAME_LEN,
  ErrorCode,
  type EventRecord,
  Flags,
  type Frame,
  type SubscribeResult,
  decodeMessage,
  encodeFrame,
} from '../../src/index.js';

export interface MockConn {
  ws: WebSocket;
  user: string;
  device: string;
  subs: Set<string>;
  frames: Frame[];
}

export interface Faults {
  /** Skip the live delivery of this entry to this connection. */
  dropLive?: (room: string, seq: bigint, conn: MockConn) => boolean;
  /** Send this live entry twice to this connection. */
  repeatLive?: (room: string, seq: bigint, conn: MockConn) => boolean;
  /** Results per SubscribeAck frame (split acks, 7.3.2). */
  ackChunk?: number;
  /** What to do with a publish: store it but lose the ack and cut the connection, refuse it, or normal. */
  onPublish?: (p: BodyOf<'Publish'>, conn: MockConn) => 'cut-after-store' | 'storage-full' | 'rate-limited' | 'internal' | undefined;
  /** Refuse the Hello with this code (Error + Goodbye + close). */
  refuseHello?: (hello: BodyOf<'Hello'>) => number | undefined;
  /** Welcome's heartbeat_ms. */
  heartbeatMs?: number;
  /** Answer nothing at all (a black hole) once the handshake is done. */
  silent?: boolean;
}

export class MockBroker {
  readonly rooms = new Map<string, EventRecord[]>();
  private readonly dedup = new Map<string, bigint>();
  readonly conns = new Set<MockConn>();
  readonly faults: Faults = {};
  hellos: BodyOf<'Hello'>[] = [];
  private sessionId = 0n;

  private constructor(private readonly wss: WebSocketServer) {
    wss.on('connection', (ws) => this.accept(ws));
  }

  static async start(): Promise<MockBroker> {
    const wss = new WebSocketServer({
      host: '127.0.0.1',
      port: 0,
      path: '/ws',
      handleProtocols: (protocols) => (protocols.has('confab.v1') ? 'confab.v1' : false),
    });
    await new Promise<void>((r) => wss.once('listening', () => r()));
    return new MockBroker(wss);
  }

  get url(): string {
    return `ws://127.0.0.1:${(this.wss.address() as AddressInfo).port}/ws`;
  }

  async stop(): Promise<void> {
    this.cutAll();
    await new Promise<void>((r) => this.wss.close(() => r()));
  }

  /** Ends every connection abruptly (no Goodbye). */
  cutAll(): void {
    for (const c of this.conns) c.ws.terminate();
    this.conns.clear();
  }

  /** Appends an entry as if some other device published it. */
  append(room: string, payload: string, sender = 'zed'): EventRecord {
    const log = this.rooms.get(room) ?? [];
    this.rooms.set(room, log);
    const rec: EventRecord = {
      seq: BigInt(log.length + 1),
      timestampUs: BigInt(Date.now()) * 1000n,
      sender,
      device: 'other',
      clientMsgId: 0n,
      kind: 1,
      refersTo: null,
      thread: null,
      payload: new TextEncoder().encode(payload),
    };
    log.push(rec);
    for (const c of this.conns) {
      if (c.subs.has(room) && !(this.faults.dropLive?.(room, rec.seq, c) ?? false)) {
        this.send(c, { requestId: 0, flags: 0, body: { type: 'Event', room, event: rec } });
      }
    }
    return rec;
  }

  send(c: MockConn, f: Frame): void {
    if (c.ws.readyState === WebSocket.OPEN) c.ws.send(encodeFrame(f));
  }

  sendRaw(c: MockConn, data: Uint8Array | string): void {
    c.ws.send(data);
  }

  private accept(ws: WebSocket): void {
    let conn: MockConn | null = null;
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      if (!isBinary) {
        ws.close();
        return;
      }
      let f: Frame;
      try {
        f = decodeMessage(new Uint8Array(data), DEFAULT_MAX_FRAME_LEN);
      } catch {
        ws.close();
        return;
      }
      if (conn === null) {
        if (f.body.type !== 'Hello') {
          ws.close();
          return;
        }
        conn = this.hello(ws, f.requestId, f.body);
        return;
      }
      conn.frames.push(f);
      if (this.faults.silent) return;
      this.handle(conn, f);
    });
    ws.on('close', () => {
      if (conn !== null) this.conns.delete(conn);
    });
  }

  private hello(ws: WebSocket, rid: number, h: BodyOf<'Hello'>): MockConn | null {
    this.hellos.push(h);
    const refused = this.faults.refuseHello?.(h);
    if (refused !== undefined) {
      const c: MockConn = { ws, user: '', device: h.device, subs: new Set(), frames: [] };
      this.send(c, { requestId: rid, flags: 0, body: { type: 'Error', code: refused, retryAfterMs: refused === ErrorCode.RateLimited ? 50 : 0, message: 'refused' } });
      this.send(c, { requestId: 0, flags: 0, body: { type: 'Goodbye', code: refused, message: 'refused' } });
      ws.close();
      return null;
    }
    const user = h.token.split(':')[0] ?? h.token;
    const c: MockConn = { ws, user, device: h.device, subs: new Set(), frames: [] };
    // Session replacement, as the broker does it.
    for (const old of this.conns) {
      if (old.user === user && old.device === h.device) {
        this.send(old, { requestId: 0, flags: 0, body: { type: 'Goodbye', code: ErrorCode.SessionReplaced, message: '' } });
        old.ws.close();
        this.conns.delete(old);
      }
    }
    this.conns.add(c);
    this.sessionId += 1n;
    this.send(c, {
      requestId: rid,
      flags: 0,
      body: {
        type: 'Welcome',
        version: 1,
        sessionId: this.sessionId,
        user,
        serverTimeUs: BigInt(Date.now()) * 1000n,
        maxFrameLen: DEFAULT_MAX_FRAME_LEN,
        maxPayloadLen: 65_536,
        maxRooms: 10_000,
        heartbeatMs: this.faults.heartbeatMs ?? 15_000,
        idleTimeoutMs: 45_000,
      },
    });
    if (h.resume.length > 0) this.subscribe(c, rid, h.resume);
    return c;
  }

  private subscribe(c: MockConn, rid: number, items: BodyOf<'Subscribe'>['items']): void {
    const results: SubscribeResult[] = [];
    const backlogs: [string, EventRecord[]][] = [];
    for (const it of items) {
      const log = this.rooms.get(it.room) ?? [];
      const head = BigInt(log.length);
      results.push({ room: it.room, code: ErrorCode.Normal, head, first: 1n });
      c.subs.add(it.room);
      if (it.start !== 'live') {
        const from = it.start.from < 1n ? 1n : it.start.from;
        backlogs.push([it.room, log.slice(Number(from) - 1)]);
      }
    }
    const chunk = this.faults.ackChunk ?? 1000;
    if (results.length === 0) this.send(c, { requestId: rid, flags: 0, body: { type: 'SubscribeAck', results: [] } });
    for (let i = 0; i < results.length; i += chunk) {
      this.send(c, { requestId: rid, flags: 0, body: { type: 'SubscribeAck', results: results.slice(i, i + chunk) } });
    }
    for (const [room, events] of backlogs) {
      if (events.length > 0) this.send(c, { requestId: 0, flags: Flags.REPLAY, body: { type: 'EventBatch', room, events } });
    }
  }

  private handle(c: MockConn, f: Frame): void {
    const b: Body = f.body;
    const reply = (body: Body): void => this.send(c, { requestId: f.requestId, flags: 0, body });
    switch (b.type) {
      case 'Ping':
        this.send(c, { requestId: 0, flags: 0, body: { type: 'Pong', nonce: b.nonce } });
        return;
      case 'Subscribe':
        this.subscribe(c, f.requestId, b.items);
        return;
      case 'Unsubscribe':
        for (const r of b.rooms) c.subs.delete(r);
        reply({ type: 'Ack' });
        return;
      case 'Publish': {
        const fault = this.faults.onPublish?.(b, c);
        if (fault === 'storage-full' || fault === 'rate-limited' || fault === 'internal') {
          const code = fault === 'storage-full' ? ErrorCode.StorageFull : fault === 'internal' ? ErrorCode.Internal : ErrorCode.RateLimited;
          reply({ type: 'Error', code, retryAfterMs: fault === 'rate-limited' ? 20 : 0, message: fault });
          return;
        }
        const key = `${c.user}/${c.device}/${b.room}/${b.clientMsgId}`;
        const known = this.dedup.get(key);
        const log = this.rooms.get(b.room) ?? [];
        this.rooms.set(b.room, log);
        if (known !== undefined) {
          const orig = log[Number(known) - 1];
          reply({ type: 'PublishAck', room: b.room, clientMsgId: b.clientMsgId, seq: known, timestampUs: orig?.timestampUs ?? 0n, duplicate: true });
          return;
        }
        const rec: EventRecord = {
          seq: BigInt(log.length + 1),
          timestampUs: BigInt(Date.now()) * 1000n,
          sender: c.user,
          device: c.device,
          clientMsgId: b.clientMsgId,
          kind: b.kind,
          refersTo: b.refersTo,
          thread: b.thread,
          payload: b.payload,
        };
        log.push(rec);
        this.dedup.set(key, rec.seq);
        if (fault === 'cut-after-store') {
          c.ws.terminate();
          this.conns.delete(c);
        }
        for (const other of this.conns) {
          if (other.subs.has(b.room) && !(this.faults.dropLive?.(b.room, rec.seq, other) ?? false)) {
            this.send(other, { requestId: 0, flags: 0, body: { type: 'Event', room: b.room, event: rec } });
            if (this.faults.repeatLive?.(b.room, rec.seq, other) ?? false) {
              this.send(other, { requestId: 0, flags: 0, body: { type: 'Event', room: b.room, event: rec } });
            }
          }
        }
        if (fault !== 'cut-after-store') {
          reply({ type: 'PublishAck', room: b.room, clientMsgId: b.clientMsgId, seq: rec.seq, timestampUs: rec.timestampUs, duplicate: false });
        }
        return;
      }
      case 'HistoryRequest': {
        const log = this.rooms.get(b.room) ?? [];
        let events: EventRecord[];
        let hasMore: boolean;
        if (b.direction === 'After') {
          events = log.filter((e) => e.seq > b.anchor).slice(0, b.limit);
          const last = events[events.length - 1];
          hasMore = last !== undefined && BigInt(log.length) > last.seq;
        } else {
          const below = log.filter((e) => b.anchor === 0n || e.seq < b.anchor);
          events = below.slice(Math.max(0, below.length - b.limit));
          hasMore = below.length > events.length;
        }
        reply({ type: 'HistoryPage', room: b.room, hasMore, first: 1n, events });
        return;
      }
      case 'Receipt':
      case 'Typing':
        return;
      case 'SetPresence':
      case 'WatchPresence':
      case 'RefreshToken':
        reply({ type: 'Ack' });
        return;
      default:
        reply({ type: 'Error', code: ErrorCode.Unsupported, retryAfterMs: 0, message: `mock: no ${b.type}` });
    }
  }
}
