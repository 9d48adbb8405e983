/**
 * The client: one connection to a broker, kept up across everything that
 * can happen to it, with the Rust SDK's guarantees (docs/sdk.md): every
 * entry of every followed room exactly once and in order, publishes
 * stored once, positions kept in a cursor store.
 *
 * Everything here runs on the event loop: frames, timers and calls are
 * handled one at a time, so there are no locks. Per-room ordering is the
 * pure {@link RoomSync}'s; this module only performs its actions.
 *
 * @module
 */

import {
  type Body,
  type BodyOf,
  type Direction,
  type EventRecord,
  ErrorCode,
  Flags,
  type Frame,
  HELLO_LEN_FLOOR,
  HEADER_LEN,
  MessageKind,
  PROTOCOL_VERSION,
  type ReceiptKind,
  type Seq,
  type SubscribeItem,
  type SubscribeResult,
  CodecError,
  encodeFrame,
  errorCodeName,
  isValidId,
} from './codec/index.js';
import { Backoff, type BackoffConfig, backoffConfig } from './backoff.js';
import { type CursorStore, MemoryCursorStore } from './cursor.js';
import { Emitter, type Unlisten } from './emitter.js';
import { ClientError, type DisconnectReason, describeReason } from './errors.js';
import { type Inflight, type Reply, Session, reply } from './session.js';
import { RoomSync, type SyncAction } from './sync.js';
import { Link, SUBPROTOCOL, type WebSocketConstructor } from './transport.js';
import type {
  ClientEvents,
  ClientOptions,
  ConnectionEvent,
  ConnectionState,
  Message,
  PendingPublish,
  PublishAck,
  RoomEvent,
  SubscribeOptions,
} from './types.js';

/** The SDK's version, sent in `Hello.client_name` by default. */
export const VERSION = '0.1.0';

/** Most rooms per `Subscribe` frame (so every ack fits one frame, 7.3.2). */
const SUBSCRIBE_CHUNK = 1000;
/** History page size of `history()`. */
const HISTORY_PAGE = 500;
/** Token refusals in a row, each after a `getToken`, before the client gives up. */
const MAX_TOKEN_REFRESHES = 3;

const UTF8 = new TextEncoder();

interface Resolved {
  url: string;
  device: string;
  clientName: string;
  webSocket: WebSocketConstructor;
  cursorStore: CursorStore;
  backoff: BackoffConfig;
  heartbeatMs: number;
  deadLinkTimeoutMs: number;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  outboundQueueCapacity: number;
  maxOutOfOrder: number;
  historyPageSize: number;
  rateLimitRetries: number;
  getToken: ((error: ClientError) => string | Promise<string>) | undefined;
  random: () => number;
}

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

/** A publish not yet acknowledged. */
interface PendingPub {
  publish: BodyOf<'Publish'>;
  reply: Reply<PublishAck>;
  /** Sent on the current connection and not answered yet. */
  onWire: boolean;
  /** Refusals with `RateLimited` while it was alone on the wire. */
  rateLimited: number;
  sentAlone: boolean;
  sends: number;
}

/** A request waiting for a connection. */
interface Deferred {
  body: Body;
  mode: 'reply' | 'noReply';
  reply: Reply<Body>;
}

/** The handshake in progress. */
interface Attempt {
  link: Link;
  helloRid: number;
  resumed: [string, number][];
  refusal: { code: number; message: string; retryAfterMs: number } | null;
  timer: ReturnType<typeof setTimeout>;
}

/**
 * A subscription: its entries go to `onEvent` of the options it was made
 * with. Reconnections, gaps and duplicates are handled underneath.
 */
export class Subscription {
  /** @internal */
  constructor(
    /** The room. */
    readonly room: string,
    private readonly client: Client,
    private readonly id: number,
  ) {}

  /** Unsubscribes at the broker (the room's cursor stays where it is). */
  unsubscribe(): Promise<void> {
    return this.client.unsubscribeRoom(this.room, this.id);
  }
}

/**
 * A connection to a Confab broker over WebSocket.
 *
 * ```ts
 * const client = Client.start({ url: 'ws://127.0.0.1:7402/ws', token: 'alice:laptop', device: 'laptop' });
 * await client.subscribe('general', { onEvent: (e) => console.log(e.seq, e.sender) });
 * const ack = await client.publish('general', 'hello');
 * ```
 */
export class Client {
  private readonly o: Resolved;
  private readonly emitter = new Emitter<ClientEvents>();
  private current: ConnectionState = { kind: 'connecting' };
  private token: string;
  private readonly rooms = new Map<string, Room>();
  private nextRoomId = 1;
  /** Unacknowledged publishes, in the order they were queued. */
  private readonly publishes = new Map<number, PendingPub>();
  private nextOrder = 0;
  private nextMsgId: bigint;
  private deferred: Deferred[] = [];
  /** Receipts for the next connection: the furthest per room and marker. */
  private readonly receipts = new Map<string, { room: string; kind: ReceiptKind; seq: Seq }>();
  private flushWaiters: (() => void)[] = [];
  private spaceWaiters: (() => void)[] = [];
  private publishPausedUntil: number | null = null;
  private pauseTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly storageFull: Backoff;
  /** Most publishes on the wire: unlimited, or a window growing after a rate limit. */
  private publishWindow = Number.POSITIVE_INFINITY;
  private presence: BodyOf<'SetPresence'>['status'] | null = null;
  private watchingPresence = false;
  private session: Session | null = null;
  private attempt: Attempt | null = null;
  private readonly backoff: Backoff;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private everConnected = false;
  private tokenRefusals = 0;
  private nextRidValue = 0;
  private stoppedWith: ClientError | null = null;
  private closed = false;
  private barrierQueued = false;
  private firstConnect: Reply<void> | null = null;
  private connectedWaiters: Reply<void>[] = [];

  private constructor(options: ClientOptions, firstConnect: Reply<void> | null) {
    this.o = resolve(options);
    this.token = options.token;
    this.firstConnect = firstConnect;
    this.backoff = new Backoff(this.o.backoff, this.o.random);
    this.storageFull = new Backoff({ ...this.o.backoff, maxAttempts: null }, this.o.random);
    // Ids increase over the device's lifetime: the clock in nanoseconds,
    // then one per publish (protocol 12.2); a random offset within the
    // millisecond keeps two instances started together apart.
    this.nextMsgId = BigInt(Date.now()) * 1_000_000n + BigInt(Math.floor(this.o.random() * 1_000_000));
    queueMicrotask(() => this.connectNow());
  }

  /**
   * A client that connects in the background, retrying with backoff for as
   * long as it takes: it never fails for lack of a network. Subscriptions,
   * publishes and receipts made meanwhile are carried out once connected.
   *
   * @throws {ClientError} `InvalidConfig` for options that cannot work.
   */
  static start(options: ClientOptions): Client {
    return new Client(options, null);
  }

  /**
   * Connects and waits for the first connection; fails if the first
   * attempt fails (fine for tools and tests; apps use {@link Client.start}).
   *
   * @throws {ClientError} `InvalidConfig`, or why the first attempt failed.
   */
  static async connect(options: ClientOptions): Promise<Client> {
    const [first, done] = reply<void>();
    const client = new Client(options, first);
    await done;
    return client;
  }

  // ----- state and events ------------------------------------------------

  /** Where the connection stands. */
  get state(): ConnectionState {
    return this.current;
  }

  /** The user the broker authenticated, once connected. */
  get user(): string | undefined {
    return this.session?.welcome.user;
  }

  /** The broker's limits of the current connection (`Welcome`), if connected. */
  get limits(): BodyOf<'Welcome'> | undefined {
    return this.session?.welcome;
  }

  /** Calls `listener` on every `event` from now on; returns a function that stops it. */
  on<K extends keyof ClientEvents>(event: K, listener: (value: ClientEvents[K]) => void): Unlisten {
    return this.emitter.on(event, listener);
  }

  /** Waits for a connection (now or later). */
  waitConnected(): Promise<void> {
    if (this.stoppedWith !== null) return Promise.reject(this.stoppedWith);
    if (this.closed) return Promise.reject(new ClientError('Closed', 'the client is closed'));
    if (this.current.kind === 'connected') return Promise.resolve();
    const [r, p] = reply<void>();
    this.connectedWaiters.push(r);
    return p;
  }

  /** Says goodbye, fails what still waits with `Closed`, and flushes the cursor store. */
  async close(): Promise<void> {
    if (this.closed) return;
    const s = this.session;
    if (s !== null) {
      s.stop();
      s.link.close({ requestId: 0, flags: 0, body: { type: 'Goodbye', code: ErrorCode.Normal, message: 'client closing' } });
      this.session = null;
    }
    await this.finish(null);
  }

  // ----- subscriptions ---------------------------------------------------

  /**
   * Follows a room: from `options.from`, else from the cursor store's
   * position + 1, else live (new entries only). Resolves once the broker
   * accepted it, or at once while offline (it is subscribed on connection).
   *
   * @throws {ClientError} `AlreadySubscribed`, `InvalidConfig` (a bad room
   * id), `Server` (refused: `NotMember`, `NoSuchRoom`, `Forbidden`, ...), `Closed`.
   */
  subscribe(room: string, options: SubscribeOptions): Promise<Subscription> {
    const closed = this.closedError();
    if (closed !== null) return Promise.reject(closed);
    if (!isValidId(room, 128)) return Promise.reject(new ClientError('InvalidConfig', `not a room id: ${JSON.stringify(room)}`));
    if (this.rooms.has(room)) return Promise.reject(new ClientError('AlreadySubscribed', `already subscribed to ${room}`));
    const from = options.from;
    const last = from !== undefined ? (from > 1n ? from : 1n) - 1n : (this.o.cursorStore.get(room) ?? null);
    const id = this.nextRoomId++;
    const r: Room = { id, sync: new RoomSync(last, this.o.maxOutOfOrder, this.o.historyPageSize), opts: options, wire: 'idle', ack: null };
    this.rooms.set(room, r);
    const sub = new Subscription(room, this, id);
    if (this.session === null) return Promise.resolve(sub);
    const [ack, done] = reply<void>();
    r.ack = ack;
    this.sendSubscribe([room]);
    return done.then(() => sub);
  }

  /** @internal Used by {@link Subscription.unsubscribe}. */
  unsubscribeRoom(room: string, id: number): Promise<void> {
    const r = this.rooms.get(room);
    if (r === undefined || r.id !== id) return Promise.resolve();
    this.rooms.delete(room);
    this.safe(() => r.opts.onEnd?.(null));
    const s = this.session;
    if (s === null || r.wire === 'idle') return Promise.resolve();
    const [rep, done] = reply<void>();
    const rid = this.nextRid();
    s.inflight.set(rid, { kind: 'unsubscribe', reply: rep });
    this.sendOn(s, { requestId: rid, flags: 0, body: { type: 'Unsubscribe', rooms: [room] } });
    return this.withTimeout(done, rep);
  }

  // ----- publishing ------------------------------------------------------

  /**
   * Queues a publish and returns at once. It is sent as soon as there is a
   * connection, resent with the same client message id after every
   * reconnection until the broker acknowledges it (stored once), and
   * retried after `RateLimited` and `StorageFull`.
   *
   * @throws {ClientError} `QueueFull`, `InvalidConfig` (bad room, kind or
   * reference), `Codec`, `Closed`.
   */
  enqueue(message: Message): PendingPublish {
    const closed = this.closedError();
    if (closed !== null) throw closed;
    const publish = this.toPublish(message);
    if (this.publishes.size >= this.o.outboundQueueCapacity) throw new ClientError('QueueFull', 'the outbound queue is full');
    return this.queuePublish(publish);
  }

  /**
   * Publishes and waits for the acknowledgement (waiting for queue space
   * first if the outbox is full). Never times out: a publish is retried
   * until it is acknowledged or refused.
   *
   * @throws {ClientError} `Server` or `RateLimited` (refused), `PayloadTooLarge`, `Closed`, ...
   */
  async publish(room: string, payload: Uint8Array | string, options: Omit<Message, 'room' | 'payload'> = {}): Promise<PublishAck> {
    const message: Message = { ...options, room, payload };
    const publish = this.toPublish(message);
    while (this.publishes.size >= this.o.outboundQueueCapacity) {
      const closed = this.closedError();
      if (closed !== null) throw closed;
      await new Promise<void>((r) => this.spaceWaiters.push(r));
    }
    const closed = this.closedError();
    if (closed !== null) throw closed;
    return this.queuePublish(publish).ack;
  }

  /** Waits until every publish queued so far is acknowledged or refused. */
  flush(): Promise<void> {
    if (this.publishes.size === 0) return Promise.resolve();
    return new Promise((r) => this.flushWaiters.push(r));
  }

  /** Unacknowledged publishes in the outbox. */
  get outboxSize(): number {
    return this.publishes.size;
  }

  // ----- history ---------------------------------------------------------

  /**
   * The entries of `room` from `from` to `to` (inclusive; default: up to
   * the head), paging as needed. Entries older than the room's retention
   * are absent.
   */
  async history(room: string, from: Seq = 1n, to?: Seq): Promise<RoomEvent[]> {
    let anchor = (from > 1n ? from : 1n) - 1n;
    const out: RoomEvent[] = [];
    for (;;) {
      const remaining = to === undefined ? BigInt(HISTORY_PAGE) : to - anchor;
      if (remaining <= 0n) break;
      const limit = remaining > BigInt(HISTORY_PAGE) ? HISTORY_PAGE : Number(remaining);
      const page = await this.historyPage(room, 'After', anchor, limit);
      for (const rec of page.events) {
        if ((to !== undefined && rec.seq > to) || rec.seq <= anchor) continue;
        anchor = rec.seq;
        out.push({ ...rec, room, replayed: true });
      }
      if (!page.hasMore || page.events.length === 0) break;
    }
    return out;
  }

  /**
   * One page of history as the protocol has it: the `limit` entries after
   * `anchor` (exclusive), or before it (`anchor` 0 = from the head),
   * always in ascending order. Read-only: sent again after a lost connection.
   */
  async historyPage(room: string, direction: Direction, anchor: Seq, limit: number): Promise<BodyOf<'HistoryPage'>> {
    return this.expect('HistoryPage', await this.request({ type: 'HistoryRequest', room, direction, anchor, limit }));
  }

  // ----- rooms -----------------------------------------------------------

  /** Creates a room (protocol 7.5.1). */
  async createRoom(req: Omit<BodyOf<'CreateRoom'>, 'type'>): Promise<BodyOf<'RoomInfo'>> {
    return this.expect('RoomInfo', await this.request({ type: 'CreateRoom', ...req }));
  }

  /** Creates a group room; `room` absent lets the broker choose the id. */
  createGroup(opts: { room?: string; name?: string; topic?: string; avatarUrl?: string; policy?: 'Open' | 'InviteOnly'; invite?: string[] } = {}): Promise<BodyOf<'RoomInfo'>> {
    return this.createRoom({
      kind: 'Group',
      room: opts.room ?? null,
      peer: null,
      policy: opts.policy ?? 'Open',
      meta: { name: opts.name ?? '', topic: opts.topic ?? '', avatarUrl: opts.avatarUrl ?? '' },
      invite: opts.invite ?? [],
    });
  }

  /** The direct room with `peer`, created if it does not exist. */
  createDirect(peer: string): Promise<BodyOf<'RoomInfo'>> {
    return this.createRoom({ kind: 'Direct', room: null, peer, policy: 'Open', meta: { name: '', topic: '', avatarUrl: '' }, invite: [] });
  }

  /** Joins an open room or accepts an invitation. */
  async join(room: string): Promise<BodyOf<'RoomInfo'>> {
    return this.expect('RoomInfo', await this.request({ type: 'JoinRoom', room }));
  }

  /** Leaves a room. */
  async leave(room: string): Promise<void> {
    this.expect('Ack', await this.request({ type: 'LeaveRoom', room }));
  }

  /** Invites a user to a group room. */
  async invite(room: string, user: string): Promise<void> {
    this.expect('Ack', await this.request({ type: 'InviteMember', room, user }));
  }

  /** Removes a member or an invitation. */
  async removeMember(room: string, user: string): Promise<void> {
    this.expect('Ack', await this.request({ type: 'RemoveMember', room, user }));
  }

  /** Describes a room. */
  async roomInfo(room: string): Promise<BodyOf<'RoomInfo'>> {
    return this.expect('RoomInfo', await this.request({ type: 'GetRoomInfo', room }));
  }

  /** Replaces a group's metadata. */
  async updateRoom(room: string, meta: { name: string; topic: string; avatarUrl: string }): Promise<BodyOf<'RoomInfo'>> {
    return this.expect('RoomInfo', await this.request({ type: 'UpdateRoom', room, meta }));
  }

  /** Changes a member's role (owners). */
  async setRole(room: string, user: string, role: 'Owner' | 'Admin' | 'Member'): Promise<void> {
    this.expect('Ack', await this.request({ type: 'SetRole', room, user, role }));
  }

  /** One page of the user's rooms, in id order; pass the last id as `after` for the next. */
  async listRooms(after: string | null = null, limit = 100): Promise<BodyOf<'RoomList'>> {
    return this.expect('RoomList', await this.request({ type: 'ListRooms', after, limit }));
  }

  // ----- typing, presence, receipts ---------------------------------------

  /**
   * Typing started (`true`, repeat every few seconds while typing) or
   * stopped. Not queued while offline.
   *
   * @throws {ClientError} `NotConnected` while offline.
   */
  async typing(room: string, active: boolean): Promise<void> {
    await this.request({ type: 'Typing', room, active }, 'ephemeral');
  }

  /** Sets this device's status; restored after every reconnection. */
  async setPresence(status: 'Online' | 'Away' | 'Offline'): Promise<void> {
    await this.request({ type: 'SetPresence', status });
  }

  /** Turns presence pushes (`presence` events) on or off; restored after every reconnection. */
  async watchPresence(enabled: boolean): Promise<void> {
    await this.request({ type: 'WatchPresence', enabled });
  }

  /** The presence of those of `users` who share a room with this user. */
  async getPresence(users: string[]): Promise<BodyOf<'PresenceEvent'>['entries']> {
    return this.expect('PresenceEvent', await this.request({ type: 'GetPresence', users })).entries;
  }

  /** Moves the user's read marker to `seq` (sent now or on the next connection; markers only move forward). */
  async markRead(room: string, seq: Seq): Promise<void> {
    await this.request({ type: 'Receipt', room, kind: 'Read', seq });
  }

  /** Moves this device's delivered marker to `seq`. */
  async markDelivered(room: string, seq: Seq): Promise<void> {
    await this.request({ type: 'Receipt', room, kind: 'Delivered', seq });
  }

  /** How far a message got. */
  async messageStatus(room: string, seq: Seq): Promise<BodyOf<'MessageStatus'>> {
    return this.expect('MessageStatus', await this.request({ type: 'GetMessageStatus', room, seq }));
  }

  /** Registers this device for push (`webpush`, `fcm`, ...). */
  async registerPush(provider: string, token: string): Promise<void> {
    this.expect('Ack', await this.request({ type: 'RegisterPush', provider, token }));
  }

  /** Removes this device's push registration. */
  async unregisterPush(provider: string): Promise<void> {
    await this.registerPush(provider, '');
  }

  /**
   * Replaces the connection's token before it expires (sent now if
   * connected) and uses it for every later connection.
   */
  async refreshToken(token: string): Promise<void> {
    await this.request({ type: 'RefreshToken', token });
  }

  // ===== internals ========================================================

  private closedError(): ClientError | null {
    if (this.stoppedWith !== null) return this.stoppedWith;
    if (this.closed) return new ClientError('Closed', 'the client is closed');
    return null;
  }

  private nextRid(): number {
    // A counter that wraps and skips 0 (protocol 6.2).
    this.nextRidValue = this.nextRidValue >= 0xffffffff ? 1 : this.nextRidValue + 1;
    return this.nextRidValue;
  }

  private emit(event: ConnectionEvent): void {
    this.emitter.emit('connection', event);
  }

  private setState(state: ConnectionState): void {
    this.current = state;
    this.emitter.emit('state', state);
  }

  /** Runs application code; what it throws never reaches the SDK. */
  private safe(f: () => void): void {
    try {
      f();
    } catch (e) {
      console.error('confab-client: an application callback threw', e);
    }
  }

  private expect<K extends Body['type']>(type: K, body: Body): Extract<Body, { type: K }> {
    if (body.type !== type) throw new ClientError('UnexpectedReply', `expected ${type}, got ${body.type}`);
    return body as Extract<Body, { type: K }>;
  }

  private withTimeout<T>(p: Promise<T>, r: Reply<T>): Promise<T> {
    const t = setTimeout(() => r.reject(new ClientError('Timeout', `no reply within ${this.o.requestTimeoutMs} ms`)), this.o.requestTimeoutMs);
    return p.finally(() => clearTimeout(t));
  }

  /** Sends a frame on a session; an encoding failure comes back as an error. */
  private sendOn(s: Session, f: Frame): ClientError | null {
    try {
      s.send(f);
      return null;
    } catch (e) {
      return new ClientError('Codec', e instanceof Error ? e.message : String(e));
    }
  }

  // ----- connecting ------------------------------------------------------

  private connectNow(): void {
    this.retryTimer = undefined;
    if (this.closed) return;
    if (this.everConnected) this.setState({ kind: 'reconnecting' });
    this.emit({ type: 'connecting', attempt: this.backoff.failureCount() + 1 });
    const helloRid = this.nextRid();
    const { hello, resumed } = this.hello();
    let ws;
    try {
      ws = new this.o.webSocket(this.o.url, [SUBPROTOCOL]);
    } catch (e) {
      // A malformed URL, or a page that may not open it.
      this.attemptFailed({ kind: 'connectFailed', message: e instanceof Error ? e.message : String(e) }, null);
      return;
    }
    const timer = setTimeout(() => {
      if (this.attempt?.link === link) {
        link.close();
        this.attemptFailed({ kind: 'connectFailed', message: 'connect timeout' }, null);
      }
    }, this.o.connectTimeoutMs);
    const link: Link = new Link(ws, {
      open: () => {
        if (link.protocol() !== SUBPROTOCOL) {
          link.close();
          this.attemptFailed({ kind: 'connectFailed', message: `the server did not select the ${SUBPROTOCOL} subprotocol` }, null);
          return;
        }
        try {
          link.send({ requestId: helloRid, flags: 0, body: hello });
        } catch (e) {
          link.close();
          this.attemptFailed({ kind: 'protocol', message: `cannot encode Hello: ${String(e)}` }, null);
        }
      },
      frame: (f) => this.onHandshakeFrame(link, f),
      fail: (reason) => {
        if (this.attempt?.link === link) {
          this.attemptFailed(reason, this.attempt.refusal);
        } else if (this.session?.link === link) {
          this.sessionLost(this.session.connError !== null && reason.kind === 'io' ? { kind: 'goodbye', ...this.session.connError } : reason);
        }
      },
    });
    this.attempt = { link, helloRid, resumed, refusal: null, timer };
  }

  /** The `Hello`, resuming every room from its position, as far as they fit in 64 KiB (3.4). */
  private hello(): { hello: BodyOf<'Hello'>; resumed: [string, number][] } {
    const hello: BodyOf<'Hello'> = {
      type: 'Hello',
      minVersion: PROTOCOL_VERSION,
      maxVersion: PROTOCOL_VERSION,
      token: this.token,
      device: this.o.device,
      clientName: this.o.clientName,
      resume: [],
    };
    const resumed: [string, number][] = [];
    let base: number;
    try {
      base = encodeFrame({ requestId: 1, flags: 0, body: hello }).length - HEADER_LEN;
    } catch {
      return { hello, resumed }; // fails to encode on its own, reported when sent
    }
    let left = HELLO_LEN_FLOOR - base;
    for (const [room, r] of this.rooms) {
      const len = 1 + UTF8.encode(room).length + 9;
      if (len > left) continue;
      left -= len;
      hello.resume.push({ room, start: r.sync.startAt() });
      resumed.push([room, r.id]);
    }
    return { hello, resumed };
  }

  private onHandshakeFrame(link: Link, f: Frame): void {
    const a = this.attempt;
    if (a === null || a.link !== link) {
      const s = this.session;
      if (s !== null && s.link === link) this.onFrame(s, f);
      return;
    }
    const b = f.body;
    switch (b.type) {
      case 'Welcome':
        if (f.requestId !== a.helloRid) break;
        if (b.version !== PROTOCOL_VERSION) {
          link.close();
          this.attemptFailed(
            { kind: 'goodbye', code: ErrorCode.UnsupportedVersion, message: `broker chose version ${b.version}` },
            { code: ErrorCode.UnsupportedVersion, message: `broker chose version ${b.version}`, retryAfterMs: 0 },
          );
          return;
        }
        this.establish(a, b);
        return;
      case 'Error':
        a.refusal = { code: b.code, message: b.message, retryAfterMs: b.retryAfterMs };
        return;
      case 'Goodbye': {
        const refusal = a.refusal ?? { code: b.code, message: b.message, retryAfterMs: 0 };
        link.close();
        this.attemptFailed({ kind: 'goodbye', code: refusal.code, message: refusal.message }, refusal);
        return;
      }
      case 'Notice':
        return;
      default:
        break;
    }
    link.fail(ErrorCode.ProtocolViolation, `${b.type} before Welcome`);
  }

  /** An attempt failed: retry with backoff, or stop for good. */
  private attemptFailed(reason: DisconnectReason, refusal: Attempt['refusal']): void {
    const a = this.attempt;
    if (a !== null) clearTimeout(a.timer);
    this.attempt = null;
    if (this.closed) return;
    this.emit({ type: 'disconnected', reason });
    const code = refusal?.code ?? (reason.kind === 'goodbye' ? reason.code : undefined);
    if (code !== undefined && isFatal(code)) {
      this.fatal(code, refusal?.message ?? (reason.kind === 'goodbye' ? reason.message : ''), this.firstConnect === null);
      return;
    }
    if (this.firstConnect !== null) {
      // `Client.connect` reports the first failure instead of retrying.
      const err =
        code !== undefined
          ? ClientError.server(code, refusal?.message ?? '', refusal?.retryAfterMs ?? 0)
          : new ClientError(reason.kind === 'connectFailed' && reason.message === 'connect timeout' ? 'Timeout' : 'ConnectionLost', describeReason(reason));
      void this.finish(err);
      return;
    }
    // A broker that refused for a while (its failed-login back-off) is given that long.
    this.scheduleRetry(refusal?.code === ErrorCode.RateLimited ? refusal.retryAfterMs : 0);
  }

  private scheduleRetry(atLeastMs: number): void {
    const d = this.backoff.nextDelay();
    if (d === null) {
      void this.finish(new ClientError('ReconnectFailed', `gave up after ${this.backoff.failureCount()} attempts`));
      return;
    }
    this.retryTimer = setTimeout(() => this.connectNow(), Math.max(d, atLeastMs));
  }

  /**
   * A fatal refusal: stop, unless the token can be replaced (`getToken`).
   * `wait` keeps a restart loop of the application from hammering the broker.
   */
  private fatal(code: number, message: string, wait: boolean): void {
    const err = new ClientError('Fatal', `${errorCodeName(code)}: ${message}`, code);
    const tokenProblem = code === ErrorCode.TokenExpired || code === ErrorCode.Unauthenticated;
    if (tokenProblem && this.o.getToken !== undefined && this.tokenRefusals < MAX_TOKEN_REFRESHES) {
      this.tokenRefusals += 1;
      const getToken = this.o.getToken;
      this.setState({ kind: 'reconnecting' });
      Promise.resolve()
        .then(() => getToken(err))
        .then(
          (token) => {
            if (this.closed) return;
            if (typeof token !== 'string' || token === '') throw new Error('getToken gave no token');
            this.token = token;
            this.scheduleRetry(0);
          },
          (e: unknown) => {
            void this.finish(new ClientError('Fatal', `${err.message}; getToken failed: ${String(e)}`, code));
          },
        )
        .catch((e: unknown) => void this.finish(new ClientError('Fatal', `${err.message}; ${String(e)}`, code)));
      return;
    }
    if (wait && code !== ErrorCode.SessionReplaced) {
      const d = this.backoff.nextDelay() ?? 0;
      this.retryTimer = setTimeout(() => void this.finish(err), d);
      return;
    }
    void this.finish(err);
  }

  /** A connection is up: resume rooms, resend publishes and queued requests, restore per-connection settings. */
  private establish(a: Attempt, welcome: BodyOf<'Welcome'>): void {
    clearTimeout(a.timer);
    this.attempt = null;
    // Accept what the broker may send; never less than the 1 MiB default.
    a.link.maxFrameLen = Math.max(welcome.maxFrameLen, a.link.maxFrameLen);
    const heartbeat = welcome.heartbeatMs > 0 ? Math.min(this.o.heartbeatMs, welcome.heartbeatMs) : this.o.heartbeatMs;
    const s = new Session(a.link, welcome, heartbeat, this.o.deadLinkTimeoutMs, Date.now, (reason) => {
      if (this.session === s) {
        s.link.close();
        this.sessionLost(reason);
      }
    });
    this.session = s;
    this.backoff.reset();
    this.tokenRefusals = 0;
    const resumedRooms: string[] = [];
    const items: [string, number][] = [];
    for (const [room, id] of a.resumed) {
      const r = this.rooms.get(room);
      if (r !== undefined && r.id === id) {
        r.wire = 'pending';
        resumedRooms.push(room);
      }
      items.push([room, id]);
    }
    if (items.length > 0) s.inflight.set(a.helloRid, { kind: 'subscribe', items });
    // Rooms that did not fit in the Hello, or were added meanwhile.
    const rest = [...this.rooms].filter(([, r]) => r.wire === 'idle').map(([room]) => room);
    this.sendSubscribe(rest);
    if (this.presence !== null) this.sendInternal({ type: 'SetPresence', status: this.presence }, 'SetPresence');
    if (this.watchingPresence) this.sendInternal({ type: 'WatchPresence', enabled: true }, 'WatchPresence');
    for (const order of [...this.publishes.keys()]) this.sendPublish(order);
    const deferred = this.deferred;
    this.deferred = [];
    for (const d of deferred) if (!d.reply.settled()) this.sendRequest(d.body, d.mode, d.reply);
    const receipts = [...this.receipts.values()];
    this.receipts.clear();
    for (const r of receipts) this.sendReceipt(r.room, r.kind, r.seq);
    this.setState({ kind: 'connected', user: welcome.user, sessionId: welcome.sessionId });
    if (this.everConnected) {
      this.emit({ type: 'reconnected', sessionId: welcome.sessionId, resumed: resumedRooms });
    } else {
      this.everConnected = true;
      this.emit({ type: 'connected', user: welcome.user, sessionId: welcome.sessionId });
    }
    this.firstConnect?.resolve();
    this.firstConnect = null;
    for (const w of this.connectedWaiters) w.resolve();
    this.connectedWaiters = [];
  }

  /** The session ended: keep what must survive, then reconnect (or stop on a fatal code). */
  private sessionLost(reason: DisconnectReason): void {
    const s = this.session;
    if (s === null) return;
    s.stop();
    this.session = null;
    for (const p of this.publishes.values()) p.onWire = false;
    for (const r of s.takeReceipts()) this.keepReceipt(r.room, r.kind, r.seq);
    // Read-only requests go again, in their original order, on the next
    // connection; the others may have been carried out.
    const retried: [number, Body, Reply<Body>][] = [];
    for (const [rid, inf] of s.inflight) {
      if (inf.kind === 'request') {
        if (inf.retry !== null && !inf.reply.settled()) retried.push([rid, inf.retry, inf.reply]);
        else inf.reply.reject(new ClientError('ConnectionLost', 'the connection was lost before the reply; the request may have been carried out'));
      } else if (inf.kind === 'unsubscribe') {
        inf.reply?.resolve(); // the connection's subscriptions ended with it
      }
    }
    s.inflight.clear();
    retried.sort((x, y) => x[0] - y[0]);
    this.deferred = [...retried.map(([, body, rep]): Deferred => ({ body, mode: 'reply', reply: rep })), ...this.deferred];
    for (const r of this.rooms.values()) {
      r.wire = 'idle';
      r.sync.onDisconnected();
      r.ack?.resolve(); // registered; resumed on the next connection
      r.ack = null;
    }
    this.setState({ kind: 'reconnecting' });
    this.emit({ type: 'disconnected', reason });
    if (reason.kind === 'goodbye' && isFatal(reason.code)) {
      this.fatal(reason.code, reason.message, true);
      return;
    }
    this.scheduleRetry(0);
  }

  /** The client stops: everything still waiting gets `error` (or `Closed`). */
  private async finish(error: ClientError | null): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (error !== null) this.stoppedWith = error;
    const err = error ?? new ClientError('Closed', 'the client is closed');
    if (this.retryTimer !== undefined) clearTimeout(this.retryTimer);
    if (this.pauseTimer !== undefined) clearTimeout(this.pauseTimer);
    const a = this.attempt;
    if (a !== null) {
      clearTimeout(a.timer);
      a.link.close();
      this.attempt = null;
    }
    const s = this.session;
    if (s !== null) {
      s.stop();
      s.link.close({ requestId: 0, flags: 0, body: { type: 'Goodbye', code: ErrorCode.Normal, message: 'client stopping' } });
      for (const inf of s.inflight.values()) {
        if (inf.kind === 'request') inf.reply.reject(err);
        else if (inf.kind === 'unsubscribe') inf.reply?.resolve();
      }
      this.session = null;
    }
    this.firstConnect?.reject(err);
    this.firstConnect = null;
    for (const w of this.connectedWaiters) w.reject(err);
    this.connectedWaiters = [];
    for (const p of this.publishes.values()) p.reply.reject(err);
    this.publishes.clear();
    for (const d of this.deferred) d.reply.reject(err);
    this.deferred = [];
    for (const r of this.rooms.values()) {
      r.ack?.reject(err);
      this.safe(() => r.opts.onEnd?.(error));
    }
    this.rooms.clear();
    for (const w of this.flushWaiters) w();
    this.flushWaiters = [];
    for (const w of this.spaceWaiters) w();
    this.spaceWaiters = [];
    try {
      await this.o.cursorStore.flush?.();
    } catch (e) {
      console.warn('confab-client: cannot flush the cursor store', e);
    }
    this.setState({ kind: 'closed' });
    this.emit({ type: 'closed', error });
  }

  // ----- requests ----------------------------------------------------------

  /**
   * Sends a request and waits for its reply, within the request timeout
   * (a connection included). `ephemeral` requests (typing) fail while
   * offline; receipts and per-connection settings are kept for the next
   * connection and resolve at once.
   */
  private request(body: Body, mode: 'reply' | 'ephemeral' = 'reply'): Promise<Body> {
    const closed = this.closedError();
    if (closed !== null) return Promise.reject(closed);
    const [rep, done] = reply<Body>();
    const ack: Body = { type: 'Ack' };
    switch (body.type) {
      case 'SetPresence':
        this.presence = body.status;
        break;
      case 'WatchPresence':
        this.watchingPresence = body.enabled;
        break;
      case 'RefreshToken':
        // Used from the next Hello on; a refused token is handled as a
        // refusal of the connection (getToken, or Fatal).
        this.token = body.token;
        break;
      case 'Receipt':
        if (!isValidId(body.room, 128) || body.seq < 1n) return Promise.reject(new ClientError('InvalidConfig', 'bad receipt'));
        if (this.session !== null) this.sendReceipt(body.room, body.kind, body.seq);
        else this.keepReceipt(body.room, body.kind, body.seq);
        return Promise.resolve(ack);
      default:
        break;
    }
    const s = this.session;
    if (s !== null) {
      this.sendRequest(body, mode === 'ephemeral' ? 'noReply' : 'reply', rep);
    } else if (mode === 'ephemeral') {
      rep.reject(new ClientError('NotConnected', 'not connected'));
    } else if (body.type === 'SetPresence' || body.type === 'WatchPresence' || body.type === 'RefreshToken') {
      rep.resolve(ack); // applied on the next connection
    } else {
      this.deferred = this.deferred.filter((d) => !d.reply.settled());
      if (this.deferred.length >= this.o.outboundQueueCapacity) {
        rep.reject(new ClientError('QueueFull', 'too many requests wait for a connection'));
      } else {
        this.deferred.push({ body, mode: 'reply', reply: rep });
      }
    }
    return this.withTimeout(done, rep);
  }

  private sendRequest(body: Body, mode: 'reply' | 'noReply', rep: Reply<Body>): void {
    const s = this.session;
    if (s === null) {
      rep.reject(new ClientError('NotConnected', 'not connected'));
      return;
    }
    const rid = this.nextRid();
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
    const err = this.sendOn(s, frame);
    if (err !== null) {
      s.inflight.delete(rid);
      rep.reject(err);
    }
  }

  private sendInternal(body: Body, name: string): void {
    const s = this.session;
    if (s === null) return;
    const rid = this.nextRid();
    s.inflight.set(rid, { kind: 'internal', name });
    this.sendOn(s, { requestId: rid, flags: 0, body });
  }

  private sendReceipt(room: string, kind: ReceiptKind, seq: Seq): void {
    const s = this.session;
    if (s === null) {
      this.keepReceipt(room, kind, seq);
      return;
    }
    s.sendReceipt(this.nextRid(), room, kind, seq);
    // One Ping after the receipts of this turn confirms them all.
    if (!this.barrierQueued) {
      this.barrierQueued = true;
      queueMicrotask(() => {
        this.barrierQueued = false;
        this.session?.sendBarrier();
      });
    }
  }

  private keepReceipt(room: string, kind: ReceiptKind, seq: Seq): void {
    const key = `${kind}\u0000${room}`;
    const old = this.receipts.get(key);
    if (old === undefined || seq > old.seq) this.receipts.set(key, { room, kind, seq });
  }

  // ----- publishing internals ------------------------------------------------

  private toPublish(m: Message): BodyOf<'Publish'> {
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

  private queuePublish(publish: BodyOf<'Publish'>): PendingPublish {
    const clientMsgId = this.nextMsgId;
    this.nextMsgId += 1n;
    const [rep, ack] = reply<PublishAck>();
    // A caller that never looks at `ack` learns of refusals from
    // `publishFailed`; an unobserved rejection must not crash a page.
    ack.catch(() => undefined);
    const order = this.nextOrder++;
    this.publishes.set(order, { publish: { ...publish, clientMsgId }, reply: rep, onWire: false, rateLimited: 0, sentAlone: false, sends: 0 });
    this.sendPublish(order);
    return { clientMsgId, ack };
  }

  /**
   * Sends a pending publish on the current connection, if any, unless
   * publishing is paused (a rate limit, a full broker storage) or the
   * window is full; it goes when the pause ends, in order.
   */
  private sendPublish(order: number): void {
    if (this.publishPausedUntil !== null && this.publishPausedUntil > Date.now()) return;
    let onWire = 0;
    for (const p of this.publishes.values()) if (p.onWire) onWire++;
    if (onWire >= this.publishWindow) return;
    const s = this.session;
    const p = this.publishes.get(order);
    if (s === null || p === undefined || p.onWire) return;
    const max = s.welcome.maxPayloadLen;
    if (p.publish.payload.length > max) {
      // Sending it would only earn a refusal, after every reconnection.
      this.completePublish(order, new ClientError('PayloadTooLarge', `payload of ${p.publish.payload.length} bytes; the broker takes ${max}`));
      return;
    }
    const rid = this.nextRid();
    p.onWire = true;
    p.sentAlone = onWire === 0;
    p.sends += 1;
    s.inflight.set(rid, { kind: 'publish', order });
    const err = this.sendOn(s, { requestId: rid, flags: 0, body: p.publish });
    if (err !== null) {
      s.inflight.delete(rid);
      this.completePublish(order, err);
    }
  }

  private sendWaitingPublishes(): void {
    for (const [order, p] of this.publishes) if (!p.onWire) this.sendPublish(order);
  }

  private pausePublishing(ms: number): void {
    this.publishPausedUntil = Date.now() + ms;
    if (this.pauseTimer !== undefined) clearTimeout(this.pauseTimer);
    this.pauseTimer = setTimeout(() => {
      this.pauseTimer = undefined;
      this.publishPausedUntil = null;
      this.sendWaitingPublishes();
    }, ms);
  }

  private completePublish(order: number, result: PublishAck | ClientError): void {
    const p = this.publishes.get(order);
    if (p === undefined) return;
    this.publishes.delete(order);
    if (result instanceof ClientError) {
      p.reply.reject(result);
      this.emit({ type: 'publishFailed', room: p.publish.room, clientMsgId: p.publish.clientMsgId, error: result });
    } else {
      p.reply.resolve(result);
    }
    const w = this.spaceWaiters.shift();
    if (w !== undefined) w();
    if (this.publishes.size === 0) {
      for (const f of this.flushWaiters) f();
      this.flushWaiters = [];
    }
  }

  private onPublishReply(order: number, body: Body): void {
    const p = this.publishes.get(order);
    if (p === undefined) return;
    if (body.type === 'Error' && body.code === ErrorCode.RateLimited) {
      // Refusals of a publish sent alone count against the retries; those
      // of a burst (a queue resent after a reconnection) are of the SDK's
      // own making and are retried, paced by a window that starts at one.
      p.onWire = false;
      if (p.sentAlone) p.rateLimited += 1;
      if (this.o.rateLimitRetries > 0 && p.rateLimited <= this.o.rateLimitRetries) {
        this.publishWindow = 1;
        this.pausePublishing(Math.max(1, body.retryAfterMs));
        return;
      }
    }
    if (body.type === 'Error' && body.code === ErrorCode.StorageFull) {
      // Nothing was stored: resend with the same id after a backoff delay,
      // one at a time, later publishes waiting behind it in order.
      p.onWire = false;
      this.publishWindow = 1;
      const d = this.storageFull.nextDelay() ?? this.o.backoff.maxMs;
      if (this.storageFull.failureCount() === 1) console.warn('confab-client: the broker storage is full; publishes wait and are sent again with back-off');
      this.pausePublishing(Math.max(1, d));
      return;
    }
    if (body.type === 'PublishAck') {
      if (body.duplicate && p.sends === 1) {
        console.warn(`confab-client: first send of a publish acknowledged as a duplicate (client message id ${body.clientMsgId} reused)`);
      }
      this.completePublish(order, { room: body.room, clientMsgId: body.clientMsgId, seq: body.seq, timestampUs: body.timestampUs, duplicate: body.duplicate });
      this.storageFull.reset();
      if (this.publishWindow !== Number.POSITIVE_INFINITY) {
        this.publishWindow *= 2;
        if (this.publishWindow >= this.o.outboundQueueCapacity) this.publishWindow = Number.POSITIVE_INFINITY;
      }
      this.sendWaitingPublishes();
      return;
    }
    const err = body.type === 'Error' ? ClientError.server(body.code, body.message, body.retryAfterMs) : new ClientError('UnexpectedReply', `${body.type} to a Publish`);
    this.completePublish(order, err);
    this.sendWaitingPublishes();
  }

  // ----- subscriptions internals ----------------------------------------------

  /** Subscribes rooms on the current connection from their positions. */
  private sendSubscribe(rooms: string[]): void {
    const s = this.session;
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
      const rid = this.nextRid();
      s.inflight.set(rid, { kind: 'subscribe', items: ids });
      this.sendOn(s, { requestId: rid, flags: 0, body: { type: 'Subscribe', items } });
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
        this.endRoom(room, id, new ClientError('UnexpectedReply', 'a SubscribeAck without a result for this room'));
        return;
      }
      const accepted = result.code === ErrorCode.Normal || result.code === ErrorCode.HistoryTruncated;
      const r = this.rooms.get(room);
      if (r === undefined || r.id !== id) {
        if (accepted && r === undefined) {
          // Unsubscribed while the subscribe was in flight.
          const urid = this.nextRid();
          s.inflight.set(urid, { kind: 'unsubscribe', reply: null });
          this.sendOn(s, { requestId: urid, flags: 0, body: { type: 'Unsubscribe', rooms: [room] } });
        }
        return;
      }
      if (!accepted) {
        this.endRoom(room, id, ClientError.server(result.code, `subscription to room ${room} refused`, 0));
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
  private endRoom(room: string, id: number, err: ClientError): void {
    const r = this.rooms.get(room);
    if (r === undefined || r.id !== id) return;
    this.rooms.delete(room);
    r.ack?.reject(err);
    this.safe(() => r.opts.onEnd?.(err));
  }

  private onEvents(room: string, records: EventRecord[], replayed: boolean): void {
    for (const rec of records) {
      const r = this.rooms.get(room);
      if (r === undefined) return;
      const out: SyncAction<EventRecord>[] = [];
      r.sync.onEvent(rec, out);
      this.apply(room, out, replayed);
    }
  }

  /** Performs a room's sync actions. */
  private apply(room: string, actions: SyncAction<EventRecord>[], replayed: boolean): void {
    for (const a of actions) {
      const r = this.rooms.get(room);
      if (r === undefined) return;
      switch (a.kind) {
        case 'deliver': {
          const event: RoomEvent = { ...a.event, room, replayed };
          this.safe(() => r.opts.onEvent(event));
          this.o.cursorStore.set(room, a.event.seq);
          break;
        }
        case 'duplicate':
          break;
        case 'fetchHistory':
          this.sendFill(room, r.id, a.after, a.limit);
          break;
        case 'resubscribe':
          this.sendSubscribe([room]);
          break;
        case 'truncated':
          this.emit({ type: 'historyTruncated', room, from: a.from, to: a.to });
          break;
      }
    }
  }

  private sendFill(room: string, id: number, after: Seq, limit: number): void {
    const s = this.session;
    if (s === null) {
      // Offline: the resumption on reconnect fills the gap.
      this.rooms.get(room)?.sync.onFillFailed([]);
      return;
    }
    const rid = this.nextRid();
    s.inflight.set(rid, { kind: 'fill', room, id });
    this.sendOn(s, { requestId: rid, flags: 0, body: { type: 'HistoryRequest', room, direction: 'After', anchor: after, limit } });
  }

  // ----- frames ---------------------------------------------------------------

  private onFrame(s: Session, f: Frame): void {
    s.received();
    const rid = f.requestId;
    const replayed = (f.flags & Flags.REPLAY) !== 0;
    const b = f.body;
    switch (b.type) {
      case 'Event':
        this.onEvents(b.room, [b.event], replayed);
        return;
      case 'EventBatch':
        this.onEvents(b.room, b.events, replayed);
        return;
      case 'Ping':
        this.sendOn(s, { requestId: 0, flags: 0, body: { type: 'Pong', nonce: b.nonce } });
        return;
      case 'Pong':
        s.onPong(b.nonce);
        return;
      case 'Goodbye':
        s.link.close();
        this.sessionLost({ kind: 'goodbye', code: b.code, message: b.message });
        return;
      case 'Lagging':
        this.emit({ type: 'lagging', room: b.room, resumeFrom: b.resumeFrom, head: b.head });
        return;
      case 'CaughtUp':
        this.emit({ type: 'caughtUp', room: b.room, seq: b.seq });
        return;
      case 'Notice':
        this.emitter.emit('notice', { level: b.level, code: b.code, text: b.text });
        return;
      case 'TypingEvent':
        this.emitter.emit('typing', { room: b.room, users: b.users });
        return;
      case 'ReceiptEvent':
        this.emitter.emit('receipts', { room: b.room, entries: b.entries });
        return;
      case 'Error':
        if (rid === 0) {
          // The connection is closing; the Goodbye (or the close) says so.
          s.connError = { code: b.code, message: b.message };
          return;
        }
        this.onReply(s, rid, b);
        return;
      case 'PresenceEvent':
        if (rid === 0) {
          this.emitter.emit('presence', b.entries);
          return;
        }
        this.onReply(s, rid, b);
        return;
      case 'Ack':
      case 'SubscribeAck':
      case 'PublishAck':
      case 'HistoryPage':
      case 'RoomInfo':
      case 'RoomList':
      case 'MessageStatus':
        this.onReply(s, rid, b);
        return;
      default:
        // 6.6: a client-to-server frame from the broker.
        s.link.fail(ErrorCode.ProtocolViolation, `the broker sent ${b.type}`);
    }
  }

  private onReply(s: Session, rid: number, body: Body): void {
    const inf: Inflight | undefined = s.inflight.get(rid);
    if (inf === undefined) {
      if (body.type === 'Error') {
        console.warn(`confab-client: ${s.noReplyName(rid) ?? 'a request'} failed: ${errorCodeName(body.code)} ${body.message}`);
      }
      return;
    }
    s.inflight.delete(rid);
    switch (inf.kind) {
      case 'publish':
        this.onPublishReply(inf.order, body);
        return;
      case 'subscribe':
        if (body.type === 'SubscribeAck') {
          this.onSubscribeAck(s, rid, inf.items, body.results);
        } else {
          const err = body.type === 'Error' ? ClientError.server(body.code, body.message, body.retryAfterMs) : new ClientError('UnexpectedReply', `${body.type} to a Subscribe`);
          for (const [room, id] of inf.items) this.endRoom(room, id, err);
        }
        return;
      case 'unsubscribe':
        if (body.type === 'Error') inf.reply?.reject(ClientError.server(body.code, body.message, body.retryAfterMs));
        else inf.reply?.resolve();
        return;
      case 'fill': {
        const r = this.rooms.get(inf.room);
        if (r === undefined || r.id !== inf.id) return;
        const out: SyncAction<EventRecord>[] = [];
        if (body.type === 'HistoryPage') r.sync.onHistory(body.first, body.events, out);
        else r.sync.onFillFailed(out);
        this.apply(inf.room, out, true);
        return;
      }
      case 'request':
        if (body.type === 'Error') inf.reply.reject(ClientError.server(body.code, body.message, body.retryAfterMs));
        else inf.reply.resolve(body);
        return;
      case 'internal':
        if (body.type === 'Error') console.warn(`confab-client: ${inf.name} failed: ${errorCodeName(body.code)} ${body.message}`);
        return;
    }
  }
}

/** Codes after which reconnecting with the same settings cannot help. */
function isFatal(code: number): boolean {
  return code === ErrorCode.Unauthenticated || code === ErrorCode.TokenExpired || code === ErrorCode.UnsupportedVersion || code === ErrorCode.SessionReplaced;
}

/** Whether a request only reads, so that sending it again cannot do anything twice. */
function isReadOnly(body: Body): boolean {
  return body.type === 'HistoryRequest' || body.type === 'GetRoomInfo' || body.type === 'ListRooms' || body.type === 'GetPresence' || body.type === 'GetMessageStatus';
}

function resolve(o: ClientOptions): Resolved {
  const bad = (m: string): never => {
    throw new ClientError('InvalidConfig', m);
  };
  if (typeof o.url !== 'string' || !/^wss?:\/\//.test(o.url)) bad('url must start with ws:// or wss://');
  if (typeof o.token !== 'string') bad('token must be a string');
  if (!isValidId(o.device, 64)) bad('device must be 1-64 bytes of UTF-8 without control characters');
  const backoff = backoffConfig(o.backoff);
  if (typeof backoff === 'string') bad(backoff);
  const ws = o.webSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (ws === undefined) bad('no WebSocket here: pass options.webSocket (on Node 20, the `ws` package\'s WebSocket)');
  const positive = (v: number | undefined, d: number, name: string): number => {
    const x = v ?? d;
    if (!(Number.isFinite(x) && x > 0)) bad(`${name} must be a positive number`);
    return x;
  };
  const r: Resolved = {
    url: o.url,
    device: o.device,
    clientName: o.clientName ?? `confab-client-ts/${VERSION}`,
    webSocket: ws as WebSocketConstructor,
    cursorStore: o.cursorStore ?? new MemoryCursorStore(),
    backoff: backoff as BackoffConfig,
    heartbeatMs: positive(o.heartbeatMs, 15_000, 'heartbeatMs'),
    deadLinkTimeoutMs: positive(o.deadLinkTimeoutMs, 35_000, 'deadLinkTimeoutMs'),
    connectTimeoutMs: positive(o.connectTimeoutMs, 10_000, 'connectTimeoutMs'),
    requestTimeoutMs: positive(o.requestTimeoutMs, 30_000, 'requestTimeoutMs'),
    outboundQueueCapacity: positive(o.outboundQueueCapacity, 1024, 'outboundQueueCapacity'),
    maxOutOfOrder: positive(o.maxOutOfOrder, 4096, 'maxOutOfOrder'),
    historyPageSize: Math.min(0xffff, positive(o.historyPageSize, 500, 'historyPageSize')),
    rateLimitRetries: o.rateLimitRetries ?? 5,
    getToken: o.getToken,
    random: o.random ?? Math.random,
  };
  if (r.deadLinkTimeoutMs <= r.heartbeatMs) bad('deadLinkTimeoutMs must be above heartbeatMs');
  return r;
}
