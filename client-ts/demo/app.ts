// The demo chat page: pick a name and a room, see the last messages, send,
// see who is typing and how far the others have read. Everything that can
// go wrong with the connection (a broker restart included) is the SDK's
// business: the page only renders what the SDK hands it, once each.

import { Client, type ConnectionState, MessageKind, type RoomEvent, type Seq } from '../src/index.js';

const params = new URLSearchParams(location.search);
const BROKER = params.get('broker') ?? 'ws://127.0.0.1:7402/ws';
const HISTORY = 50;

const $ = <T extends HTMLElement>(id: string): T => {
  const el = document.getElementById(id);
  if (el === null) throw new Error(`#${id} is missing`);
  return el as T;
};

/** A device id per browser tab, kept across reloads of the tab. */
function deviceId(): string {
  let d = sessionStorage.getItem('confab.demo.device');
  if (d === null) {
    d = `web-${Math.random().toString(36).slice(2, 10)}`;
    sessionStorage.setItem('confab.demo.device', d);
  }
  return d;
}

/** What the page received from the SDK, in order, for the tests to check (never deduplicated here). */
interface DemoState {
  client: Client | null;
  me: string;
  room: string;
  received: string[];
  historyLoaded: boolean;
}

const demo: DemoState = { client: null, me: '', room: '', received: [], historyLoaded: false };
(window as unknown as { __demo: DemoState }).__demo = demo;

const decoder = new TextDecoder();
const list = $<HTMLOListElement>('messages');
const pending = new Map<string, HTMLLIElement>();
const readBy = new Map<string, Seq>();

function showState(s: ConnectionState): void {
  const el = $('status');
  el.dataset['state'] = s.kind;
  el.textContent = s.kind === 'connected' ? `connected as ${s.user}` : s.kind === 'reconnecting' ? 'reconnecting…' : s.kind;
}

function line(e: RoomEvent): HTMLLIElement {
  const li = document.createElement('li');
  li.dataset['seq'] = e.seq.toString();
  li.dataset['sender'] = e.sender;
  if (e.sender === demo.me) li.classList.add('mine');
  const seq = document.createElement('span');
  seq.className = 'seq';
  seq.textContent = `#${e.seq}`;
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = e.sender;
  const body = document.createElement('span');
  body.className = 'body';
  body.textContent = e.kind === MessageKind.MESSAGE ? decoder.decode(e.payload) : `(kind ${e.kind}) ${decoder.decode(e.payload)}`;
  li.append(seq, who, body);
  return li;
}

function render(e: RoomEvent): void {
  demo.received.push(e.seq.toString());
  const mine = pending.get(e.clientMsgId.toString());
  if (e.sender === demo.me && mine !== undefined) {
    mine.remove();
    pending.delete(e.clientMsgId.toString());
  }
  const li = line(e);
  const firstPending = list.querySelector('li.pending');
  list.insertBefore(li, firstPending);
  list.scrollTop = list.scrollHeight;
  scheduleRead(e.seq);
  showReads();
}

let readTimer: ReturnType<typeof setTimeout> | undefined;
let readUpTo: Seq = 0n;
function scheduleRead(seq: Seq): void {
  if (seq > readUpTo) readUpTo = seq;
  if (document.visibilityState !== 'visible' || readTimer !== undefined) return;
  readTimer = setTimeout(() => {
    readTimer = undefined;
    void demo.client?.markRead(demo.room, readUpTo).catch(() => undefined);
  }, 300);
}
document.addEventListener('visibilitychange', () => scheduleRead(readUpTo));

function showReads(): void {
  for (const el of list.querySelectorAll('.read')) el.remove();
  const byLine = new Map<string, string[]>();
  for (const [user, seq] of readBy) {
    if (user === demo.me) continue;
    const names = byLine.get(seq.toString()) ?? [];
    names.push(user);
    byLine.set(seq.toString(), names);
  }
  for (const [seq, users] of byLine) {
    const li = list.querySelector(`li[data-seq="${seq}"]`);
    if (li === null) continue;
    const span = document.createElement('span');
    span.className = 'read';
    span.textContent = `read by ${users.sort().join(', ')}`;
    li.append(span);
  }
}

let typingSent = 0;
let typingStop: ReturnType<typeof setTimeout> | undefined;
function typed(): void {
  const c = demo.client;
  if (c === null) return;
  const now = Date.now();
  if (now - typingSent > 3000) {
    typingSent = now;
    void c.typing(demo.room, true).catch(() => undefined);
  }
  if (typingStop !== undefined) clearTimeout(typingStop);
  typingStop = setTimeout(stopTyping, 4000);
}
function stopTyping(): void {
  if (typingStop !== undefined) clearTimeout(typingStop);
  typingStop = undefined;
  if (typingSent === 0) return;
  typingSent = 0;
  void demo.client?.typing(demo.room, false).catch(() => undefined);
}

function send(text: string): void {
  const c = demo.client;
  if (c === null || text.trim() === '') return;
  stopTyping();
  const p = c.enqueue({ room: demo.room, payload: text });
  const li = document.createElement('li');
  li.className = 'pending mine';
  li.dataset['pending'] = p.clientMsgId.toString();
  li.textContent = `${demo.me}: ${text} (sending…)`;
  list.append(li);
  pending.set(p.clientMsgId.toString(), li);
  list.scrollTop = list.scrollHeight;
  p.ack.catch((e: unknown) => {
    li.textContent = `${demo.me}: ${text} (not sent: ${e instanceof Error ? e.message : String(e)})`;
  });
}

async function join(name: string, room: string): Promise<void> {
  const device = deviceId();
  const client = Client.start({ url: BROKER, token: `${name}:${device}`, device, clientName: 'confab-demo/0.1', backoff: { initialMs: 200, maxMs: 3000 } });
  demo.client = client;
  demo.me = name;
  demo.room = room;
  client.on('state', showState);
  client.on('typing', (t) => {
    if (t.room !== room) return;
    const others = t.users.filter((u) => u !== name);
    $('typing').textContent = others.length === 0 ? '' : `${others.join(', ')} ${others.length === 1 ? 'is' : 'are'} typing…`;
  });
  client.on('receipts', (r) => {
    if (r.room !== room) return;
    for (const e of r.entries) {
      if (e.kind !== 'Read') continue;
      const old = readBy.get(e.user);
      if (old === undefined || e.seq > old) readBy.set(e.user, e.seq);
    }
    showReads();
  });
  $('title').textContent = `#${room}`;
  $('join').hidden = true;
  $('chat').hidden = false;
  // The last messages, then the room from the one after them: nothing
  // posted in between is missed (docs/web.md, "Opening a room").
  let head = 0n;
  for (;;) {
    try {
      const page = await client.historyPage(room, 'Before', 0n, HISTORY);
      for (const rec of page.events) render({ ...rec, room, replayed: true });
      head = page.events[page.events.length - 1]?.seq ?? 0n;
      break;
    } catch (e) {
      if (!(e instanceof Error && 'kind' in e && e.kind === 'Timeout')) throw e;
    }
  }
  demo.historyLoaded = true;
  await client.subscribe(room, { from: head + 1n, onEvent: render });
  $<HTMLInputElement>('text').focus();
}

$<HTMLFormElement>('join').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const name = $<HTMLInputElement>('name').value.trim();
  const room = $<HTMLInputElement>('room').value.trim();
  void join(name, room).catch((e: unknown) => {
    $('status').textContent = `error: ${e instanceof Error ? e.message : String(e)}`;
  });
});

$<HTMLFormElement>('send').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const input = $<HTMLInputElement>('text');
  send(input.value);
  input.value = '';
});
$<HTMLInputElement>('text').addEventListener('input', typed);

const preset = params.get('name');
if (preset !== null) $<HTMLInputElement>('name').value = preset;
const presetRoom = params.get('room');
if (presetRoom !== null) $<HTMLInputElement>('room').value = presetRoom;
