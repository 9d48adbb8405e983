// The SDK against a mock broker that misbehaves on purpose
// (test/support/mock-broker.ts): split acks, skipped deliveries, repeated
// entries, lost acknowledgements, refused publishes and Hellos, cut and
// silent connections, hostile bytes. Every wait is bounded.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, beforeEach, test } from 'node:test';

import { Client, ClientError, type ConnectionEvent, ErrorCode, type RoomEvent, encodeFrame } from '../../src/index.js';
import { MockBroker } from '../support/mock-broker.js';
import { options, sleep, text, until, within } from '../support/util.js';

let broker: MockBroker;
const clients: Client[] = [];

before(async () => {
  broker = await MockBroker.start();
});

after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await broker.stop();
});

beforeEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  broker.cutAll();
  for (const k of Object.keys(broker.faults)) delete (broker.faults as Record<string, unknown>)[k];
  broker.rooms.clear();
  broker.hellos = [];
});

function start(user: string, device: string, more: Parameters<typeof options>[3] = {}): Client {
  const c = Client.start(options(broker.url, user, device, more));
  clients.push(c);
  return c;
}

function collect(c: Client, room: string, from?: bigint): Promise<RoomEvent[]> {
  const got: RoomEvent[] = [];
  return c.subscribe(room, { ...(from === undefined ? {} : { from }), onEvent: (e) => got.push(e) }).then(() => got);
}

const seqs = (events: RoomEvent[]): number[] => events.map((e) => Number(e.seq));

test('publish, subscribe, history: each entry once, in order', async () => {
  const a = start('alice', 'a1');
  await within(a.waitConnected(), 5000, 'connect');
  const got = await collect(a, 'general', 1n);
  const acks = await Promise.all(['one', 'two', 'three'].map((m) => a.publish('general', m)));
  assert.deepEqual(acks.map((x) => x.seq), [1n, 2n, 3n]);
  await until(() => got.length === 3, 5000, 'three events');
  assert.deepEqual(got.map((e) => text(e.payload)), ['one', 'two', 'three']);
  assert.equal(got[0]?.clientMsgId, acks[0]?.clientMsgId);
  const h = await a.history('general', 2n);
  assert.deepEqual(seqs(h), [2, 3]);
});

test('split SubscribeAcks are joined by position across frames', async () => {
  broker.faults.ackChunk = 2;
  const a = start('alice', 'a1');
  const rooms = ['r1', 'r2', 'r3', 'r4', 'r5'];
  // Subscribed offline: all five go in the Hello's resume, answered by
  // three SubscribeAck frames with the Hello's request id.
  const got = await Promise.all(rooms.map((r) => collect(a, r, 1n)));
  await within(a.waitConnected(), 5000, 'connect');
  assert.equal(broker.hellos[0]?.resume.length, 5);
  for (const r of rooms) broker.append(r, `in ${r}`);
  await until(() => got.every((g) => g.length === 1), 5000, 'one event per room');
  // A second Subscribe of several rooms after the handshake, split too.
  const more = ['s1', 's2', 's3'];
  const got2 = await Promise.all(more.map((r) => collect(a, r)));
  for (const r of more) broker.append(r, `in ${r}`);
  await until(() => got2.every((g) => g.length === 1), 5000, 'live events after split acks');
});

test('a skipped delivery is filled from history; repeated entries are dropped', async () => {
  broker.faults.dropLive = (_room, seq) => seq === 2n || seq === 3n;
  const a = start('alice', 'a1');
  await within(a.waitConnected(), 5000, 'connect');
  const got = await collect(a, 'general', 1n);
  for (let i = 1; i <= 5; i++) broker.append('general', `m${i}`);
  await until(() => got.length === 5, 5000, 'five events');
  assert.deepEqual(seqs(got), [1, 2, 3, 4, 5]);
  const conn = [...broker.conns][0];
  assert.ok(conn);
  assert.ok(conn.frames.some((f) => f.body.type === 'HistoryRequest'), 'the gap was filled from history');
  // The broker repeats entry 4: nothing new reaches the application.
  const rec = broker.rooms.get('general')?.[3];
  assert.ok(rec);
  broker.send(conn, { requestId: 0, flags: 0, body: { type: 'Event', room: 'general', event: rec } });
  broker.append('general', 'm6');
  await until(() => got.length === 6, 5000, 'six events');
  assert.deepEqual(seqs(got), [1, 2, 3, 4, 5, 6]);
});

test('after a cut connection every room resumes from its last sequence + 1', async () => {
  const a = start('alice', 'a1');
  const events: ConnectionEvent[] = [];
  a.on('connection', (e) => events.push(e));
  await within(a.waitConnected(), 5000, 'connect');
  const got = await collect(a, 'general', 1n);
  broker.append('general', 'before');
  await until(() => got.length === 1, 5000, 'first event');
  broker.cutAll();
  broker.append('general', 'while away 1');
  broker.append('general', 'while away 2');
  await until(() => events.some((e) => e.type === 'reconnected'), 5000, 'reconnected');
  broker.append('general', 'after');
  await until(() => got.length === 4, 5000, 'four events');
  assert.deepEqual(seqs(got), [1, 2, 3, 4]);
  assert.deepEqual(got.map((e) => e.replayed), [false, true, true, false]);
  const resume = broker.hellos[1]?.resume[0];
  assert.deepEqual(resume, { room: 'general', start: { from: 2n } });
});

test('a publish whose ack is lost is resent with the same id and stored once', async () => {
  let cuts = 0;
  broker.faults.onPublish = () => (cuts++ === 0 ? 'cut-after-store' : undefined);
  const a = start('alice', 'a1');
  await within(a.waitConnected(), 5000, 'connect');
  const p = a.enqueue({ room: 'general', payload: 'once' });
  const ack = await within(p.ack, 5000, 'ack after reconnect');
  assert.equal(ack.duplicate, true);
  assert.equal(ack.clientMsgId, p.clientMsgId);
  assert.equal(broker.rooms.get('general')?.length, 1);
});

test('StorageFull and RateLimited refusals are retried with the same id until stored', async () => {
  let n = 0;
  broker.faults.onPublish = () => {
    n++;
    return n <= 2 ? 'storage-full' : n <= 4 ? 'rate-limited' : undefined;
  };
  const a = start('alice', 'a1', { backoff: { initialMs: 20, maxMs: 50 } });
  await within(a.waitConnected(), 5000, 'connect');
  const p1 = a.enqueue({ room: 'general', payload: 'first' });
  const p2 = a.enqueue({ room: 'general', payload: 'second' });
  const [a1, a2] = await within(Promise.all([p1.ack, p2.ack]), 5000, 'acks');
  assert.ok(a1.seq < a2.seq, 'queued order is kept');
  assert.deepEqual(broker.rooms.get('general')?.map((e) => text(e.payload)), ['first', 'second']);
});

test('other refusals fail the publish and are reported', async () => {
  broker.faults.onPublish = () => 'internal';
  const a = start('alice', 'a1');
  const failed: ConnectionEvent[] = [];
  a.on('connection', (e) => e.type === 'publishFailed' && failed.push(e));
  await within(a.waitConnected(), 5000, 'connect');
  await assert.rejects(a.publish('general', 'x'), (e: unknown) => e instanceof ClientError && e.code === ErrorCode.Internal);
  assert.equal(failed.length, 1);
  assert.equal(a.outboxSize, 0);
});

test('publishes made offline wait in the outbox and go out in order', async () => {
  const a = start('alice', 'a1');
  const acks = ['a', 'b', 'c'].map((m) => a.enqueue({ room: 'general', payload: m }).ack);
  const done = await within(Promise.all(acks), 5000, 'acks');
  assert.deepEqual(done.map((x) => x.seq), [1n, 2n, 3n]);
});

test('an expired token is replaced through getToken', async () => {
  broker.faults.refuseHello = (h) => (h.token === 'alice:old' ? ErrorCode.TokenExpired : undefined);
  const asked: ClientError[] = [];
  const a = start('alice', 'a1', {
    token: 'alice:old',
    getToken: (e) => {
      asked.push(e);
      return 'alice:a1';
    },
  });
  await within(a.waitConnected(), 5000, 'connect with the new token');
  assert.equal(asked.length, 1);
  assert.equal(asked[0]?.code, ErrorCode.TokenExpired);
});

test('an expired token without getToken stops the client with Fatal', async () => {
  broker.faults.refuseHello = () => ErrorCode.TokenExpired;
  const a = start('alice', 'a1', { backoff: { initialMs: 10, maxMs: 20 } });
  const closed = new Promise<ConnectionEvent>((r) => a.on('connection', (e) => e.type === 'closed' && r(e)));
  const e = await within(closed, 5000, 'closed');
  assert.ok(e.type === 'closed' && e.error?.kind === 'Fatal' && e.error.code === ErrorCode.TokenExpired);
  await assert.rejects(a.publish('general', 'x'), (x: unknown) => x instanceof ClientError && x.kind === 'Fatal');
  assert.equal(broker.hellos.length, 1, 'no retry with the same token');
});

test('a replaced session is not fought over', async () => {
  const a = start('alice', 'phone');
  await within(a.waitConnected(), 5000, 'connect a');
  const closed = new Promise<ConnectionEvent>((r) => a.on('connection', (e) => e.type === 'closed' && r(e)));
  const b = start('alice', 'phone');
  await within(b.waitConnected(), 5000, 'connect b');
  const e = await within(closed, 5000, 'a closed');
  assert.ok(e.type === 'closed' && e.error?.code === ErrorCode.SessionReplaced);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(broker.hellos.length, 2, 'a did not reconnect');
});

test('hostile bytes from the broker end the connection with a Goodbye, never the client', async () => {
  const a = start('alice', 'a1');
  const events: ConnectionEvent[] = [];
  a.on('connection', (e) => events.push(e));
  await within(a.waitConnected(), 5000, 'connect');
  const got = await collect(a, 'general', 1n);
  const hostile: (Uint8Array | string)[] = [
    'a text message',
    new Uint8Array([1, 2, 3]),
    new Uint8Array([0, 0, 0, 1, 0x22, 0, 0, 0, 0, 0, 9]), // a malformed Event
    new Uint8Array([0xff, 0xff, 0xff, 0xff, 0x22, 0, 0, 0, 0, 0]), // too large
    new Uint8Array([0, 0, 0, 0, 0x7f, 0, 0, 0, 0, 0]), // unknown mandatory type
    encodeFrame({ requestId: 0, flags: 0, body: { type: 'Hello', minVersion: 1, maxVersion: 1, token: '', device: 'x', clientName: '', resume: [] } }),
  ];
  for (const [i, bytes] of hostile.entries()) {
    const conn = [...broker.conns][0];
    assert.ok(conn, `connected before hostile message ${i}`);
    broker.sendRaw(conn, bytes);
    await until(() => events.filter((e) => e.type === 'reconnected').length === i + 1, 5000, `reconnect ${i}`);
    const goodbye = conn.frames.find((f) => f.body.type === 'Goodbye');
    assert.ok(goodbye && goodbye.body.type === 'Goodbye' && goodbye.body.code !== ErrorCode.Normal, `goodbye ${i}`);
  }
  broker.append('general', 'still fine');
  await until(() => got.length === 1, 5000, 'delivery after it all');
});

test('a silent broker is detected by the heartbeat and left', async () => {
  broker.faults.heartbeatMs = 100;
  const a = start('alice', 'a1', { heartbeatMs: 100, deadLinkTimeoutMs: 400 });
  const events: ConnectionEvent[] = [];
  a.on('connection', (e) => events.push(e));
  await within(a.waitConnected(), 5000, 'connect');
  broker.faults.silent = true;
  await until(() => events.some((e) => e.type === 'disconnected' && e.reason.kind === 'heartbeatTimeout'), 5000, 'heartbeat timeout');
  const conn = broker.hellos.length;
  assert.ok(conn >= 1);
});

test('the heartbeat Pings the broker when idle and answers its Pings', async () => {
  broker.faults.heartbeatMs = 100;
  const a = start('alice', 'a1', { heartbeatMs: 5000, deadLinkTimeoutMs: 10_000 });
  await within(a.waitConnected(), 5000, 'connect');
  const conn = [...broker.conns][0];
  assert.ok(conn);
  await until(() => conn.frames.some((f) => f.body.type === 'Ping'), 3000, 'a Ping within the broker heartbeat');
  broker.send(conn, { requestId: 0, flags: 0, body: { type: 'Ping', nonce: 77n } });
  await until(() => conn.frames.some((f) => f.body.type === 'Pong' && f.body.nonce === 77n), 3000, 'Pong 77');
});

test('receipts and typing: kept offline / refused offline', async () => {
  const a = start('alice', 'a1', { backoff: { initialMs: 300, maxMs: 300 } });
  await a.markRead('general', 5n);
  await a.markRead('general', 3n); // behind: merged away
  await assert.rejects(a.typing('general', true), (e: unknown) => e instanceof ClientError && e.kind === 'NotConnected');
  await within(a.waitConnected(), 5000, 'connect');
  const conn = [...broker.conns][0];
  assert.ok(conn);
  await until(() => conn.frames.some((f) => f.body.type === 'Receipt'), 3000, 'receipt sent');
  const receipts = conn.frames.filter((f) => f.body.type === 'Receipt');
  assert.equal(receipts.length, 1);
  assert.ok(receipts[0]?.body.type === 'Receipt' && receipts[0].body.seq === 5n);
  // The barrier Ping that confirms it.
  await until(() => conn.frames.some((f) => f.body.type === 'Ping'), 3000, 'barrier ping');
  await a.typing('general', true);
  await until(() => conn.frames.some((f) => f.body.type === 'Typing'), 3000, 'typing sent');
});

test('requests wait for a connection and fail with Timeout when none comes', async () => {
  const a = Client.start(options('ws://127.0.0.1:9/ws', 'alice', 'a1', { requestTimeoutMs: 200 }));
  clients.push(a);
  await assert.rejects(a.history('general'), (e: unknown) => e instanceof ClientError && e.kind === 'Timeout');
});

test('bad options are refused up front', () => {
  assert.throws(() => Client.start(options('http://x', 'a', 'b')), (e: unknown) => e instanceof ClientError && e.kind === 'InvalidConfig');
  assert.throws(() => Client.start(options(broker.url, 'a', '')), (e: unknown) => e instanceof ClientError && e.kind === 'InvalidConfig');
  assert.throws(() => Client.start(options(broker.url, 'a', 'b', { heartbeatMs: 100, deadLinkTimeoutMs: 50 })), ClientError);
});

test('a session ended with TokenExpired reconnects with a token from getToken', async () => {
  let n = 0;
  const a = start('alice', 'a1', {
    getToken: () => {
      n++;
      return 'alice:a1';
    },
  });
  await within(a.waitConnected(), 5000, 'connect');
  const got = await collect(a, 'general', 1n);
  const conn = [...broker.conns][0];
  assert.ok(conn);
  broker.send(conn, { requestId: 0, flags: 0, body: { type: 'Goodbye', code: ErrorCode.TokenExpired, message: 'expired' } });
  conn.ws.close();
  await until(() => broker.hellos.length === 2 && broker.conns.size === 1, 5000, 'reconnected');
  assert.equal(n, 1, 'getToken asked once');
  broker.append('general', 'after refresh');
  await until(() => got.length === 1, 5000, 'delivery after the refresh');
});

test('a Hello refused with RateLimited waits retry_after_ms before the next attempt', async () => {
  let refusals = 0;
  broker.faults.refuseHello = () => (refusals++ < 2 ? ErrorCode.RateLimited : undefined);
  const a = start('alice', 'a1', { backoff: { initialMs: 1, maxMs: 2 } });
  const t0 = Date.now();
  await within(a.waitConnected(), 5000, 'connect after the refusals');
  // Two refusals, each asking for 50 ms (the mock's retry_after_ms).
  assert.ok(Date.now() - t0 >= 100, `reconnected after ${Date.now() - t0} ms`);
});

test('rooms that do not fit in a 64 KiB Hello are subscribed right after Welcome', async () => {
  const a = start('alice', 'a1');
  const rooms = Array.from({ length: 600 }, (_, i) => `${String(i).padStart(4, '0')}${'r'.repeat(124)}`);
  const got = await Promise.all(rooms.map((r) => collect(a, r)));
  await within(a.waitConnected(), 5000, 'connect');
  const resumed = broker.hellos[0]?.resume.length ?? 0;
  assert.ok(resumed > 400 && resumed < 600, `${resumed} rooms in the Hello`);
  const conn = [...broker.conns][0];
  assert.ok(conn);
  await until(() => conn.subs.size === 600, 5000, 'every room subscribed');
  for (const r of [rooms[0], rooms[599]]) if (r !== undefined) broker.append(r, 'x');
  await until(() => got[0]?.length === 1 && got[599]?.length === 1, 5000, 'first and last room deliver');
});

test('an unsubscribed room delivers nothing more', async () => {
  const a = start('alice', 'a1');
  await within(a.waitConnected(), 5000, 'connect');
  const got: number[] = [];
  let ended: unknown = 'not yet';
  const sub = await a.subscribe('general', { from: 1n, onEvent: (e) => got.push(Number(e.seq)), onEnd: (e) => (ended = e) });
  broker.append('general', 'one');
  await until(() => got.length === 1, 5000, 'first');
  await sub.unsubscribe();
  assert.equal(ended, null);
  broker.append('general', 'two');
  await new Promise((r) => setTimeout(r, 200));
  assert.deepEqual(got, [1]);
  // The room can be followed again.
  const again = await collect(a, 'general', 1n);
  await until(() => again.length === 2, 5000, 'both after resubscribing');
});

test('closing a client whose WebSocket is still connecting raises nothing afterwards', async () => {
  // A listener that accepts TCP and never answers the upgrade: the socket
  // stays CONNECTING. Node's `ws` emits an error event after `close()` on
  // such a socket; with no listener that would be an uncaught exception and
  // fail this file.
  const held: net.Socket[] = [];
  const silent = net.createServer((s) => held.push(s));
  await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
  const port = (silent.address() as net.AddressInfo).port;
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown): void => {
    uncaught.push(e);
  };
  process.on('uncaughtException', onUncaught);
  try {
    const c = Client.start(options(`ws://127.0.0.1:${port}/ws`, 'alice', 'a1'));
    await sleep(100);
    assert.notEqual(c.state, 'connected');
    await c.close();
    await sleep(200);
    assert.deepEqual(uncaught.map(String), []);
  } finally {
    process.off('uncaughtException', onUncaught);
    for (const s of held) s.destroy();
    await new Promise<void>((r) => silent.close(() => r()));
  }
});
