// The golden vectors shared with the Rust codec (codec/tests/vectors.rs):
// both codecs check the same file, so they cannot drift apart.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import {
  CodecError,
  DEFAULT_MAX_FRAME_LEN,
  FRAME_NAMES,
  type FrameJson,
  decodeFrom,
  decodeMessage,
  encodeFrame,
  frameFromJson,
  frameToJson,
  fromHex,
  toHex,
} from '../../src/index.js';

interface Vectors {
  frames: { name: string; frame: FrameJson; hex: string }[];
  lenient: { name: string; frame: FrameJson; hex: string; canonical_hex: string }[];
  malformed: { name: string; error: string; hex: string; max_frame_len: number }[];
}

const path = new URL('../../../../codec/tests/vectors/frames.json', import.meta.url);
const vectors = JSON.parse(readFileSync(path, 'utf8')) as Vectors;

test('every frame vector decodes to its frame and encodes to its bytes', () => {
  assert.ok(vectors.frames.length >= FRAME_NAMES.size);
  for (const v of vectors.frames) {
    const bytes = fromHex(v.hex);
    const want = frameFromJson(v.frame);
    const got = decodeMessage(bytes, DEFAULT_MAX_FRAME_LEN);
    assert.deepStrictEqual(got, want, `${v.name}: decode(hex) != frame`);
    assert.equal(toHex(encodeFrame(want)), v.hex, `${v.name}: encode(frame) != hex`);
    assert.deepStrictEqual(frameToJson(got), v.frame, `${v.name}: JSON form`);
    // The same bytes through the stream deframer, with a trailing frame.
    const two = new Uint8Array([...bytes, ...bytes]);
    const first = decodeFrom(two, DEFAULT_MAX_FRAME_LEN);
    assert.ok(first);
    assert.equal(first.consumed, bytes.length);
    assert.deepStrictEqual(first.frame, want);
  }
});

test('the vectors cover every frame type and an extension', () => {
  const covered = new Set(vectors.frames.map((v) => fromHex(v.hex)[4]));
  for (const [code, name] of FRAME_NAMES) assert.ok(covered.has(code), `no vector for ${name}`);
  assert.ok([...covered].some((t) => t !== undefined && t >= 0x80));
});

test('lenient vectors decode, then encode canonically', () => {
  for (const v of vectors.lenient) {
    const got = decodeMessage(fromHex(v.hex), DEFAULT_MAX_FRAME_LEN);
    assert.deepStrictEqual(got, frameFromJson(v.frame), v.name);
    assert.equal(toHex(encodeFrame(got)), v.canonical_hex, v.name);
  }
});

test('malformed vectors are refused with the same error as the Rust codec', () => {
  assert.ok(vectors.malformed.length > 0);
  for (const v of vectors.malformed) {
    assert.throws(
      () => decodeMessage(fromHex(v.hex), v.max_frame_len),
      (e: unknown) => e instanceof CodecError && e.kind === v.error,
      `${v.name}: expected ${v.error}`,
    );
  }
});
