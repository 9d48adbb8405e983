/**
 * Codec errors (local, never sent as they are) and the protocol's error
 * codes (sent in `Error`, `Goodbye`, `Notice` and `SubscribeResult`).
 *
 * @module
 */

/**
 * The protocol's error codes (docs/protocol.md section 10). An open set:
 * a decoded frame keeps the number it carried, also one this version does
 * not know (name it with {@link errorCodeName}).
 */
export const ErrorCode = {
  Normal: 0,
  MalformedFrame: 1,
  FrameTooLarge: 2,
  UnsupportedVersion: 3,
  UnknownFrameType: 4,
  ProtocolViolation: 5,
  InvalidRequest: 6,
  Unsupported: 7,
  Unauthenticated: 10,
  TokenExpired: 11,
  Forbidden: 12,
  NoSuchRoom: 20,
  RoomExists: 21,
  NotMember: 22,
  TooManyRooms: 23,
  RoomFull: 24,
  HistoryTruncated: 25,
  NoSuchMessage: 26,
  RateLimited: 30,
  PayloadTooLarge: 31,
  SlowConsumer: 40,
  Timeout: 41,
  ShuttingDown: 42,
  ServerBusy: 43,
  SessionReplaced: 44,
  Internal: 50,
  StorageFull: 51,
} as const;

/** The name of a known error code. */
export type ErrorCodeName = keyof typeof ErrorCode;

const NAMES = new Map<number, ErrorCodeName>(
  (Object.entries(ErrorCode) as [ErrorCodeName, number][]).map(([n, v]) => [v, n]),
);

/** The name of an error code, or `Unknown(<n>)` for a code this version does not know. */
export function errorCodeName(code: number): string {
  return NAMES.get(code) ?? `Unknown(${code})`;
}

/** The number of a known error code name, or `undefined`. */
export function errorCodeFromName(name: string): number | undefined {
  return Object.prototype.hasOwnProperty.call(ErrorCode, name)
    ? ErrorCode[name as ErrorCodeName]
    : undefined;
}

/** Why bytes could not be decoded, or a value could not be encoded. */
export type CodecErrorKind =
  /** The header declares a body longer than the receive limit. */
  | 'FrameTooLarge'
  /** A mandatory frame type (below 0x80) this version does not know. */
  | 'UnknownFrameType'
  /** A field runs past the end of the body (or a message is shorter than a header). */
  | 'Truncated'
  /** A string field is not well-formed UTF-8. */
  | 'InvalidUtf8'
  /** A field holds a value outside its allowed set (enum, bool, StartAt mode, integer range). */
  | 'InvalidValue'
  /** An identifier is empty, too long or contains a control character. */
  | 'InvalidId'
  /** A value is too long for its length prefix (encoding). */
  | 'FieldTooLong'
  /** A WebSocket message that is not exactly one whole frame. */
  | 'NotOneFrame';

/**
 * A decoding or encoding failure. Offsets count from the first byte of the
 * frame body (just after the 10-byte header).
 */
export class CodecError extends Error {
  /** What went wrong. */
  readonly kind: CodecErrorKind;
  /** The field being read or written, if any. */
  readonly field: string | undefined;
  /** Body offset where the field starts, if known. */
  readonly offset: number | undefined;

  constructor(kind: CodecErrorKind, message: string, field?: string, offset?: number) {
    super(message);
    this.name = 'CodecError';
    this.kind = kind;
    this.field = field;
    this.offset = offset;
  }

  /** The protocol error code a receiver reports for this failure (6.5). */
  code(): number {
    switch (this.kind) {
      case 'FrameTooLarge':
        return ErrorCode.FrameTooLarge;
      case 'UnknownFrameType':
        return ErrorCode.UnknownFrameType;
      default:
        return ErrorCode.MalformedFrame;
    }
  }
}
