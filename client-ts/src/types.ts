/**
 * The SDK's public value types: options, events, room entries.
 *
 * @module
 */

import type {
  EventRecord,
  NoticeLevel,
  PresenceEntry,
  ReceiptEntry,
  Seq,
} from './codec/index.js';
import type { BackoffOptions } from './backoff.js';
import type { CursorStore } from './cursor.js';
import type { ClientError, DisconnectReason } from './errors.js';
import type { WebSocketConstructor } from './transport.js';

/** How a {@link Client} connects and behaves. Only `url`, `token` and `device` are required. */
export interface ClientOptions {
  /** `ws://host:port/ws` or `wss://host:port/ws`. */
  url: string;
  /** The authentication token: a JWT, or `user` / `user:device` with the broker's development authentication. */
  token: string;
  /** This installation's device id (1-64 bytes), stable across restarts: positions, deduplication and sessions are per device. */
  device: string;
  /** For the broker's logs. Default `confab-client-ts/<version>`. */
  clientName?: string;
  /** The WebSocket constructor. Default: `globalThis.WebSocket` (browsers, Node 22+); on Node 20 pass `ws`'s. */
  webSocket?: WebSocketConstructor;
  /** Where positions are kept. Default: a {@link MemoryCursorStore}. */
  cursorStore?: CursorStore;
  /** Reconnection delays (full jitter). */
  backoff?: BackoffOptions;
  /** A `Ping` after this long without traffic, in ms (the broker's `heartbeat_ms` if shorter). Default 15000. */
  heartbeatMs?: number;
  /** Nothing received for this long: drop the connection and reconnect, in ms. Default 35000. */
  deadLinkTimeoutMs?: number;
  /** WebSocket open plus handshake, in ms. Default 10000. */
  connectTimeoutMs?: number;
  /** Requests (history, rooms, ...), waiting for a connection included, in ms; publishes have none. Default 30000. */
  requestTimeoutMs?: number;
  /** Unacknowledged publishes kept; also requests waiting for a connection. Default 1024. */
  outboundQueueCapacity?: number;
  /** Entries held per room while a gap is filled from history. Default 4096. */
  maxOutOfOrder?: number;
  /** Entries per history request when filling a gap (1-65535). Default 500. */
  historyPageSize?: number;
  /** Times one publish refused with `RateLimited` is resent after the broker's delay. Default 5. */
  rateLimitRetries?: number;
  /**
   * Called when the broker refuses the token (`TokenExpired`, `Unauthenticated`),
   * at the handshake or by ending the connection: return a new token and
   * the client reconnects with it. Without it (or when it throws, or three
   * refusals in a row) the client stops with a `Fatal` error.
   */
  getToken?: (error: ClientError) => string | Promise<string>;
  /** A number in [0, 1), for backoff jitter and message ids. Default `Math.random`. */
  random?: () => number;
}

/** A room entry handed to the application. */
export interface RoomEvent extends EventRecord {
  room: string;
  /** From the log (a backlog after a (re)subscription, catch-up) rather than live fan-out. */
  replayed: boolean;
}

/** The broker's acknowledgement of a stored publish. */
export interface PublishAck {
  room: string;
  clientMsgId: bigint;
  seq: Seq;
  timestampUs: bigint;
  /** A retry of an already stored publish: the original's sequence, nothing stored twice. */
  duplicate: boolean;
}

/** What to publish. */
export interface Message {
  room: string;
  /** Bytes, or a string sent as UTF-8. */
  payload: Uint8Array | string;
  /** Default `MessageKind.MESSAGE`. Clients may publish 1-4 and 128-255. */
  kind?: number;
  /** A reply's target; required for edits, deletes and reactions. */
  refersTo?: Seq | null;
  /** The thread root. */
  thread?: Seq | null;
}

/** A publish in the outbox. */
export interface PendingPublish {
  /** The id the broker deduplicates on; every reader sees it in `RoomEvent.clientMsgId`. */
  clientMsgId: bigint;
  /** Settles with the acknowledgement, or the refusal (also reported as `publishFailed`). */
  ack: Promise<PublishAck>;
}

/** Where the connection stands. */
export type ConnectionState =
  | { kind: 'connecting' }
  | { kind: 'connected'; user: string; sessionId: bigint }
  | { kind: 'reconnecting' }
  | { kind: 'closed' };

/** What happened to the connection or to a room's delivery. */
export type ConnectionEvent =
  /** An attempt starts (`attempt` counts from 1 since the last connection). */
  | { type: 'connecting'; attempt: number }
  /** The first connection is up. */
  | { type: 'connected'; user: string; sessionId: bigint }
  /** A connection ended or an attempt failed. */
  | { type: 'disconnected'; reason: DisconnectReason }
  /** A connection is up again; rooms resumed, publishes resent. */
  | { type: 'reconnected'; sessionId: bigint; resumed: string[] }
  /** The broker switched the room to catch-up from its log (nothing is lost). */
  | { type: 'lagging'; room: string; resumeFrom: Seq; head: Seq }
  /** The room is live again. */
  | { type: 'caughtUp'; room: string; seq: Seq }
  /** Retention removed these entries before this device read them; delivery goes on from `to + 1`. */
  | { type: 'historyTruncated'; room: string; from: Seq; to: Seq }
  /** A publish was refused (also reported to its `ack`). */
  | { type: 'publishFailed'; room: string; clientMsgId: bigint; error: ClientError }
  /** The client stopped; `error` is `null` after `close()`. */
  | { type: 'closed'; error: ClientError | null };

/** Events of a {@link Client}, by name. */
export interface ClientEvents {
  connection: ConnectionEvent;
  state: ConnectionState;
  /** The complete set of users typing in a room (it replaces the previous one). */
  typing: { room: string; users: string[] };
  /** Presence changes (after `watchPresence(true)`). */
  presence: PresenceEntry[];
  /** Delivered and read markers moved in a room. */
  receipts: { room: string; entries: ReceiptEntry[] };
  /** Unsolicited information from the broker. */
  notice: { level: NoticeLevel; code: number; text: string };
}

/** How to follow a room. */
export interface SubscribeOptions {
  /** Start at this sequence whatever the cursor store says (`1n`: the whole room). */
  from?: Seq;
  /** Each entry, once, in sequence order. The room's cursor moves after it returns. */
  onEvent: (event: RoomEvent) => void;
  /** The broker ended the subscription (`error`), or it was unsubscribed or the client closed (`null`). */
  onEnd?: (error: ClientError | null) => void;
}
