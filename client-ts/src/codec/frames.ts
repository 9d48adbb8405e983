/**
 * Every frame body of protocol version 1 (docs/protocol.md sections 7 and
 * 8): its TypeScript shape and its wire layout.
 *
 * Conventions: `u64` values (sequences, client message ids, timestamps in
 * microseconds, nonces, session ids) are `bigint`, so none loses
 * precision; `Seq?` and optional ids are `null` when absent; error codes
 * are numbers (an open set, see {@link ErrorCode}); closed enumerations are
 * their protocol names (`'Group'`, `'InviteOnly'`, ...).
 *
 * @module
 */

import { errorCodeFromName, errorCodeName } from './errors.js';
import {
  type FieldType,
  type Fields,
  bool,
  bytes,
  enumField,
  id,
  invalidValue,
  list,
  optId,
  seqOpt,
  struct,
  text,
  u16,
  u32,
  u64,
  u8,
} from './wire.js';

/** A room sequence number: 1, 2, 3, ... per room; 0 means "none". */
export type Seq = bigint;

const roomId = id(128);
const userId = id(128);
const deviceId = id(64);
const optRoomId = optId(128);
const optUserId = optId(128);
/** An error code: a u16 kept as its number, known or not; named in JSON when known. */
const errorCode: FieldType<number> = {
  ...u16,
  toJson: (v) => {
    const name = errorCodeName(v);
    return name.startsWith('Unknown(') ? v : name;
  },
  fromJson: (j, f) => {
    if (typeof j === 'number') return u16.fromJson(j, f);
    const v = typeof j === 'string' ? errorCodeFromName(j) : undefined;
    if (v === undefined) throw invalidValue(f, 0, JSON.stringify(j));
    return v;
  },
};

// ----- enumerations (section 9) --------------------------------------------

/** 9.1 */
export type RoomKind = 'Direct' | 'Group';
/** 9.2 */
export type JoinPolicy = 'Open' | 'InviteOnly';
/** 9.3 */
export type Role = 'Owner' | 'Admin' | 'Member' | 'Invited';
/** 9.4 */
export type PresenceStatus = 'Online' | 'Away' | 'Offline';
/** 9.5 */
export type ReceiptKind = 'Delivered' | 'Read';
/** 9.6 */
export type Direction = 'Before' | 'After';
/** 9.7 */
export type NoticeLevel = 'Info' | 'Warning';
/** 9.8 */
export type DeliveryState = 'Sent' | 'Delivered' | 'Read';

const roomKind = enumField<RoomKind>({ Direct: 1, Group: 2 });
const joinPolicy = enumField<JoinPolicy>({ Open: 1, InviteOnly: 2 });
const role = enumField<Role>({ Owner: 1, Admin: 2, Member: 3, Invited: 4 });
const presenceStatus = enumField<PresenceStatus>({ Online: 1, Away: 2, Offline: 3 });
const receiptKind = enumField<ReceiptKind>({ Delivered: 1, Read: 2 });
const direction = enumField<Direction>({ Before: 1, After: 2 });
const noticeLevel = enumField<NoticeLevel>({ Info: 1, Warning: 2 });
const deliveryState = enumField<DeliveryState>({ Sent: 1, Delivered: 2, Read: 3 });
/** Why entries of a room will not be delivered (protocol version 2, 7.8.3). */
export type GapReason = 'Trimmed' | 'Deleted' | 'AccessLost';
const gapReason = enumField<GapReason>({ Trimmed: 1, Deleted: 2, AccessLost: 3 });

/**
 * Message kinds (9.9): an open `u8` set. 1-127 are the protocol's, 128-255
 * the application's. Unknown kinds are passed through.
 */
export const MessageKind = {
  MESSAGE: 1,
  EDIT: 2,
  DELETE: 3,
  REACTION: 4,
  SYSTEM: 5,
  MEMBER_JOINED: 6,
  MEMBER_LEFT: 7,
  MEMBER_INVITED: 8,
  MEMBER_REMOVED: 9,
  ROOM_UPDATED: 10,
  FIRST_CUSTOM: 128,
} as const;

// ----- StartAt (4.4) --------------------------------------------------------

/** Where a subscription starts: only new entries, or from a sequence (inclusive). */
export type StartAt = 'live' | { from: Seq };

const startAt: FieldType<StartAt> = {
  minLen: 9,
  get: (r, f) => {
    const offset = r.offset();
    const mode = r.u8(f);
    const seq = r.u64(f);
    if (mode === 0) return 'live';
    if (mode === 1) return { from: seq };
    throw invalidValue(f, offset, mode);
  },
  put: (w, v, f) => {
    if (v === 'live') {
      w.u8(0);
      w.u64(0n);
    } else if (typeof v === 'object' && v !== null) {
      w.u8(1);
      u64.put(w, v.from, f);
    } else {
      throw invalidValue(f, w.length(), String(v));
    }
  },
  toJson: (v) => (v === 'live' ? 'live' : { from: v.from.toString() }),
  fromJson: (j, f) => {
    if (j === 'live') return 'live';
    if (typeof j === 'object' && j !== null && !Array.isArray(j) && typeof j['from'] === 'string') {
      return { from: u64.fromJson(j['from'], f) };
    }
    throw invalidValue(f, 0, JSON.stringify(j));
  },
};

// ----- sub-structures (section 8) -------------------------------------------

/** 8.1 One room of a `Subscribe` or of `Hello.resume`. */
export interface SubscribeItem {
  room: string;
  start: StartAt;
}
const subscribeItem = struct<SubscribeItem>({ room: roomId, start: startAt });

/** 8.2 The outcome for one room of a `Subscribe`. */
export interface SubscribeResult {
  room: string;
  /** `Normal` or `HistoryTruncated`: subscribed. Anything else: refused. */
  code: number;
  head: Seq;
  first: Seq;
}
const subscribeResult = struct<SubscribeResult>({ room: roomId, code: errorCode, head: u64, first: u64 });

/** 8.3 One entry of a room's log. */
export interface EventRecord {
  seq: Seq;
  /** Commit time, microseconds since the Unix epoch. */
  timestampUs: bigint;
  sender: string;
  device: string;
  /** The sender's client message id (0 if none). */
  clientMsgId: bigint;
  /** See {@link MessageKind}. */
  kind: number;
  refersTo: Seq | null;
  thread: Seq | null;
  payload: Uint8Array;
}
const eventRecord = struct<EventRecord>({
  seq: u64,
  timestampUs: u64,
  sender: userId,
  device: deviceId,
  clientMsgId: u64,
  kind: u8,
  refersTo: seqOpt,
  thread: seqOpt,
  payload: bytes,
});

/** 8.4 */
export interface Member {
  user: string;
  role: Role;
}
const member = struct<Member>({ user: userId, role });

/** 8.5 Empty strings mean "not set". */
export interface RoomMeta {
  name: string;
  topic: string;
  avatarUrl: string;
}
const roomMeta = struct<RoomMeta>({ name: text, topic: text, avatarUrl: text });

/** 8.6 */
export interface RoomSummary {
  room: string;
  kind: RoomKind;
  name: string;
  head: Seq;
  read: Seq;
  unread: bigint;
  lastActivityUs: bigint;
}
const roomSummary = struct<RoomSummary>({
  room: roomId,
  kind: roomKind,
  name: text,
  head: u64,
  read: u64,
  unread: u64,
  lastActivityUs: u64,
});

/** 8.9 One changed room of an `InboxPage` (protocol version 2). */
export interface InboxRoom {
  room: string;
  /** `Normal`, or `NotMember` for a room the user left. */
  code: number;
  role: Role;
  stamp: bigint;
  head: Seq;
  first: Seq;
  read: Seq;
  unread: bigint;
  firstUnread: Seq;
  last: EventRecord[];
}

/** 8.7 */
export interface PresenceEntry {
  user: string;
  status: PresenceStatus;
  lastSeenUs: bigint;
}
const inboxRoom =
  struct<InboxRoom>({
    room: roomId,
    code: errorCode,
    role,
    stamp: u64,
    head: u64,
    first: u64,
    read: u64,
    unread: u64,
    firstUnread: u64,
    last: list(eventRecord),
  });
const presenceEntry = struct<PresenceEntry>({ user: userId, status: presenceStatus, lastSeenUs: u64 });

/** 8.8 */
export interface ReceiptEntry {
  user: string;
  device: string;
  kind: ReceiptKind;
  seq: Seq;
}
const receiptEntry = struct<ReceiptEntry>({ user: userId, device: deviceId, kind: receiptKind, seq: u64 });

// ----- frame bodies (section 7) ---------------------------------------------

/** The fields of every frame body, by frame name. */
export interface BodyFields {
  Hello: { minVersion: number; maxVersion: number; token: string; device: string; clientName: string; resume: SubscribeItem[] };
  Welcome: {
    version: number;
    sessionId: bigint;
    user: string;
    serverTimeUs: bigint;
    maxFrameLen: number;
    maxPayloadLen: number;
    maxRooms: number;
    heartbeatMs: number;
    idleTimeoutMs: number;
  };
  Goodbye: { code: number; message: string };
  Ping: { nonce: bigint };
  Pong: { nonce: bigint };
  Error: { code: number; retryAfterMs: number; message: string };
  Notice: { level: NoticeLevel; code: number; text: string };
  Ack: Record<never, never>;
  RefreshToken: { token: string };
  RegisterPush: { provider: string; token: string };
  Subscribe: { items: SubscribeItem[] };
  SubscribeAck: { results: SubscribeResult[] };
  Unsubscribe: { rooms: string[] };
  Lagging: { room: string; resumeFrom: Seq; head: Seq };
  SyncInbox: { since: bigint; after: string | null; limit: number };
  InboxPage: { rooms: InboxRoom[]; hasMore: boolean; cursor: bigint };
  Gap: { room: string; from: Seq; to: Seq; reason: GapReason };
  CaughtUp: { room: string; seq: Seq };
  Publish: { room: string; clientMsgId: bigint; kind: number; refersTo: Seq | null; thread: Seq | null; payload: Uint8Array };
  PublishAck: { room: string; clientMsgId: bigint; seq: Seq; timestampUs: bigint; duplicate: boolean };
  Event: { room: string; event: EventRecord };
  EventBatch: { room: string; events: EventRecord[] };
  HistoryRequest: { room: string; direction: Direction; anchor: Seq; limit: number };
  HistoryPage: { room: string; hasMore: boolean; first: Seq; events: EventRecord[] };
  CreateRoom: { kind: RoomKind; room: string | null; peer: string | null; policy: JoinPolicy; meta: RoomMeta; invite: string[] };
  RoomInfo: {
    room: string;
    kind: RoomKind;
    policy: JoinPolicy;
    meta: RoomMeta;
    createdAtUs: bigint;
    head: Seq;
    first: Seq;
    memberCount: number;
    members: Member[];
  };
  JoinRoom: { room: string };
  LeaveRoom: { room: string };
  InviteMember: { room: string; user: string };
  RemoveMember: { room: string; user: string };
  GetRoomInfo: { room: string };
  UpdateRoom: { room: string; meta: RoomMeta };
  SetRole: { room: string; user: string; role: Role };
  ListRooms: { after: string | null; limit: number };
  RoomList: { rooms: RoomSummary[]; hasMore: boolean };
  Typing: { room: string; active: boolean };
  TypingEvent: { room: string; users: string[] };
  SetPresence: { status: PresenceStatus };
  WatchPresence: { enabled: boolean };
  GetPresence: { users: string[] };
  PresenceEvent: { entries: PresenceEntry[] };
  Receipt: { room: string; kind: ReceiptKind; seq: Seq };
  ReceiptEvent: { room: string; entries: ReceiptEntry[] };
  GetMessageStatus: { room: string; seq: Seq };
  MessageStatus: { room: string; seq: Seq; state: DeliveryState; recipients: number; delivered: number; read: number };
}

/** A frame name of protocol version 1. */
export type FrameName = keyof BodyFields;

/** An optional extension frame (type 0x80 or above) this version does not know. */
export interface ExtensionBody {
  type: 'Extension';
  frameType: number;
  body: Uint8Array;
}

/** A typed frame body, discriminated by `type`. */
export type Body = { [K in FrameName]: { type: K } & BodyFields[K] }[FrameName] | ExtensionBody;

/** The body of one frame type. */
export type BodyOf<K extends FrameName> = { type: K } & BodyFields[K];

/** A whole frame: header fields plus a typed body. */
export interface Frame {
  /** Correlates replies with requests; 0 for frames that are neither. */
  requestId: number;
  /** Flag bits, see {@link Flags}. */
  flags: number;
  body: Body;
}

/** Header flag bits (3.2). */
export const Flags = {
  /** On `Publish`: no `PublishAck` (errors are still sent). */
  NO_REPLY: 0x01,
  /** On `Event` and `EventBatch`: the entries come from the log. */
  REPLAY: 0x02,
} as const;

type Schemas = { [K in FrameName]: { code: number; schema: FieldType<BodyFields[K]> } };

function s<T>(code: number, fields: Fields<T>): { code: number; schema: FieldType<T> } {
  return { code, schema: struct<T>(fields) };
}

/** Every frame type: its code and its body layout, in the order of section 7.1. */
export const FRAMES: Schemas = {
  Hello: s(0x01, { minVersion: u16, maxVersion: u16, token: text, device: deviceId, clientName: text, resume: list(subscribeItem) }),
  Welcome: s(0x02, {
    version: u16,
    sessionId: u64,
    user: userId,
    serverTimeUs: u64,
    maxFrameLen: u32,
    maxPayloadLen: u32,
    maxRooms: u32,
    heartbeatMs: u32,
    idleTimeoutMs: u32,
  }),
  Goodbye: s(0x03, { code: errorCode, message: text }),
  Ping: s(0x04, { nonce: u64 }),
  Pong: s(0x05, { nonce: u64 }),
  Error: s(0x06, { code: errorCode, retryAfterMs: u32, message: text }),
  Notice: s(0x07, { level: noticeLevel, code: errorCode, text }),
  Ack: s(0x08, {}),
  RefreshToken: s(0x09, { token: text }),
  RegisterPush: s(0x0a, { provider: text, token: text }),
  Subscribe: s(0x10, { items: list(subscribeItem) }),
  SubscribeAck: s(0x11, { results: list(subscribeResult) }),
  Unsubscribe: s(0x12, { rooms: list(roomId) }),
  Lagging: s(0x13, { room: roomId, resumeFrom: u64, head: u64 }),
  CaughtUp: s(0x14, { room: roomId, seq: u64 }),
  SyncInbox: s(0x15, { since: u64, after: optRoomId, limit: u16 }),
  InboxPage: s(0x16, { rooms: list(inboxRoom), hasMore: bool, cursor: u64 }),
  Gap: s(0x17, { room: roomId, from: u64, to: u64, reason: gapReason }),
  Publish: s(0x20, { room: roomId, clientMsgId: u64, kind: u8, refersTo: seqOpt, thread: seqOpt, payload: bytes }),
  PublishAck: s(0x21, { room: roomId, clientMsgId: u64, seq: u64, timestampUs: u64, duplicate: bool }),
  Event: s(0x22, { room: roomId, event: eventRecord }),
  EventBatch: s(0x23, { room: roomId, events: list(eventRecord) }),
  HistoryRequest: s(0x24, { room: roomId, direction, anchor: u64, limit: u16 }),
  HistoryPage: s(0x25, { room: roomId, hasMore: bool, first: u64, events: list(eventRecord) }),
  CreateRoom: s(0x30, { kind: roomKind, room: optRoomId, peer: optUserId, policy: joinPolicy, meta: roomMeta, invite: list(userId) }),
  RoomInfo: s(0x31, {
    room: roomId,
    kind: roomKind,
    policy: joinPolicy,
    meta: roomMeta,
    createdAtUs: u64,
    head: u64,
    first: u64,
    memberCount: u32,
    members: list(member),
  }),
  JoinRoom: s(0x32, { room: roomId }),
  LeaveRoom: s(0x33, { room: roomId }),
  InviteMember: s(0x34, { room: roomId, user: userId }),
  RemoveMember: s(0x35, { room: roomId, user: userId }),
  GetRoomInfo: s(0x36, { room: roomId }),
  UpdateRoom: s(0x37, { room: roomId, meta: roomMeta }),
  SetRole: s(0x38, { room: roomId, user: userId, role }),
  ListRooms: s(0x39, { after: optRoomId, limit: u16 }),
  RoomList: s(0x3a, { rooms: list(roomSummary), hasMore: bool }),
  Typing: s(0x40, { room: roomId, active: bool }),
  TypingEvent: s(0x41, { room: roomId, users: list(userId) }),
  SetPresence: s(0x42, { status: presenceStatus }),
  WatchPresence: s(0x43, { enabled: bool }),
  GetPresence: s(0x44, { users: list(userId) }),
  PresenceEvent: s(0x45, { entries: list(presenceEntry) }),
  Receipt: s(0x50, { room: roomId, kind: receiptKind, seq: u64 }),
  ReceiptEvent: s(0x51, { room: roomId, entries: list(receiptEntry) }),
  GetMessageStatus: s(0x52, { room: roomId, seq: u64 }),
  MessageStatus: s(0x53, { room: roomId, seq: u64, state: deliveryState, recipients: u32, delivered: u32, read: u32 }),
};

/** Frame names by type code. */
export const FRAME_NAMES: ReadonlyMap<number, FrameName> = new Map(
  (Object.entries(FRAMES) as [FrameName, { code: number }][]).map(([name, f]) => [f.code, name]),
);

/** Internal: the record layout, for tests that encode records alone. */
export const EVENT_RECORD: FieldType<EventRecord> = eventRecord;
