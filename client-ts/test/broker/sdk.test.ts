// The SDK against the real broker binary over WebSocket. Every test starts
// its own broker (temporary data directory, free loopback ports) and is
// bounded in time.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { WebSocket } from 'ws';

import {
  Client,
  ClientError,
  type ConnectionEvent,
  DEFAULT_MAX_FRAME_LEN,
  ErrorCode,
  type Frame,
  type RoomEvent,
  decodeMessage,
  encodeFrame,
  frameToJson,
} from '../../src/index.js';
import { Broker } from '../support/broker.js';
import { Proxy } from '../support/proxy.js';
import { options, sleep, text, until, within, withOrigin } from '../support/util.js';

const NO_RATE_LIMITS = ['rate_limits.enabled=false'];

/** Runs `body` with a fresh broker and closes every client and the broker after it. */
async function withBroker(o: { origins?: string[]; settings?: string[] }, body: (b: Broker, clients: Client[]) => Promise<void>): Promise<void> {
  const b = await Broker.start({ allowedOrigins: o.origins ?? [], settings: o.settings ?? [] });
  const clients: Client[] = [];
  try {
    await body(b, clients);
  } catch (e) {
    throw new Error(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n--- broker output ---\n${b.output()}`);
  } finally {
    await Promise.all(clients.map((c) => c.close()));
    await b.stop();
  }
}

function collect(c: Client, room: string, from?: bigint): Promise<RoomEvent[]> {
  const got: RoomEvent[] = [];
  return c.subscribe(room, { ...(from === undefined ? {} : { from }), onEvent: (e) => got.push(e) }).then(() => got);
}

const seqs = (events: RoomEvent[]): bigint[] => events.map((e) => e.seq);
const range = (n: number): bigint[] => Array.from({ length: n }, (_, i) => BigInt(i + 1));

test('two clients chat in a room: every message once, in order, and history agrees', { timeout: 60_000 }, async () => {
  await withBroker({ settings: NO_RATE_LIMITS }, async (b, clients) => {
    const alice = await Client.connect(options(b.url, 'alice', 'laptop'));
    const bob = await Client.connect(options(b.url, 'bob', 'phone'));
    clients.push(alice, bob);
    assert.equal(alice.user, 'alice');
    const seenA = await collect(alice, 'general', 1n);
    const seenB = await collect(bob, 'general', 1n);
    const acks = [];
    for (let i = 0; i < 20; i++) {
      acks.push(alice.publish('general', `alice ${i}`));
      acks.push(bob.publish('general', `bob ${i}`));
    }
    const done = await within(Promise.all(acks), 20_000, 'acks');
    assert.deepEqual([...done.map((a) => a.seq)].sort((x, y) => (x < y ? -1 : 1)), range(40));
    await until(() => seenA.length === 40 && seenB.length === 40, 20_000, 'all 40 at both');
    assert.deepEqual(seqs(seenA), range(40));
    assert.deepEqual(seqs(seenB), range(40));
    assert.deepEqual(seenA.map((e) => text(e.payload)), seenB.map((e) => text(e.payload)));
    const history = await alice.history('general');
    assert.deepEqual(history.map((e) => text(e.payload)), seenA.map((e) => text(e.payload)));
    const page = await bob.historyPage('general', 'Before', 0n, 5);
    assert.deepEqual(page.events.map((e) => e.seq), [36n, 37n, 38n, 39n, 40n]);
    assert.equal(page.hasMore, true);
  });
});

test('all 256 byte values round-trip in a payload', { timeout: 30_000 }, async () => {
  await withBroker({}, async (b, clients) => {
    const a = await Client.connect(options(b.url, 'alice', 'laptop'));
    clients.push(a);
    const got = await collect(a, 'bytes', 1n);
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    const reversed = all.slice().reverse();
    await a.publish('bytes', all);
    await a.publish('bytes', reversed, { kind: 200 });
    await until(() => got.length === 2, 10_000, 'two events');
    assert.deepEqual(got[0]?.payload, all);
    assert.deepEqual(got[1]?.payload, reversed);
    assert.equal(got[1]?.kind, 200);
    const h = await a.history('bytes');
    assert.deepEqual(h.map((e) => e.payload), [all, reversed]);
  });
});

test('kill -9 and restart mid-stream: nothing lost, nothing repeated, each publish stored once', { timeout: 120_000 }, async () => {
  await withBroker({ settings: NO_RATE_LIMITS }, async (b, clients) => {
    const fast = { heartbeatMs: 1000, deadLinkTimeoutMs: 3000, backoff: { initialMs: 50, maxMs: 300 } };
    const pub = Client.start(options(b.url, 'alice', 'laptop', fast));
    const sub = Client.start(options(b.url, 'bob', 'phone', fast));
    clients.push(pub, sub);
    const events: ConnectionEvent[] = [];
    sub.on('connection', (e) => events.push(e));
    const seen = await collect(sub, 'stream', 1n);
    await within(Promise.all([pub.waitConnected(), sub.waitConnected()]), 10_000, 'connect');
    const total = 300;
    const acks: Promise<unknown>[] = [];
    const ids: bigint[] = [];
    for (let i = 0; i < total; i++) {
      const p = pub.enqueue({ room: 'stream', payload: `m${i}` });
      ids.push(p.clientMsgId);
      acks.push(p.ack);
      if (i === 100 || i === 200) {
        await until(() => seen.length >= i - 20, 20_000, `delivery before kill ${i}`);
        // A burst on its way when the broker dies: some stored, some not,
        // their acknowledgements lost.
        for (let k = 0; k < 25; k++) {
          const q = pub.enqueue({ room: 'stream', payload: `m${i} burst ${k}` });
          ids.push(q.clientMsgId);
          acks.push(q.ack);
        }
        assert.ok(pub.outboxSize >= 25, 'publishes in flight at the kill');
        await b.restart(); // kill -9, then the same data directory and port
      }
      if (i % 10 === 0) await sleep(5);
    }
    await within(Promise.all(acks), 60_000, 'every publish acknowledged');
    const n = total + 50;
    await until(() => seen.length >= n, 60_000, `all ${n} delivered (have ${seen.length})`);
    await sleep(300); // anything extra would show up now
    assert.deepEqual(seqs(seen), range(n), 'exactly once, in order');
    assert.deepEqual(seen.map((e) => e.clientMsgId), ids, 'each publish stored once, in queue order');
    assert.ok(events.filter((e) => e.type === 'reconnected').length >= 2);
    const history = await sub.history('stream');
    assert.deepEqual(seqs(history), range(n));
  });
});

test('a publish in flight across a reconnection is stored once (its ack was lost)', { timeout: 60_000 }, async () => {
  await withBroker({}, async (b, clients) => {
    const proxy = await Proxy.start(b.wsPort);
    try {
      const a = await Client.connect(options(`ws://127.0.0.1:${proxy.port}/ws`, 'alice', 'laptop'));
      clients.push(a);
      const reader = await Client.connect(options(b.url, 'bob', 'phone'));
      clients.push(reader);
      const seen = await collect(reader, 'general', 1n);
      proxy.blackholeDown = true; // the broker's answers are lost from now on
      const p = a.enqueue({ room: 'general', payload: 'in flight' });
      await until(() => seen.length === 1, 10_000, 'stored by the broker');
      proxy.cutAll();
      proxy.blackholeDown = false;
      const ack = await within(p.ack, 20_000, 'ack after the reconnection');
      assert.equal(ack.duplicate, true, 'the retry was recognised');
      assert.equal(ack.seq, 1n);
      await a.publish('general', 'after');
      await until(() => seen.length === 2, 10_000, 'second message');
      await sleep(200);
      assert.deepEqual(seen.map((e) => text(e.payload)), ['in flight', 'after']);
      assert.equal(seen[0]?.clientMsgId, p.clientMsgId);
    } finally {
      await proxy.stop();
    }
  });
});

test('an application restart resumes from the cursor store', { timeout: 30_000 }, async () => {
  await withBroker({}, async (b, clients) => {
    const { MemoryCursorStore } = await import('../../src/index.js');
    const store = new MemoryCursorStore();
    const w = await Client.connect(options(b.url, 'alice', 'laptop'));
    clients.push(w);
    const r1 = await Client.connect(options(b.url, 'bob', 'phone', { cursorStore: store }));
    const first = await collect(r1, 'general', 1n);
    for (const m of ['a', 'b', 'c']) await w.publish('general', m);
    await until(() => first.length === 3, 10_000, 'three');
    await r1.close();
    for (const m of ['d', 'e']) await w.publish('general', m);
    const r2 = await Client.connect(options(b.url, 'bob', 'phone', { cursorStore: store }));
    clients.push(r2);
    const second = await collect(r2, 'general'); // from the cursor: 3 + 1
    await until(() => second.length === 2, 10_000, 'the two missed');
    assert.deepEqual(second.map((e) => text(e.payload)), ['d', 'e']);
  });
});

test('retention: a device whose position was trimmed gets historyTruncated, then the rest', { timeout: 30_000 }, async () => {
  await withBroker({ settings: ['retention.max_count=3', 'retention.sweep_interval_ms=50'] }, async (b, clients) => {
    const { MemoryCursorStore } = await import('../../src/index.js');
    const w = await Client.connect(options(b.url, 'alice', 'laptop'));
    clients.push(w);
    for (let i = 1; i <= 10; i++) await w.publish('old', `m${i}`);
    // Wait for the sweep: the oldest retained entry moves to 8.
    const deadline = Date.now() + 10_000;
    for (;;) {
      const page = await w.historyPage('old', 'After', 0n, 0);
      if (page.first >= 8n) break;
      if (Date.now() > deadline) throw new Error(`retention did not run (first ${page.first})`);
      await sleep(50);
    }
    const store = new MemoryCursorStore();
    store.set('old', 2n); // this device had read up to 2
    const r = await Client.connect(options(b.url, 'bob', 'phone', { cursorStore: store }));
    clients.push(r);
    const truncated: ConnectionEvent[] = [];
    r.on('connection', (e) => e.type === 'historyTruncated' && truncated.push(e));
    const got = await collect(r, 'old');
    await until(() => got.length === 3, 10_000, 'the retained entries');
    assert.deepEqual(seqs(got), [8n, 9n, 10n]);
    assert.deepEqual(truncated, [{ type: 'historyTruncated', room: 'old', from: 3n, to: 7n }]);
    assert.equal(store.get('old'), 10n);
  });
});

test('a reader too slow for its queue goes through Lagging and catch-up without a gap', { timeout: 90_000 }, async () => {
  await withBroker({ settings: [...NO_RATE_LIMITS, 'delivery.queue_capacity=16', 'delivery.catchup_batch=16'] }, async (b, clients) => {
    const reader = await Client.connect(options(b.url, 'bob', 'phone', { deadLinkTimeoutMs: 60_000 }));
    const writer = await Client.connect(options(b.url, 'alice', 'laptop'));
    clients.push(reader, writer);
    const lag: ConnectionEvent[] = [];
    reader.on('connection', (e) => (e.type === 'lagging' || e.type === 'caughtUp') && lag.push(e));
    const got: RoomEvent[] = [];
    await reader.subscribe('firehose', {
      onEvent: (e) => {
        got.push(e);
        // A reader that hogs the event loop: it takes its socket's bytes late.
        const until = Date.now() + 2;
        while (Date.now() < until);
      },
    });
    const payload = new Uint8Array(16 * 1024).fill(7);
    const n = 400;
    await within(Promise.all(Array.from({ length: n }, () => writer.publish('firehose', payload))), 60_000, 'publishes');
    await until(() => got.length >= n, 60_000, `all ${n} at the slow reader (have ${got.length})`);
    await sleep(300);
    assert.deepEqual(seqs(got), range(n), 'every entry once, in order, through catch-up');
    assert.ok(lag.some((e) => e.type === 'lagging'), `the broker switched the reader to catch-up (${lag.length} events)`);
  });
});

test('rooms, typing, receipts, presence and message status', { timeout: 60_000 }, async () => {
  await withBroker({}, async (b, clients) => {
    const alice = await Client.connect(options(b.url, 'alice', 'laptop'));
    const bob = await Client.connect(options(b.url, 'bob', 'phone'));
    clients.push(alice, bob);
    const info = await alice.createGroup({ room: 'team', name: 'Équipe', invite: ['bob'] });
    assert.equal(info.room, 'team');
    assert.equal(info.meta.name, 'Équipe');
    await assert.rejects(alice.createGroup({ room: 'team' }), (e: unknown) => e instanceof ClientError && e.code === ErrorCode.RoomExists);
    const joined = await bob.join('team');
    assert.equal(joined.memberCount, 2);
    const list = await bob.listRooms();
    assert.deepEqual(list.rooms.map((r) => r.room), ['team']);
    const typing: string[][] = [];
    alice.on('typing', (t) => t.room === 'team' && typing.push(t.users));
    const receipts: string[] = [];
    alice.on('receipts', (r) => r.room === 'team' && receipts.push(...r.entries.map((x) => `${x.user}:${x.kind}:${x.seq}`)));
    const seenA = await collect(alice, 'team');
    await collect(bob, 'team');
    await bob.typing('team', true);
    await until(() => typing.some((u) => u.includes('bob')), 10_000, 'typing event');
    const ack = await alice.publish('team', 'hi bob');
    await bob.markRead('team', ack.seq);
    await until(() => receipts.includes(`bob:Read:${ack.seq}`), 10_000, 'read receipt');
    const status = await alice.messageStatus('team', ack.seq);
    assert.equal(status.read, 1);
    await alice.watchPresence(true);
    const presence = await alice.getPresence(['bob']);
    assert.equal(presence[0]?.status, 'Online');
    await until(() => seenA.length === 1, 5000, 'own message');
    await bob.leave('team');
    await assert.rejects(bob.publish('team', 'gone'), (e: unknown) => e instanceof ClientError && (e.code === ErrorCode.NotMember || e.code === ErrorCode.Forbidden));
    await assert.rejects(bob.roomInfo('nope'), (e: unknown) => e instanceof ClientError && e.code === ErrorCode.NoSuchRoom);
  });
});

test('Origin allow-list: a refused origin gets HTTP 403; allowed and absent origins connect', { timeout: 30_000 }, async () => {
  await withBroker({ origins: ['http://127.0.0.1:7403'] }, async (b, clients) => {
    const status = await new Promise<number>((resolve, reject) => {
      const ws = new WebSocket(b.url, ['confab.v1'], { origin: 'http://evil.example' });
      ws.on('unexpected-response', (_req, res) => {
        resolve(res.statusCode ?? 0);
        ws.terminate();
      });
      ws.on('open', () => reject(new Error('a refused origin was let in')));
      ws.on('error', () => undefined);
    });
    assert.equal(status, 403);
    const refused = Client.start(options(b.url, 'eve', 'x', { webSocket: withOrigin('http://evil.example') }));
    clients.push(refused);
    const failures: ConnectionEvent[] = [];
    refused.on('connection', (e) => e.type === 'disconnected' && failures.push(e));
    await until(() => failures.length >= 2, 10_000, 'two refused attempts');
    assert.ok(failures.every((e) => e.type === 'disconnected' && e.reason.kind === 'connectFailed'));
    assert.match(JSON.stringify(failures[0]), /403/);
    assert.notEqual(refused.state.kind, 'connected');
    const allowed = await Client.connect(options(b.url, 'alice', 'x', { webSocket: withOrigin('http://127.0.0.1:7403') }));
    clients.push(allowed);
    const noOrigin = await Client.connect(options(b.url, 'bob', 'y'));
    clients.push(noOrigin);
    assert.equal(allowed.state.kind, 'connected');
  });
});

/** Opens a raw WebSocket with the subprotocol and collects what the broker sends until it closes. */
function raw(url: string, send: (ws: WebSocket) => void): Promise<{ frames: Frame[]; texts: number; closed: number }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, ['confab.v1']);
    ws.binaryType = 'arraybuffer';
    const frames: Frame[] = [];
    let texts = 0;
    const t = setTimeout(() => {
      ws.terminate();
      reject(new Error(`the broker did not close; got ${frames.map((f) => f.body.type).join(', ')}`));
    }, 10_000);
    ws.on('open', () => {
      assert.equal(ws.protocol, 'confab.v1', 'the broker selects the subprotocol');
      send(ws);
    });
    ws.on('message', (data: ArrayBuffer, isBinary: boolean) => {
      if (!isBinary) texts++;
      else frames.push(decodeMessage(new Uint8Array(data), DEFAULT_MAX_FRAME_LEN));
    });
    ws.on('close', (code) => {
      clearTimeout(t);
      resolve({ frames, texts, closed: code });
    });
    ws.on('error', () => undefined);
  });
}

const hello = (rid = 1): Uint8Array =>
  encodeFrame({ requestId: rid, flags: 0, body: { type: 'Hello', minVersion: 1, maxVersion: 1, token: 'alice:raw', device: 'raw', clientName: 'test', resume: [] } });

function errorThenGoodbye(frames: Frame[], codes: number[], what: string): void {
  const err = frames.find((f) => f.body.type === 'Error');
  const bye = frames[frames.length - 1];
  assert.ok(err?.body.type === 'Error' && codes.includes(err.body.code), `${what}: Error with ${codes.join('/')}, got ${JSON.stringify(frames.map((f) => frameToJson(f)))}`);
  assert.equal(err.requestId, 0, `${what}: a connection-level Error has request id 0`);
  assert.ok(bye?.body.type === 'Goodbye' && bye.body.code === err.body.code, `${what}: then Goodbye with the same code`);
}

test('a text message, or a message that is not one whole frame, gets Error then Goodbye and a close', { timeout: 60_000 }, async () => {
  await withBroker({}, async (b) => {
    const text1 = await raw(b.url, (ws) => ws.send('hello'));
    errorThenGoodbye(text1.frames, [ErrorCode.ProtocolViolation], 'text before Hello');
    assert.equal(text1.texts, 0, 'the broker answers in binary');

    const afterWelcome = await raw(b.url, (ws) => {
      ws.send(hello());
      setTimeout(() => ws.send('{"type":"Publish"}'), 200);
    });
    assert.equal(afterWelcome.frames[0]?.body.type, 'Welcome');
    errorThenGoodbye(afterWelcome.frames, [ErrorCode.ProtocolViolation], 'text after Welcome');

    const two = new Uint8Array([...hello(), ...hello(2)]);
    const twoFrames = await raw(b.url, (ws) => ws.send(two));
    errorThenGoodbye(twoFrames.frames, [ErrorCode.MalformedFrame, ErrorCode.ProtocolViolation], 'two frames in one message');

    const partial = await raw(b.url, (ws) => ws.send(hello().slice(0, 20)));
    errorThenGoodbye(partial.frames, [ErrorCode.MalformedFrame, ErrorCode.ProtocolViolation], 'a partial frame');

    const whole = new Uint8Array(10 + (2 << 20));
    new DataView(whole.buffer).setUint32(0, 2 << 20);
    whole[4] = 0x04;
    const wholeBig = await raw(b.url, (ws) => ws.send(whole));
    errorThenGoodbye(wholeBig.frames, [ErrorCode.FrameTooLarge], 'a whole 2 MiB frame');

    // 3.4/3.5: the length is checked against the limit as soon as the
    // header is read, before anything else: FrameTooLarge, also when the
    // message holds nothing but that header.
    const tooLarge = new Uint8Array(10);
    new DataView(tooLarge.buffer).setUint32(0, 0x7fffffff);
    tooLarge[4] = 0x01;
    const big = await raw(b.url, (ws) => ws.send(tooLarge));
    errorThenGoodbye(big.frames, [ErrorCode.FrameTooLarge], 'a header announcing 2 GiB');
  });
});

test('an idle connection stays up on the protocol heartbeat', { timeout: 30_000 }, async () => {
  await withBroker({}, async (b, clients) => {
    const a = await Client.connect(options(b.url, 'alice', 'laptop', { heartbeatMs: 200, deadLinkTimeoutMs: 2000 }));
    clients.push(a);
    const events: ConnectionEvent[] = [];
    a.on('connection', (e) => events.push(e));
    await sleep(2500);
    assert.deepEqual(events, [], 'no disconnection while idle');
    assert.equal(a.state.kind, 'connected');
  });
});
