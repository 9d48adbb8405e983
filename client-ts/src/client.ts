/**
 * The client: one connection to a broker, kept up across everything that
 * can happen to it, with the Rust SDK's guarantees (docs/sdk.md): every
 * entry of every followed room exactly once and in order, publishes
 * stored once, positions kept in a cursor store.
 *
 * Everything here runs on the event loop: frames, timers and calls are
 * handled one at a time, so there are no locks. Per-room ordering is the
 * pure `RoomSync`'s (`rooms.ts` performs its actions); publishes are the
 * `Outbox`'s (`outbox.ts`).
 *
 * @module
 */

import {
  type Body,
  type BodyOf,
  type Direction,
  ErrorCode,
  Flags,
  type Frame,
  HELLO_LEN_FLOOR,
  HEADER_LEN,
  PROTOCOL_VERSION,
  type Seq,
  encodeFrame,
  errorCodeName,
  isValidId,
} from './codec/index.js';
import { Backoff } from './backoff.js';
import { Emitter, type Unlisten } from './emitter.js';
import { ClientError, type DisconnectReason, describeReason } from './errors.js';
import type { Host } from './host.js';
import { type Resolved, resolveOptions } from './options.js';
import { Outbox } from './outbox.js';
import { Requests } from './requests.js';
import { Rooms } from './rooms.js';
import { type Inflight, type Reply, Session, reply } from './session.js';
import { Link, SUBPROTOCOL } from './transport.js';
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

/** History page size of `history()`. */
const HISTORY_PAGE = 500;
/** Token refusals in a row, each after a `getToken`, before the client gives up. */
const MAX_TOKEN_REFRESHES = 3;

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
  private readonly rooms: Rooms;
  private readonly outbox: Outbox;
  private readonly requests: Requests;
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
  private firstConnect: Reply<void> | null = null;
  private connectedWaiters: Reply<void>[] = [];

  private constructor(options: ClientOptions, firstConnect: Reply<void> | null) {
    this.o = resolveOptions(options);
    this.token = options.token;
    this.firstConnect = firstConnect;
    this.backoff = new Backoff(this.o.backoff, this.o.random);
    const host: Host = {
      session: () => this.session,
      nextRid: () => this.nextRid(),
      emit: (e) => this.emit(e),
      send: (s, f) => this.sendOn(s, f),
    };
    this.rooms = new Rooms(host, this.o);
    this.requests = new Requests(host, this.o.outboundQueueCapacity);
    this.outbox = new Outbox(host, {
      capacity: this.o.outboundQueueCapacity,
      rateLimitRetries: this.o.rateLimitRetries,
      backoff: this.o.backoff,
      random: this.o.random,
    });
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
    if (this.session === null) return Promise.resolve(new Subscription(room, this, this.rooms.add(room, options, null)));
    const [ack, done] = reply<void>();
    const sub = new Subscription(room, this, this.rooms.add(room, options, ack));
    return done.then(() => sub);
  }

  /** @internal Used by {@link Subscription.unsubscribe}. */
  unsubscribeRoom(room: string, id: number): Promise<void> {
    const done = this.rooms.remove(room, id);
    if (done === null) return Promise.resolve();
    return within(done, this.o.requestTimeoutMs);
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
    const publish = Outbox.toPublish(message);
    if (!this.outbox.hasRoom()) throw new ClientError('QueueFull', 'the outbound queue is full');
    return this.outbox.queue(publish);
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
    const publish = Outbox.toPublish(message);
    for (;;) {
      const closed = this.closedError();
      if (closed !== null) throw closed;
      if (this.outbox.hasRoom()) return this.outbox.queue(publish).ack;
      await this.outbox.waitForRoom();
    }
  }

  /** Waits until every publish queued so far is acknowledged or refused. */
  flush(): Promise<void> {
    return this.outbox.flush();
  }

  /** Unacknowledged publishes in the outbox. */
  get outboxSize(): number {
    return this.outbox.size;
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
    let base: number;
    try {
      base = encodeFrame({ requestId: 1, flags: 0, body: hello }).length - HEADER_LEN;
    } catch {
      return { hello, resumed: [] }; // fails to encode on its own, reported when sent
    }
    const { items, ids } = this.rooms.resumeItems(HELLO_LEN_FLOOR - base);
    hello.resume = items;
    return { hello, resumed: ids };
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
    // Rooms that did not fit in the Hello, or were added meanwhile, are
    // subscribed now.
    const resumedRooms = this.rooms.connected(s, a.helloRid, a.resumed);
    if (this.presence !== null) this.requests.sendInternal({ type: 'SetPresence', status: this.presence }, 'SetPresence');
    if (this.watchingPresence) this.requests.sendInternal({ type: 'WatchPresence', enabled: true }, 'WatchPresence');
    this.outbox.sendWaiting();
    this.requests.onConnected();
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
    this.outbox.onConnectionLost();
    this.requests.onConnectionLost(s);
    this.rooms.onConnectionLost();
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
      this.session = null;
    }
    this.firstConnect?.reject(err);
    this.firstConnect = null;
    for (const w of this.connectedWaiters) w.reject(err);
    this.connectedWaiters = [];
    this.outbox.failAll(err);
    this.requests.failAll(err, s);
    this.rooms.endAll(error, err);
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
        this.requests.receipt(body.room, body.kind, body.seq);
        return Promise.resolve(ack);
      default:
        break;
    }
    if (this.session === null && (body.type === 'SetPresence' || body.type === 'WatchPresence' || body.type === 'RefreshToken')) {
      rep.resolve(ack); // applied on the next connection
    } else {
      this.requests.send(body, mode === 'ephemeral' ? 'noReply' : 'reply', rep);
    }
    return this.withTimeout(done, rep);
  }

  // ----- frames ---------------------------------------------------------------

  private onFrame(s: Session, f: Frame): void {
    s.received();
    const rid = f.requestId;
    const replayed = (f.flags & Flags.REPLAY) !== 0;
    const b = f.body;
    switch (b.type) {
      case 'Event':
        this.rooms.onEvents(b.room, [b.event], replayed);
        return;
      case 'EventBatch':
        this.rooms.onEvents(b.room, b.events, replayed);
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
        this.outbox.onReply(inf.order, body);
        return;
      case 'subscribe':
        this.rooms.onSubscribeReply(s, rid, inf.items, body);
        return;
      case 'unsubscribe':
        if (body.type === 'Error') inf.reply?.reject(ClientError.server(body.code, body.message, body.retryAfterMs));
        else inf.reply?.resolve();
        return;
      case 'fill':
        this.rooms.onFillReply(inf.room, inf.id, body);
        return;
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

/** `p`, or a `Timeout` error after `ms`. */
function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let t: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new ClientError('Timeout', `no reply within ${ms} ms`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(t));
}
