// Backoff delays (full jitter) and the cursor stores that run in Node.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Backoff, LocalStorageCursorStore, MemoryCursorStore, type StorageLike, backoffConfig } from '../../src/index.js';

function config(initialMs: number, maxMs: number, multiplier: number, maxAttempts?: number) {
  const c = backoffConfig({ initialMs, maxMs, multiplier, ...(maxAttempts === undefined ? {} : { maxAttempts }) });
  assert.ok(typeof c !== 'string', String(c));
  return c;
}

test('the ceiling grows geometrically, then caps', () => {
  const b = new Backoff(config(100, 1000, 2));
  assert.deepEqual([0, 1, 2, 3, 4, 5].map((n) => b.ceiling(n)), [100, 200, 400, 800, 1000, 1000]);
  assert.equal(b.ceiling(1e9), 1000);
});

test('delays are spread over the whole range under the ceiling (full jitter)', () => {
  const b = new Backoff(config(1000, 1000, 1));
  const samples = Array.from({ length: 2000 }, () => b.nextDelay() ?? -1);
  assert.ok(samples.every((d) => d >= 0 && d <= 1000));
  const mean = samples.reduce((a, x) => a + x, 0) / samples.length;
  assert.ok(mean > 450 && mean < 550, `mean ${mean}`);
  assert.ok(samples.some((d) => d < 100) && samples.some((d) => d > 900));
});

test('reset starts over; maxAttempts gives up', () => {
  const b = new Backoff(config(10, 100_000, 10, 3), () => 0.999);
  assert.ok((b.nextDelay() ?? 0) <= 10);
  assert.ok((b.nextDelay() ?? 0) <= 100);
  assert.equal(b.nextDelay(), null);
  b.reset();
  assert.ok((b.nextDelay() ?? 1e9) <= 10);
});

test('bad backoff settings are refused with their name', () => {
  assert.equal(typeof backoffConfig({ initialMs: 0 }), 'string');
  assert.equal(typeof backoffConfig({ initialMs: 10, maxMs: 5 }), 'string');
  assert.equal(typeof backoffConfig({ multiplier: 0.5 }), 'string');
  assert.equal(typeof backoffConfig({ multiplier: Number.NaN }), 'string');
  assert.equal(typeof backoffConfig({ maxAttempts: 0 }), 'string');
});

test('cursors only move forward', () => {
  const m = new MemoryCursorStore();
  m.set('a', 5n);
  m.set('a', 3n);
  assert.equal(m.get('a'), 5n);
  m.remove('a');
  assert.equal(m.get('a'), undefined);
});

test('the localStorage store persists exact bigints and survives a corrupt entry', async () => {
  const data = new Map<string, string>();
  const storage: StorageLike = {
    getItem: (k) => data.get(k) ?? null,
    setItem: (k, v) => void data.set(k, v),
    removeItem: (k) => void data.delete(k),
  };
  const big = (1n << 60n) + 7n;
  const a = new LocalStorageCursorStore('k', storage, 10_000);
  a.set('general', big);
  a.set('ルーム', 2n);
  await a.flush();
  const b = new LocalStorageCursorStore('k', storage);
  assert.equal(b.get('general'), big);
  assert.equal(b.get('ルーム'), 2n);
  data.set('k', '{not json');
  const c = new LocalStorageCursorStore('k', storage);
  assert.equal(c.get('general'), undefined);
});
