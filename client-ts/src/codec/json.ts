/**
 * The JSON form of frames used by the golden vectors that this codec and
 * the Rust codec share (`codec/tests/vectors/frames.json` in the
 * repository). Also handy for logging frames, since `JSON.stringify`
 * cannot print a `bigint`.
 *
 * Field names are the protocol's (snake_case); `u64` values are decimal
 * strings; `bytes` are lower-case hex; absent `Seq?` and ids are `null`;
 * enumerations and known error codes are their names; `StartAt` is
 * `"live"` or `{"from": "<seq>"}`.
 *
 * @module
 */

import { CodecError } from './errors.js';
import { EXTENSION_TYPE_BASE } from './frame.js';
import { type Body, type Frame, type FrameName, FRAMES } from './frames.js';
import { type Json, fromHex, toHex } from './wire.js';

export type { Json } from './wire.js';

/** A frame in JSON form. */
export interface FrameJson {
  type: string;
  request_id: number;
  flags: number;
  body: Json;
}

/** The JSON form of a frame. */
export function frameToJson(frame: Frame): FrameJson {
  const { body } = frame;
  if (body.type === 'Extension') {
    return { type: 'Extension', request_id: frame.requestId, flags: frame.flags, body: { frame_type: body.frameType, body: toHex(body.body) } };
  }
  const schema = FRAMES[body.type].schema as { toJson(v: unknown): Json };
  return { type: body.type, request_id: frame.requestId, flags: frame.flags, body: schema.toJson(body) };
}

/**
 * A frame from its JSON form.
 *
 * @throws {CodecError} if the JSON does not describe a frame.
 */
export function frameFromJson(j: FrameJson): Frame {
  const { type, request_id: requestId, flags, body } = j;
  if (type === 'Extension') {
    if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new CodecError('InvalidValue', 'extension body');
    const frameType = body['frame_type'];
    const raw = body['body'];
    if (typeof frameType !== 'number' || frameType < EXTENSION_TYPE_BASE || typeof raw !== 'string') {
      throw new CodecError('InvalidValue', 'extension body');
    }
    return { requestId, flags, body: { type: 'Extension', frameType, body: fromHex(raw) } };
  }
  if (!Object.prototype.hasOwnProperty.call(FRAMES, type)) {
    throw new CodecError('InvalidValue', `unknown frame name ${type}`);
  }
  const name = type as FrameName;
  const fields = (FRAMES[name].schema as { fromJson(j: Json, f: string): object }).fromJson(body, name);
  return { requestId, flags, body: { type: name, ...fields } as Body };
}
