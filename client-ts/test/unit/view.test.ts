// The message view (a port of the Rust SDK's view_tests.rs): the same
// conversation gives the same view in any order and with repeats.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { MessageKind as K, type RoomEvent, RoomView } from '../../src/index.js';

const ev = (seq: number, kind: number, target: number | null, who: string, payload: string): RoomEvent => ({
  room: 'r',
  seq: BigInt(seq),
  timestampUs: BigInt(seq),
  sender: who,
  device: 'd',
  clientMsgId: 0n,
  kind,
  refersTo: target === null ? null : BigInt(target),
  thread: null,
  payload: new TextEncoder().encode(payload),
  replayed: false,
});

const script = (): RoomEvent[] => [
  ev(1, K.MESSAGE, null, 'alice', 'helo'),
  ev(2, K.MESSAGE, null, 'bob', 'hi'),
  ev(3, K.EDIT, 1, 'alice', 'hello'),
  ev(4, K.REACTION, 1, 'bob', '+1'),
  ev(5, K.REACTION, 1, 'carol', '+1'),
  ev(6, K.REACTION, 1, 'bob', '+1'),
  ev(7, K.REACTION, 1, 'carol', 'heart'),
  ev(8, K.EDIT, 1, 'alice', 'hello all'),
  ev(9, K.EDIT, 1, 'bob', 'hacked'), // not the sender: ignored
  ev(10, K.DELETE, 7, 'carol', ''), // carol withdraws her heart
  ev(11, K.EDIT, 2, 'bob', 'hi there'),
  ev(12, K.DELETE, 2, 'bob', ''),
  ev(13, K.EDIT, 2, 'bob', 'back'), // after the delete: ignored
  ev(14, K.MEMBER_JOINED, null, 'dave', ''),
  ev(15, K.MESSAGE, 1, 'dave', 'reply'),
];

function check(view: RoomView): void {
  assert.equal(view.size, 3);
  const first = view.get(1n);
  assert.ok(first);
  assert.equal(new TextDecoder().decode(first.content), 'hello all');
  assert.equal(first.edited, 8n);
  assert.equal(first.deleted, false);
  assert.deepEqual([...first.reactions.keys()], ['+1']);
  assert.deepEqual([...(first.reactions.get('+1') ?? [])].sort(), ['bob', 'carol']);
  const second = view.get(2n);
  assert.ok(second?.deleted);
  assert.equal(second.content.length, 0);
  assert.equal(second.edited, null);
  assert.equal(view.get(15n)?.replyTo, 1n);
}

test('a conversation folds into its messages', () => {
  const v = new RoomView();
  v.extend(script());
  check(v);
});

test('any order, with repeats, gives the same view', () => {
  let x = 7;
  for (let round = 0; round < 200; round++) {
    const events = [...script(), ...script().slice(0, 1 + (round % 15))];
    for (let i = events.length - 1; i > 0; i--) {
      x = (x * 1103515245 + 12345) & 0x7fffffff;
      const j = x % (i + 1);
      [events[i], events[j]] = [events[j] as RoomEvent, events[i] as RoomEvent];
    }
    const v = new RoomView();
    v.extend(events);
    check(v);
  }
});
