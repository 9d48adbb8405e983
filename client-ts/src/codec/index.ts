/**
 * The Confab wire protocol, version 1, as a sans-IO codec: bytes in,
 * typed frames out, and back. No sockets, no timers.
 *
 * @module
 */

export { CodecError, type CodecErrorKind, ErrorCode, type ErrorCodeName, errorCodeFromName, errorCodeName } from './errors.js';
export {
  DEFAULT_MAX_FRAME_LEN,
  EXTENSION_TYPE_BASE,
  HEADER_LEN,
  HELLO_LEN_FLOOR,
  type Header,
  PROTOCOL_VERSION,
  decodeBody,
  decodeFrom,
  decodeMessage,
  encodeFrame,
  frame,
  frameName,
  frameType,
  peekHeader,
  request,
} from './frame.js';
export {
  type Body,
  type BodyFields,
  type BodyOf,
  type DeliveryState,
  type Direction,
  type EventRecord,
  type ExtensionBody,

  FRAME_NAMES,
  Flags,
  type Frame,
  type FrameName,
  type JoinPolicy,
  type Member,
  MessageKind,
  type NoticeLevel,
  type PresenceEntry,
  type PresenceStatus,
  type ReceiptEntry,
  type ReceiptKind,
  type Role,
  type RoomKind,
  type RoomMeta,
  type RoomSummary,
  type InboxRoom,
  type GapReason,
  type Seq,
  type StartAt,
  type SubscribeItem,
  type SubscribeResult,
} from './frames.js';
export { type FrameJson, type Json, frameFromJson, frameToJson } from './json.js';
export { U64_MAX, fromHex, isValidId, toHex } from './wire.js';
