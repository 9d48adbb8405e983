// The heartbeat clock of a connection, on a fake clock: a silent broker is
// left after the dead-link timeout, and a timer that fires late (a hidden
// browser tab runs timers as rarely as once a minute) pings first instead
// of declaring a live link dead.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { BodyOf, Frame } from '../../src/index.js';
import { Session } from '../../src/session.js';
import type { Link } from '../../src/transport.js';

const welcome = { type: 'Welcome', heartbeatMs: 100 } as BodyOf<'Welcome'>;

function session(clock: { t: number }): { s: Session; pings: () => number } {
  const sent: Frame[] = [];
  const link = { send: (f: Frame) => sent.push(f) } as unknown as Link;
  const s = new Session(link, welcome, 100, 350, () => clock.t, () => undefined);
  s.stop(); // the test drives the clock itself
  return { s, pings: () => sent.filter((f) => f.body.type === 'Ping').length };
}

test('a silent broker is pinged after the heartbeat and left after the dead-link timeout', () => {
  const clock = { t: 0 };
  const { s, pings } = session(clock);
  clock.t = 99;
  assert.equal(s.onTimer(), null);
  assert.equal(pings(), 0);
  clock.t = 100;
  assert.equal(s.onTimer(), null);
  assert.equal(pings(), 1);
  clock.t = 349;
  assert.equal(s.onTimer(), null);
  clock.t = 350;
  assert.deepEqual(s.onTimer(), { kind: 'heartbeatTimeout' });
  assert.equal(pings(), 1, 'one Ping outstanding at a time');
});

test('an answer keeps the link alive', () => {
  const clock = { t: 0 };
  const { s, pings } = session(clock);
  for (let t = 25; t <= 2000; t += 25) {
    clock.t = t;
    assert.equal(s.onTimer(), null, `t=${t}`);
    if (t % 100 === 10) s.received();
    if (t % 100 === 0) s.received(); // the Pong
  }
  assert.ok(pings() >= 15);
});

test('a late timer pings instead of declaring a live link dead', () => {
  const clock = { t: 0 };
  const { s, pings } = session(clock);
  clock.t = 60_000; // the first tick of a throttled tab
  assert.equal(s.onTimer(), null);
  assert.equal(pings(), 1);
  clock.t = 60_040;
  s.received(); // the Pong
  clock.t = 120_000;
  assert.equal(s.onTimer(), null);
  assert.equal(pings(), 2);
  clock.t = 180_000; // no answer for a whole minute: dead
  assert.deepEqual(s.onTimer(), { kind: 'heartbeatTimeout' });
});
