// Headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core;
// no browser download) against the real broker binary, through the demo
// page. Every test starts its own broker and demo server on loopback and
// is bounded in time. Screenshots go to $CONFAB_ARTIFACTS (default
// client-ts/artifacts/, gitignored).

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { type Browser, type BrowserContext, type Page, chromium } from 'playwright-core';

import { serveDemo } from '../demo/server.js';
import { Client, type RoomEvent } from '../src/index.js';
import { Broker } from '../test/support/broker.js';
import { Proxy } from '../test/support/proxy.js';
import { options, sleep, text, until, within } from '../test/support/util.js';

const CHROMIUM = process.env['CHROMIUM'] ?? '/usr/bin/chromium';
const ARTIFACTS = process.env['CONFAB_ARTIFACTS'] ?? fileURLToPath(new URL('../../artifacts/', import.meta.url));

let browser: Browser;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  // playwright-core's launch() starts Chromium with a fresh temporary
  // profile (its own --user-data-dir), removed when the browser closes.
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    timeout: 60_000,
  });
});

after(async () => {
  await browser?.close();
});

interface Env {
  broker: Broker;
  demoUrl: string;
  contexts: BrowserContext[];
  clients: Client[];
}

/** A demo server, a broker that allows its origin, and cleanup of everything after `body`. */
async function withEnv(body: (env: Env) => Promise<void>, settings: string[] = []): Promise<void> {
  const demo = await serveDemo(0);
  const origin = demo.url.replace(/\/$/, '');
  const broker = await Broker.start({ allowedOrigins: [origin], settings });
  const env: Env = { broker, demoUrl: demo.url, contexts: [], clients: [] };
  try {
    await body(env);
  } catch (e) {
    throw new Error(`${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n--- broker output ---\n${broker.output()}`);
  } finally {
    await Promise.all(env.clients.map((c) => c.close()));
    await Promise.all(env.contexts.map((c) => c.close()));
    await broker.stop();
    await new Promise<void>((r) => demo.server.close(() => r()));
  }
}

/** Opens the demo in a fresh browser context, joins `room` as `name`, waits for the history and the subscription. */
async function openPage(env: Env, name: string, room: string, brokerUrl = env.broker.url, demoUrl = env.demoUrl): Promise<Page> {
  const ctx = await browser.newContext({ viewport: { width: 900, height: 700 } });
  env.contexts.push(ctx);
  const page = await ctx.newPage();
  page.on('pageerror', (e) => console.error(`[${name}] page error: ${e.message}`));
  await page.goto(`${demoUrl}?broker=${encodeURIComponent(brokerUrl)}&name=${encodeURIComponent(name)}&room=${encodeURIComponent(room)}`);
  await page.click('#join button');
  return page;
}

async function waitJoined(page: Page): Promise<void> {
  await page.waitForSelector('#status[data-state="connected"]', { timeout: 15_000 });
  await page.waitForFunction(() => (window as unknown as { __demo: { historyLoaded: boolean } }).__demo.historyLoaded, undefined, { timeout: 15_000 });
}

/** The sequences the page was handed by the SDK, in order (not deduplicated). */
function received(page: Page): Promise<string[]> {
  return page.evaluate(() => (window as unknown as { __demo: { received: string[] } }).__demo.received.slice());
}

/** The messages on screen: "seq sender text", in order. */
function lines(page: Page): Promise<string[]> {
  return page.$$eval('#messages li[data-seq]', (els) => els.map((el) => `${el.getAttribute('data-seq')} ${el.getAttribute('data-sender')} ${el.querySelector('.body')?.textContent ?? ''}`));
}

async function say(page: Page, message: string): Promise<void> {
  await page.fill('#text', message);
  await page.click('#send button');
}

const range = (n: number): string[] => Array.from({ length: n }, (_, i) => String(i + 1));

test('two browser contexts chat in a room: history, send, typing, read marks, screenshots', { timeout: 120_000 }, async () => {
  await withEnv(async (env) => {
    const seed = Client.start(options(env.broker.url, 'carol', 'node'));
    env.clients.push(seed);
    for (const m of ['welcome!', 'earlier message']) await seed.publish('lobby', m);
    const alice = await openPage(env, 'alice', 'lobby');
    const bob = await openPage(env, 'bob', 'lobby');
    await Promise.all([waitJoined(alice), waitJoined(bob)]);
    assert.deepEqual(await received(alice), ['1', '2'], 'history shown first');
    for (let i = 0; i < 4; i++) {
      await say(alice, `alice says ${i}`);
      await say(bob, `bob says ${i}`);
    }
    for (const p of [alice, bob]) {
      await p.waitForFunction(() => document.querySelectorAll('#messages li[data-seq]').length === 10, undefined, { timeout: 20_000 });
    }
    assert.deepEqual(await received(alice), range(10));
    assert.deepEqual(await received(bob), range(10));
    assert.deepEqual(await lines(alice), await lines(bob), 'the same conversation on both pages');
    assert.equal(await alice.$$eval('#messages li.pending', (els) => els.length), 0);
    // Typing: bob types, alice sees it.
    await bob.fill('#text', 'typing something');
    await bob.dispatchEvent('#text', 'input');
    await alice.waitForFunction(() => document.getElementById('typing')?.textContent?.includes('bob is typing'), undefined, { timeout: 10_000 });
    // Read marks: both pages read everything; each shows the other's mark.
    await alice.waitForFunction(() => document.querySelector('#messages li[data-seq="10"] .read')?.textContent?.includes('bob'), undefined, { timeout: 10_000 });
    await bob.waitForFunction(() => document.querySelector('#messages li[data-seq="10"] .read')?.textContent?.includes('alice'), undefined, { timeout: 10_000 });
    await alice.screenshot({ path: join(ARTIFACTS, 'demo-alice.png') });
    await bob.screenshot({ path: join(ARTIFACTS, 'demo-bob.png') });
  });
});

test('all 256 byte values round-trip from a page; cursor stores work in the browser', { timeout: 60_000 }, async () => {
  await withEnv(async (env) => {
    const page = await openPage(env, 'dora', 'bytes');
    await waitJoined(page);
    const result = await page.evaluate(async (url: string) => {
      const sdk = (await import('/src/index.js' as string)) as typeof import('../src/index.js');
      const all = Uint8Array.from({ length: 256 }, (_, i) => i);
      const client = await sdk.Client.connect({ url, token: 'dora:bytes', device: 'bytes' });
      const got: number[][] = [];
      await client.subscribe('raw', { from: 1n, onEvent: (e) => got.push([...e.payload]) });
      const ack = await client.publish('raw', all);
      await client.publish('raw', all.slice().reverse());
      const deadline = Date.now() + 10_000;
      while (got.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      const history = (await client.history('raw')).map((e) => [...e.payload]);
      await client.close();
      // IndexedDB and localStorage keep exact u64 cursors across a reopen.
      const big = (1n << 60n) + 3n;
      const idb = await sdk.IndexedDbCursorStore.open('confab-test');
      idb.set('raw', big);
      await idb.close();
      const idb2 = await sdk.IndexedDbCursorStore.open('confab-test');
      const fromIdb = idb2.get('raw')?.toString();
      await idb2.close();
      const ls = new sdk.LocalStorageCursorStore('confab-test');
      ls.set('raw', big);
      await ls.flush();
      const fromLs = new sdk.LocalStorageCursorStore('confab-test').get('raw')?.toString();
      return { seq: ack.seq.toString(), got, history, fromIdb, fromLs };
    }, env.broker.url);
    const all = Array.from({ length: 256 }, (_, i) => i);
    assert.equal(result.seq, '1');
    assert.deepEqual(result.got, [all, [...all].reverse()]);
    assert.deepEqual(result.history, [all, [...all].reverse()]);
    assert.equal(result.fromIdb, ((1n << 60n) + 3n).toString());
    assert.equal(result.fromLs, ((1n << 60n) + 3n).toString());
  });
});

test('a page reload resumes from its IndexedDB cursors: only what was missed', { timeout: 60_000 }, async () => {
  await withEnv(async (env) => {
    const writer = Client.start(options(env.broker.url, 'hank', 'node'));
    env.clients.push(writer);
    for (const m of ['a', 'b', 'c']) await writer.publish('resume', m);
    const page = await openPage(env, 'ivy', 'resume');
    await waitJoined(page);
    const read = (url: string): Promise<string[]> =>
      page.evaluate(async (u: string) => {
        const sdk = (await import('/src/index.js' as string)) as typeof import('../src/index.js');
        const store = await sdk.IndexedDbCursorStore.open('confab-resume');
        const client = await sdk.Client.connect({ url: u, token: 'ivy:tab', device: 'tab', cursorStore: store });
        const got: string[] = [];
        // From the cursor + 1 when there is one, else the whole room.
        await client.subscribe('resume', { ...(store.get('resume') === undefined ? { from: 1n } : {}), onEvent: (e) => got.push(`${e.seq}:${new TextDecoder().decode(e.payload)}`) });
        const deadline = Date.now() + 5000;
        let last = -1;
        // Until nothing new for 300 ms.
        while (Date.now() < deadline && got.length !== last) {
          last = got.length;
          await new Promise((r) => setTimeout(r, 300));
        }
        await client.close(); // flushes the store
        await store.close();
        return got;
      }, url);
    assert.deepEqual(await read(env.broker.url), ['1:a', '2:b', '3:c']);
    for (const m of ['d', 'e']) await writer.publish('resume', m);
    await page.reload();
    assert.deepEqual(await read(env.broker.url), ['4:d', '5:e'], 'after the reload: exactly what was missed');
  });
});

test('the broker is killed and restarted mid-stream: each page ends with every message once, in order', { timeout: 180_000 }, async () => {
  await withEnv(
    async (env) => {
      const alice = await openPage(env, 'alice', 'busy');
      const bob = await openPage(env, 'bob', 'busy');
      await Promise.all([waitJoined(alice), waitJoined(bob)]);
      const pub = Client.start(options(env.broker.url, 'erin', 'node', { backoff: { initialMs: 50, maxMs: 300 } }));
      env.clients.push(pub);
      const acks: Promise<unknown>[] = [];
      const total = 240;
      const delivered = async (p: Page): Promise<number> => (await received(p)).length;
      let inFlightAtKill = 0;
      for (let i = 0; i < total; i++) {
        acks.push(pub.enqueue({ room: 'busy', payload: `erin ${i}` }).ack);
        if (i === 80 || i === 160) {
          // Mid-stream: the pages have part of it...
          const deadline = Date.now() + 30_000;
          while ((await delivered(alice)) < i - 40 || (await delivered(bob)) < i - 40) {
            if (Date.now() > deadline) throw new Error('the stream does not flow');
            await sleep(10);
          }
          // ...and a burst of publishes is on its way when the broker dies.
          for (let k = 0; k < 20; k++) acks.push(pub.enqueue({ room: 'busy', payload: `erin ${i} burst ${k}` }).ack);
          inFlightAtKill += pub.outboxSize;
          await env.broker.kill9();
          // Written in the pages while the broker is down: queued, sent after.
          await say(alice, `alice while down ${i}`);
          await say(bob, `bob while down ${i}`);
          await sleep(300);
          await env.broker.restart();
        }
        if (i % 5 === 0) await sleep(5);
      }
      await within(Promise.all(acks), 60_000, 'every publish acknowledged');
      assert.ok(inFlightAtKill > 0, 'publishes were in flight when the broker died');
      const n = total + 40 + 4;
      for (const p of [alice, bob]) {
        await p.waitForFunction((k: number) => (window as unknown as { __demo: { received: string[] } }).__demo.received.length >= k, n, { timeout: 60_000 });
      }
      await sleep(500); // a repeat would show up now
      for (const [name, p] of [['alice', alice], ['bob', bob]] as const) {
        assert.deepEqual(await received(p), range(n), `${name}: every message exactly once, in order`);
        const shown = await lines(p);
        assert.equal(shown.length, n, `${name}: on screen once each`);
        assert.equal(await p.$$eval('#messages li.pending', (els) => els.length), 0, `${name}: nothing left pending`);
      }
      const history = await pub.history('busy');
      assert.equal(history.length, n);
      const texts = history.map((e) => text(e.payload));
      assert.equal(new Set(texts).size, n, 'no message stored twice');
      await alice.screenshot({ path: join(ARTIFACTS, 'demo-after-restart.png') });
    },
    ['rate_limits.enabled=false'],
  );
});

test('a publish in flight across a reconnection is stored once', { timeout: 90_000 }, async () => {
  await withEnv(async (env) => {
    const proxy = await Proxy.start(env.broker.wsPort);
    try {
      const page = await openPage(env, 'fred', 'flight', `ws://127.0.0.1:${proxy.port}/ws`);
      await waitJoined(page);
      const reader = Client.start(options(env.broker.url, 'gina', 'node'));
      env.clients.push(reader);
      const seen: RoomEvent[] = [];
      await reader.subscribe('flight', { from: 1n, onEvent: (e) => seen.push(e) });
      await within(reader.waitConnected(), 10_000, 'reader connected');
      proxy.blackholeDown = true; // the broker's answers to the page are lost
      await page.evaluate(() => {
        const w = window as unknown as { __demo: { client: Client }; __ack: Promise<string> };
        const p = w.__demo.client.enqueue({ room: 'flight', payload: 'in flight' });
        w.__ack = p.ack.then((a) => `${a.seq} ${a.duplicate}`);
      });
      await until(() => seen.length === 1, 15_000, 'stored by the broker');
      proxy.cutAll();
      proxy.blackholeDown = false;
      const ack = await page.evaluate(() => (window as unknown as { __ack: Promise<string> }).__ack);
      assert.equal(ack, '1 true', 'acknowledged after the reconnection as a duplicate of seq 1');
      await say(page, 'after');
      await page.waitForFunction(() => document.querySelectorAll('#messages li[data-seq]').length === 2, undefined, { timeout: 15_000 });
      await sleep(300);
      assert.deepEqual(await received(page), ['1', '2']);
      assert.deepEqual(seen.map((e) => text(e.payload)).slice(0, 2), ['in flight', 'after']);
      assert.equal((await reader.history('flight')).length, 2, 'stored once');
    } finally {
      await proxy.stop();
    }
  });
});

test('a page whose Origin is not allowed is refused', { timeout: 60_000 }, async () => {
  await withEnv(async (env) => {
    // The same page from another origin (another port): not on the list.
    const other = await serveDemo(0);
    try {
      const page = await openPage(env, 'mallory', 'general', env.broker.url, other.url);
      const events = await page.evaluate(async () => {
        const w = window as unknown as { __demo: { client: Client | null } };
        const deadline = Date.now() + 10_000;
        while (w.__demo.client === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        const c = w.__demo.client;
        if (c === null) return ['no client'];
        const seen: string[] = [];
        c.on('connection', (e) => seen.push(e.type === 'disconnected' ? `disconnected:${e.reason.kind}` : e.type));
        while (seen.filter((s) => s.startsWith('disconnected')).length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
        return seen.concat(`state:${c.state.kind}`);
      });
      assert.ok(events.filter((e) => e === 'disconnected:connectFailed').length >= 3, JSON.stringify(events));
      assert.ok(!events.includes('connected') && !events.includes('state:connected'), JSON.stringify(events));
      assert.notEqual(await page.getAttribute('#status', 'data-state'), 'connected');
      // The allowed origin, same broker, connects.
      const ok = await openPage(env, 'alice', 'general');
      await waitJoined(ok);
    } finally {
      await new Promise<void>((r) => other.server.close(() => r()));
    }
  });
});
