// The broker's WebSocket listener against docs/protocol.md, frame by
// frame, with a raw WebSocket (no SDK): the handshake rules (6.1), the
// connection-level errors (6.3), extension frames (3.3), forward
// compatibility (5) and a few request rules. Each test has its own broker.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { WebSocket } from 'ws';

import { DEFAULT_MAX_FRAME_LEN, ErrorCode, type Frame, decodeMessage, encodeFrame, frameToJson } from '../../src/index.js';
import { Broker } from '../support/broker.js';

let broker: Broker;

/** A test with a broker of its own. */
function brokerTest(name: string, body: () => Promise<void>): void {
  test(name, { timeout: 30_000 }, async () => {
    broker = await Broker.start();
    try {
      await body();
    } finally {
      await broker.stop();
    }
  });
}

/** A raw connection: send bytes, read frames. */
class Raw {
  readonly frames: Frame[] = [];
  closed = false;
  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data: ArrayBuffer) => this.frames.push(decodeMessage(new Uint8Array(data), DEFAULT_MAX_FRAME_LEN)));
    ws.on('close', () => (this.closed = true));
    ws.on('error', () => undefined);
  }

  static open(): Promise<Raw> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(broker.url, ['confab.v1']);
      ws.binaryType = 'arraybuffer';
      ws.once('open', () => resolve(new Raw(ws)));
      ws.once('error', reject);
    });
  }

  send(f: Frame | Uint8Array): void {
    this.ws.send(f instanceof Uint8Array ? f : encodeFrame(f));
  }

  /** Waits for a frame matching `pred` (at most 5 s). */
  async next(pred: (f: Frame) => boolean, what: string): Promise<Frame> {
    const deadline = Date.now() + 5000;
    for (;;) {
      const i = this.frames.findIndex(pred);
      if (i >= 0) return this.frames.splice(i, 1)[0] as Frame;
      if (Date.now() > deadline) throw new Error(`no ${what}; got ${JSON.stringify(this.frames.map(frameToJson))}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Waits for the broker to close (at most 5 s). */
  async waitClosed(): Promise<void> {
    const deadline = Date.now() + 5000;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('the broker did not close');
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Sends a Hello and waits for the Welcome. */
  async hello(user = 'alice', device = 'raw'): Promise<void> {
    this.send({ requestId: 1, flags: 0, body: { type: 'Hello', minVersion: 1, maxVersion: 1, token: `${user}:${device}`, device, clientName: 'conformance', resume: [] } });
    await this.next((f) => f.body.type === 'Welcome' && f.requestId === 1, 'Welcome');
  }
}

/** Expects Error (request id `rid`) then Goodbye with `code`, then the close (6.3). */
async function fatal(c: Raw, code: number, rid: number, what: string): Promise<void> {
  const e = await c.next((f) => f.body.type === 'Error', `${what}: Error`);
  assert.ok(e.body.type === 'Error' && e.body.code === code, `${what}: Error ${code}, got ${JSON.stringify(frameToJson(e))}`);
  assert.equal(e.requestId, rid, `${what}: request id`);
  const g = await c.next((f) => f.body.type === 'Goodbye', `${what}: Goodbye`);
  assert.ok(g.body.type === 'Goodbye' && g.body.code === code, `${what}: Goodbye ${code}`);
  await c.waitClosed();
}

const hello = (rid: number, min = 1, max = 1): Frame => ({
  requestId: rid,
  flags: 0,
  body: { type: 'Hello', minVersion: min, maxVersion: max, token: 'alice:raw', device: 'raw', clientName: 'conformance', resume: [] },
});

brokerTest('6.1: a Hello with request id 0 is a ProtocolViolation (request id 0)', async () => {
  const c = await Raw.open();
  c.send(hello(0));
  await fatal(c, ErrorCode.ProtocolViolation, 0, 'Hello rid 0');
});

brokerTest('6.1: anything but Hello first is a ProtocolViolation', async () => {
  const c = await Raw.open();
  c.send({ requestId: 0, flags: 0, body: { type: 'Ping', nonce: 1n } });
  await fatal(c, ErrorCode.ProtocolViolation, 0, 'Ping before Hello');
});

brokerTest('6.1: no common version is UnsupportedVersion with the Hello request id', async () => {
  const c = await Raw.open();
  // The broker speaks versions 1 and 2.
  c.send(hello(9, 3, 4));
  await fatal(c, ErrorCode.UnsupportedVersion, 9, 'versions 3..4');
  const d = await Raw.open();
  d.send(hello(9, 1, 0));
  await fatal(d, ErrorCode.UnsupportedVersion, 9, 'min above max');
});

brokerTest('6.1: a dev token whose device part differs from Hello.device is Unauthenticated', async () => {
  const c = await Raw.open();
  c.send({ requestId: 4, flags: 0, body: { type: 'Hello', minVersion: 1, maxVersion: 1, token: 'alice:other', device: 'raw', clientName: '', resume: [] } });
  await fatal(c, ErrorCode.Unauthenticated, 4, 'token device mismatch');
});

brokerTest('6.1 and 6.6: a second Hello, or a server-to-client frame, is a ProtocolViolation', async () => {
  const c = await Raw.open();
  await c.hello();
  c.send(hello(2));
  await fatal(c, ErrorCode.ProtocolViolation, 0, 'second Hello');
  const d = await Raw.open();
  await d.hello('bob');
  d.send({ requestId: 0, flags: 0, body: { type: 'Ack' } });
  await fatal(d, ErrorCode.ProtocolViolation, 0, 'Ack from a client');
});

brokerTest('3.3: an unknown mandatory type is UnknownFrameType; an unknown extension is skipped', async () => {
  const c = await Raw.open();
  await c.hello();
  c.send({ requestId: 5, flags: 0, body: { type: 'Extension', frameType: 0x9a, body: new Uint8Array([1, 2, 3]) } });
  c.send({ requestId: 0, flags: 0, body: { type: 'Ping', nonce: 42n } });
  const pong = await c.next((f) => f.body.type === 'Pong', 'Pong after an extension frame');
  assert.ok(pong.body.type === 'Pong' && pong.body.nonce === 42n);
  c.send(new Uint8Array([0, 0, 0, 0, 0x7e, 0, 0, 0, 0, 7]));
  await fatal(c, ErrorCode.UnknownFrameType, 0, 'type 0x7e');
});

brokerTest('4.3: a malformed body is MalformedFrame', async () => {
  const c = await Raw.open();
  await c.hello();
  // Typing{room "r", active 2}
  c.send(new Uint8Array([0, 0, 0, 3, 0x40, 0, 0, 0, 0, 9, 1, 0x72, 2]));
  await fatal(c, ErrorCode.MalformedFrame, 0, 'bool 2');
});

brokerTest('5: appended fields and unknown flag bits are accepted', async () => {
  const c = await Raw.open();
  await c.hello();
  // Ping with 3 extra bytes and flags 0xf0.
  c.send(new Uint8Array([0, 0, 0, 11, 0x04, 0xf0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7, 9, 9, 9]));
  const pong = await c.next((f) => f.body.type === 'Pong', 'Pong');
  assert.ok(pong.body.type === 'Pong' && pong.body.nonce === 7n);
  assert.equal(c.closed, false);
});

brokerTest('7.3.1 and 7.4.5: an empty Subscribe, and a history probe with limit 0', async () => {
  const c = await Raw.open();
  await c.hello();
  c.send({ requestId: 6, flags: 0, body: { type: 'Subscribe', items: [] } });
  const ack = await c.next((f) => f.requestId === 6, 'SubscribeAck');
  assert.ok(ack.body.type === 'SubscribeAck' && ack.body.results.length === 0, JSON.stringify(frameToJson(ack)));
  c.send({ requestId: 7, flags: 0, body: { type: 'Publish', room: 'probe', clientMsgId: 1n, kind: 1, refersTo: null, thread: null, payload: new Uint8Array([1]) } });
  await c.next((f) => f.requestId === 7 && f.body.type === 'PublishAck', 'PublishAck');
  c.send({ requestId: 8, flags: 0, body: { type: 'HistoryRequest', room: 'probe', direction: 'After', anchor: 0n, limit: 0 } });
  const page = await c.next((f) => f.requestId === 8, 'HistoryPage');
  assert.ok(page.body.type === 'HistoryPage' && page.body.events.length === 0 && page.body.hasMore && page.body.first === 1n, JSON.stringify(frameToJson(page)));
});

brokerTest('12.2 over WebSocket: a publish repeated with its client_msg_id is acknowledged as a duplicate', async () => {
  const c = await Raw.open();
  await c.hello('carol');
  const publish = (rid: number): Frame => ({ requestId: rid, flags: 0, body: { type: 'Publish', room: 'dedup', clientMsgId: 1_765_000_000_000_000_001n, kind: 1, refersTo: null, thread: null, payload: new Uint8Array([7]) } });
  c.send(publish(10));
  const first = await c.next((f) => f.requestId === 10, 'first ack');
  c.send(publish(11));
  const second = await c.next((f) => f.requestId === 11, 'second ack');
  assert.ok(first.body.type === 'PublishAck' && !first.body.duplicate);
  assert.ok(second.body.type === 'PublishAck' && second.body.duplicate && second.body.seq === first.body.seq);
});
