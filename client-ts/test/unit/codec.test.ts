// Codec properties beyond the shared vectors: hostile bytes never crash it,
// every strict prefix is incomplete, limits are checked from the header,
// and values that cannot be sent are refused when encoding.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

import {
  CodecError,
  DEFAULT_MAX_FRAME_LEN,
  ErrorCode,
  type Frame,
  type FrameJson,
  U64_MAX,
  decodeFrom,
  decodeMessage,
  encodeFrame,
  errorCodeName,
  frameFromJson,
  fromHex,
  isValidId,
  request,
} from '../../src/index.js';

const path = new URL('../../../../codec/tests/vectors/frames.json', import.meta.url);
const samples = (JSON.parse(readFileSync(path, 'utf8')) as { frames: { frame: FrameJson; hex: string }[] }).frames.map((v) =>
  fromHex(v.hex),
);

/** A small deterministic generator (xorshift32), so failures replay. */
function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

function decodeOrCodecError(bytes: Uint8Array, max = DEFAULT_MAX_FRAME_LEN): Frame | CodecError {
  try {
    return decodeMessage(bytes, max);
  } catch (e) {
    if (e instanceof CodecError) return e;
    throw e; // anything else is a bug: the test fails with it
  }
}

test('every strict prefix of a frame is incomplete on a stream and refused as a message', () => {
  for (const bytes of samples) {
    for (let n = 0; n < bytes.length; n++) {
      const prefix = bytes.subarray(0, n);
      assert.equal(decodeFrom(prefix, DEFAULT_MAX_FRAME_LEN), undefined);
      const r = decodeOrCodecError(prefix);
      assert.ok(r instanceof CodecError && r.kind === 'NotOneFrame', `prefix ${n}`);
    }
  }
});

test('random mutations of valid frames decode or fail with a CodecError, never anything else', () => {
  const next = rng(0xc0f4b);
  let decoded = 0;
  let refused = 0;
  for (let round = 0; round < 20_000; round++) {
    const base = samples[next() % samples.length];
    assert.ok(base);
    const bytes = base.slice();
    const flips = 1 + (next() % 4);
    for (let i = 0; i < flips; i++) {
      // Mostly the body; the length field too, now and then.
      const at = next() % 8 === 0 ? next() % 4 : 10 + (next() % Math.max(1, bytes.length - 10));
      if (at < bytes.length) bytes[at] = next() & 0xff;
    }
    const r = decodeOrCodecError(bytes);
    if (r instanceof CodecError) refused++;
    else {
      decoded++;
      // What decodes re-encodes (extra bytes aside) and decodes the same.
      const again = decodeMessage(encodeFrame(r), DEFAULT_MAX_FRAME_LEN);
      assert.deepStrictEqual(again, r);
    }
  }
  assert.ok(decoded > 1000 && refused > 1000, `decoded ${decoded}, refused ${refused}`);
});

test('random garbage never crashes the decoder', () => {
  const next = rng(42);
  for (let round = 0; round < 20_000; round++) {
    const len = next() % 64;
    const bytes = Uint8Array.from({ length: len }, () => next() & 0xff);
    if (len >= 10 && next() % 2 === 0) {
      // A consistent length, so the body decoder runs on garbage.
      new DataView(bytes.buffer).setUint32(0, len - 10);
      bytes[4] = [0x01, 0x11, 0x22, 0x23, 0x25, 0x31, 0x3a, 0x45, 0x51][next() % 9] ?? 0x22;
    }
    decodeOrCodecError(bytes);
  }
});

test('a length above the limit is refused from the header, before the body arrives', () => {
  const header = new Uint8Array(10);
  new DataView(header.buffer).setUint32(0, 0xffffffff);
  header[4] = 0x22;
  assert.throws(() => decodeFrom(header, DEFAULT_MAX_FRAME_LEN), (e: unknown) => e instanceof CodecError && e.kind === 'FrameTooLarge');
  const r = decodeOrCodecError(header);
  assert.ok(r instanceof CodecError && r.kind === 'FrameTooLarge');
  assert.equal(r.code(), ErrorCode.FrameTooLarge);
  // Equal to the limit is fine.
  const ok = new Uint8Array(10 + 8);
  new DataView(ok.buffer).setUint32(0, 8);
  ok[4] = 0x04;
  assert.equal(decodeMessage(ok, 8).body.type, 'Ping');
});

test('a huge list count is refused without allocating for it', () => {
  const r = decodeOrCodecError(fromHex('00000004 12 00 00000001 ffff 0161'));
  assert.ok(r instanceof CodecError && r.kind === 'Truncated' && r.code() === ErrorCode.MalformedFrame);
});

test('unknown error codes and message kinds are kept, not refused', () => {
  const f = decodeMessage(fromHex('00000008 06 00 00000003 03e7 00000000 0000'), DEFAULT_MAX_FRAME_LEN);
  assert.equal(f.body.type, 'Error');
  assert.equal(f.body.type === 'Error' ? f.body.code : -1, 999);
  assert.equal(errorCodeName(999), 'Unknown(999)');
  assert.equal(errorCodeName(51), 'StorageFull');
});

test('u64 values keep every bit: sequences above 2^53 are exact', () => {
  const seq = (1n << 53n) + 1n;
  const f = request(1, { type: 'Receipt', room: 'r', kind: 'Read', seq });
  const back = decodeMessage(encodeFrame(f), DEFAULT_MAX_FRAME_LEN);
  assert.equal(back.body.type === 'Receipt' ? back.body.seq : 0n, seq);
  const max = request(1, { type: 'Ping', nonce: U64_MAX });
  assert.deepStrictEqual(decodeMessage(encodeFrame(max), DEFAULT_MAX_FRAME_LEN), max);
});

test('values that cannot be sent are refused when encoding', () => {
  const bad: [string, Frame][] = [
    ['empty room', request(1, { type: 'JoinRoom', room: '' })],
    ['control char', request(1, { type: 'JoinRoom', room: 'a\u0085b' })],
    ['129-byte room', request(1, { type: 'JoinRoom', room: 'é'.repeat(65) })],
    ['65-byte device', request(1, { type: 'Hello', minVersion: 1, maxVersion: 1, token: '', device: 'd'.repeat(65), clientName: '', resume: [] })],
    ['lone surrogate', request(1, { type: 'RefreshToken', token: '\ud800' })],
    ['text too long', request(1, { type: 'RefreshToken', token: 'x'.repeat(65_536) })],
    ['u64 too large', request(1, { type: 'Ping', nonce: U64_MAX + 1n })],
    ['negative u64', request(1, { type: 'Ping', nonce: -1n })],
    ['u16 out of range', request(1, { type: 'ListRooms', after: null, limit: 65_536 })],
    ['present Seq? of 0', request(1, { type: 'Publish', room: 'r', clientMsgId: 1n, kind: 1, refersTo: 0n, thread: null, payload: new Uint8Array() })],
    ['request id', { requestId: -1, flags: 0, body: { type: 'Ack' } }],
    ['bad enum', request(1, { type: 'SetPresence', status: 'Busy' as never })],
  ];
  for (const [name, f] of bad) {
    assert.throws(() => encodeFrame(f), (e: unknown) => e instanceof CodecError, name);
  }
  assert.ok(isValidId('é'.repeat(64), 128));
  assert.ok(!isValidId('é'.repeat(65), 128));
});

test('the JSON form refuses what it cannot map', () => {
  assert.throws(() => frameFromJson({ type: 'Nope', request_id: 0, flags: 0, body: {} }), CodecError);
  assert.throws(() => frameFromJson({ type: 'Ping', request_id: 0, flags: 0, body: { nonce: 1 } }), CodecError);
  assert.throws(() => frameFromJson({ type: 'Ping', request_id: 0, flags: 0, body: {} }), CodecError);
});
