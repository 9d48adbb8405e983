/**
 * Framing (section 3): the 10-byte header and the encode and decode entry
 * points. Sans-IO: bytes in, frames out, and back.
 *
 * @module
 */

import { CodecError } from './errors.js';
import { type Body, type Frame, type FrameName, FRAME_NAMES, FRAMES } from './frames.js';
import { Reader, Writer } from './wire.js';

/** Bytes in the fixed frame header. */
export const HEADER_LEN = 10;
/** The protocol version this codec implements. */
export const PROTOCOL_VERSION = 1;
/** The receive limit until `Welcome` (1 MiB), and the default `max_frame_len`. */
export const DEFAULT_MAX_FRAME_LEN = 1 << 20;
/** The largest `Hello` body a client sends (3.4). */
export const HELLO_LEN_FLOOR = 64 << 10;
/** Frame types at or above this are optional extensions, skipped when unknown. */
export const EXTENSION_TYPE_BASE = 0x80;

/** The fixed header that starts every frame. */
export interface Header {
  /** Body length in bytes (header excluded). */
  len: number;
  frameType: number;
  flags: number;
  requestId: number;
}

/** Reads a header from the first 10 bytes, or `undefined` if fewer are there. */
export function peekHeader(src: Uint8Array): Header | undefined {
  if (src.length < HEADER_LEN) return undefined;
  const v = new DataView(src.buffer, src.byteOffset, HEADER_LEN);
  return { len: v.getUint32(0), frameType: v.getUint8(4), flags: v.getUint8(5), requestId: v.getUint32(6) };
}

/** The type code of a body. */
export function frameType(body: Body): number {
  return body.type === 'Extension' ? body.frameType : FRAMES[body.type].code;
}

/**
 * Encodes a frame (header and body).
 *
 * @throws {CodecError} if a field cannot be encoded (an invalid id, a
 * value out of range, a string or list too long for its prefix).
 */
export function encodeFrame(frame: Frame): Uint8Array {
  const { requestId, flags, body } = frame;
  if (!Number.isInteger(requestId) || requestId < 0 || requestId > 0xffffffff) {
    throw new CodecError('InvalidValue', `request id ${requestId} is not a u32`, 'request_id');
  }
  if (!Number.isInteger(flags) || flags < 0 || flags > 0xff) {
    throw new CodecError('InvalidValue', `flags ${flags} is not a u8`, 'flags');
  }
  const w = new Writer();
  w.u32(0);
  w.u8(frameType(body));
  w.u8(flags);
  w.u32(requestId);
  if (body.type === 'Extension') {
    if (body.frameType < EXTENSION_TYPE_BASE || body.frameType > 0xff) {
      throw new CodecError('InvalidValue', `extension type ${body.frameType} is not in 0x80..=0xff`, 'type');
    }
    w.bytes(body.body);
  } else {
    // The schema of `body.type` takes exactly that body; `type` itself is
    // not one of its fields.
    (FRAMES[body.type].schema as { put(w: Writer, v: unknown, f: string): void }).put(w, body, body.type);
  }
  const bodyLen = w.length() - HEADER_LEN;
  w.patchU32(0, bodyLen);
  return w.finish().slice();
}

/**
 * Decodes a body whose header was already read. Bytes after the last field
 * this version knows are ignored (section 5).
 *
 * @throws {CodecError} for a malformed body or an unknown mandatory type.
 */
export function decodeBody(header: Header, body: Uint8Array): Frame {
  const name = FRAME_NAMES.get(header.frameType);
  let decoded: Body;
  if (name === undefined) {
    if (header.frameType < EXTENSION_TYPE_BASE) {
      throw new CodecError('UnknownFrameType', `unknown frame type 0x${header.frameType.toString(16).padStart(2, '0')}`);
    }
    decoded = { type: 'Extension', frameType: header.frameType, body: body.slice() };
  } else {
    const fields = (FRAMES[name].schema as { get(r: Reader, f: string): object }).get(new Reader(body), name);
    decoded = { type: name, ...fields } as Body;
  }
  return { requestId: header.requestId, flags: header.flags, body: decoded };
}

/**
 * Decodes one frame from the front of `src` (a byte stream, as on TCP).
 * Returns `undefined` when `src` does not hold a whole frame yet. The
 * declared length is checked against `maxFrameLen` as soon as the header
 * is there, before anything else.
 *
 * @throws {CodecError} `FrameTooLarge`, or a malformed body.
 */
export function decodeFrom(src: Uint8Array, maxFrameLen: number): { frame: Frame; consumed: number } | undefined {
  const header = peekHeader(src);
  if (header === undefined) return undefined;
  checkLen(header, maxFrameLen);
  const total = HEADER_LEN + header.len;
  if (src.length < total) return undefined;
  return { frame: decodeBody(header, src.subarray(HEADER_LEN, total)), consumed: total };
}

/**
 * Decodes a WebSocket message, which must hold exactly one whole frame.
 *
 * @throws {CodecError} `FrameTooLarge` (checked first, from the header),
 * `NotOneFrame` (shorter than a header, or a length that does not match
 * the message), or a malformed body.
 */
export function decodeMessage(message: Uint8Array, maxFrameLen: number): Frame {
  const header = peekHeader(message);
  if (header === undefined) {
    throw new CodecError('NotOneFrame', `a message of ${message.length} bytes is shorter than a frame header`);
  }
  checkLen(header, maxFrameLen);
  if (message.length !== HEADER_LEN + header.len) {
    throw new CodecError(
      'NotOneFrame',
      `a message of ${message.length} bytes holds a frame of ${HEADER_LEN + header.len} bytes`,
    );
  }
  return decodeBody(header, message.subarray(HEADER_LEN));
}

function checkLen(header: Header, max: number): void {
  if (header.len > max) {
    throw new CodecError('FrameTooLarge', `frame body of ${header.len} bytes exceeds the limit of ${max} bytes`);
  }
}

/** A frame with request id 0 and no flags. */
export function frame(body: Body): Frame {
  return { requestId: 0, flags: 0, body };
}

/** A request (or reply) with a request id. */
export function request(requestId: number, body: Body): Frame {
  return { requestId, flags: 0, body };
}

/** The name of a frame's type, for logs. */
export function frameName(body: Body): FrameName | 'Extension' {
  return body.type;
}
