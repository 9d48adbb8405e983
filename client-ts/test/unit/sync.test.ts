// The per-room ordering state machine (a port of the Rust SDK's
// sync_tests.rs cases), plus a randomized check: whatever order, repeats
// and gaps the entries come in, what is delivered is 1..=n exactly once.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { RoomSync, type SyncAction } from '../../src/index.js';

type E = { seq: bigint };
const e = (n: number): E => ({ seq: BigInt(n) });
const delivered = (out: SyncAction<E>[]): number[] => out.flatMap((a) => (a.kind === 'deliver' ? [Number(a.event.seq)] : []));

test('in-order entries are delivered, duplicates dropped', () => {
  const s = new RoomSync<E>(0n, 16, 100);
  const out: SyncAction<E>[] = [];
  for (const n of [1, 2, 2, 1, 3]) s.onEvent(e(n), out);
  assert.deepEqual(delivered(out), [1, 2, 3]);
  assert.equal(out.filter((a) => a.kind === 'duplicate').length, 2);
  assert.deepEqual(s.startAt(), { from: 4n });
});

test('a gap asks history for the missing range, then delivers in order', () => {
  const s = new RoomSync<E>(0n, 16, 100);
  const out: SyncAction<E>[] = [];
  s.onEvent(e(1), out);
  s.onEvent(e(4), out);
  s.onEvent(e(5), out);
  assert.deepEqual(delivered(out), [1]);
  const fills = out.filter((a) => a.kind === 'fetchHistory');
  assert.deepEqual(fills, [{ kind: 'fetchHistory', after: 1n, limit: 2 }]);
  const out2: SyncAction<E>[] = [];
  s.onHistory(1n, [e(2), e(3), e(4)], out2);
  assert.deepEqual(delivered(out2), [2, 3, 4, 5]);
  assert.equal(s.buffered(), 0);
});

test('a history page that does not help falls back to a resubscription', () => {
  const s = new RoomSync<E>(0n, 16, 100);
  const out: SyncAction<E>[] = [];
  s.onEvent(e(3), out);
  const out2: SyncAction<E>[] = [];
  s.onHistory(1n, [], out2);
  assert.deepEqual(out2, [{ kind: 'resubscribe', from: 1n }]);
  // While resyncing, later entries are left to the replay.
  const out3: SyncAction<E>[] = [];
  s.onEvent(e(5), out3);
  assert.deepEqual(out3, []);
  s.onSubscribed(5n, 1n, false, out3);
  s.onEvent(e(1), out3);
  assert.deepEqual(delivered(out3), [1]);
});

test('too many out-of-order entries resubscribe instead of growing', () => {
  const s = new RoomSync<E>(0n, 2, 100);
  const out: SyncAction<E>[] = [];
  for (const n of [3, 4, 5]) s.onEvent(e(n), out);
  assert.ok(out.some((a) => a.kind === 'resubscribe' && a.from === 1n));
  assert.equal(s.buffered(), 0);
});

test('a live subscription anchors at the head the broker reports', () => {
  const s = new RoomSync<E>(null, 16, 100);
  assert.equal(s.startAt(), 'live');
  const out: SyncAction<E>[] = [];
  s.onEvent(e(8), out); // before the ack: held
  s.onSubscribed(7n, 1n, false, out);
  assert.deepEqual(delivered(out), [8]);
});

test('truncated history is reported and skipped', () => {
  const s = new RoomSync<E>(3n, 16, 100);
  const out: SyncAction<E>[] = [];
  s.onSubscribed(20n, 10n, true, out);
  assert.deepEqual(out, [{ kind: 'truncated', from: 4n, to: 9n }]);
  s.onEvent(e(10), out);
  assert.deepEqual(delivered(out), [10]);
});

test('a lost connection forgets the buffer: the resumption replays it', () => {
  const s = new RoomSync<E>(0n, 16, 100);
  const out: SyncAction<E>[] = [];
  s.onEvent(e(1), out);
  s.onEvent(e(3), out);
  s.onDisconnected();
  assert.equal(s.buffered(), 0);
  assert.deepEqual(s.startAt(), { from: 2n });
  const out2: SyncAction<E>[] = [];
  s.onHistory(1n, [e(2)], out2); // a stale page is ignored
  assert.deepEqual(out2, []);
});

test('randomized: any mix of orders, repeats and gaps delivers 1..=n once each', () => {
  let x = 12345;
  const rnd = (n: number): number => {
    x = (x * 1103515245 + 12345) & 0x7fffffff;
    return x % n;
  };
  for (let round = 0; round < 300; round++) {
    const n = 1 + rnd(60);
    const s = new RoomSync<E>(0n, 1 + rnd(20), 1 + rnd(10));
    const got: number[] = [];
    let pending: SyncAction<E>[] = [];
    const run = (out: SyncAction<E>[]): void => {
      got.push(...delivered(out));
      pending.push(...out.filter((a) => a.kind === 'fetchHistory' || a.kind === 'resubscribe'));
    };
    // The broker: a stream with drops, repeats and reorders...
    const stream: number[] = [];
    for (let i = 1; i <= n; i++) {
      if (rnd(5) > 0) stream.push(i);
      if (rnd(6) === 0) stream.push(1 + rnd(i));
    }
    for (let i = 0; i < stream.length; i++) {
      const j = Math.min(stream.length - 1, i + rnd(3));
      [stream[i], stream[j]] = [stream[j] ?? 0, stream[i] ?? 0];
    }
    for (const k of stream) {
      const out: SyncAction<E>[] = [];
      s.onEvent(e(k), out);
      run(out);
    }
    // ...then it answers every history request and resubscription truthfully.
    for (let guard = 0; pending.length > 0 && guard < 1000; guard++) {
      const a = pending.shift();
      const out: SyncAction<E>[] = [];
      if (a?.kind === 'fetchHistory') {
        const page: E[] = [];
        for (let i = Number(a.after) + 1; i <= n && page.length < a.limit; i++) page.push(e(i));
        s.onHistory(1n, page, out);
      } else if (a?.kind === 'resubscribe') {
        pending = pending.filter((p) => p.kind !== 'fetchHistory');
        s.onSubscribed(BigInt(n), 1n, false, out);
        for (let i = Number(a.from); i <= n; i++) s.onEvent(e(i), out);
      }
      run(out);
    }
    // Whatever was not delivered yet comes live.
    const out: SyncAction<E>[] = [];
    const last = got.length;
    for (let i = last + 1; i <= n; i++) s.onEvent(e(i), out);
    run(out);
    assert.deepEqual(got, Array.from({ length: n }, (_, i) => i + 1), `round ${round}`);
  }
});
