/**
 * Client options: defaults filled in and checked once, at construction.
 *
 * @module
 */

import { isValidId } from './codec/index.js';
import { type BackoffConfig, backoffConfig } from './backoff.js';
import { type CursorStore, MemoryCursorStore } from './cursor.js';
import { ClientError } from './errors.js';
import type { WebSocketConstructor } from './transport.js';
import type { ClientOptions } from './types.js';

/** The SDK's version, sent in `Hello.client_name` by default. */
export const VERSION = '0.1.0';

/** {@link ClientOptions} with every default filled in. */
export interface Resolved {
  url: string;
  device: string;
  clientName: string;
  webSocket: WebSocketConstructor;
  cursorStore: CursorStore;
  backoff: BackoffConfig;
  heartbeatMs: number;
  deadLinkTimeoutMs: number;
  connectTimeoutMs: number;
  requestTimeoutMs: number;
  outboundQueueCapacity: number;
  maxOutOfOrder: number;
  historyPageSize: number;
  rateLimitRetries: number;
  getToken: ((error: ClientError) => string | Promise<string>) | undefined;
  random: () => number;
}

/**
 * Fills in the defaults and checks the values.
 *
 * @throws {ClientError} `InvalidConfig`, naming the first bad value.
 */
export function resolveOptions(o: ClientOptions): Resolved {
  const bad = (m: string): never => {
    throw new ClientError('InvalidConfig', m);
  };
  if (typeof o.url !== 'string' || !/^wss?:\/\//.test(o.url)) bad('url must start with ws:// or wss://');
  if (typeof o.token !== 'string' || !o.token.isWellFormed() || new TextEncoder().encode(o.token).length > 0xffff) {
    bad('token must be a string of at most 65535 bytes of UTF-8');
  }
  if (!isValidId(o.device, 64)) bad('device must be 1-64 bytes of UTF-8 without control characters');
  const backoff = backoffConfig(o.backoff);
  if (typeof backoff === 'string') bad(backoff);
  const ws = o.webSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (ws === undefined) bad("no WebSocket here: pass options.webSocket (on Node 20, the `ws` package's WebSocket)");
  const positive = (v: number | undefined, d: number, name: string): number => {
    const x = v ?? d;
    if (!(Number.isFinite(x) && x > 0)) bad(`${name} must be a positive number`);
    return x;
  };
  const r: Resolved = {
    url: o.url,
    device: o.device,
    clientName: o.clientName ?? `confab-client-ts/${VERSION}`,
    webSocket: ws as WebSocketConstructor,
    cursorStore: o.cursorStore ?? new MemoryCursorStore(),
    backoff: backoff as BackoffConfig,
    heartbeatMs: positive(o.heartbeatMs, 15_000, 'heartbeatMs'),
    deadLinkTimeoutMs: positive(o.deadLinkTimeoutMs, 35_000, 'deadLinkTimeoutMs'),
    connectTimeoutMs: positive(o.connectTimeoutMs, 10_000, 'connectTimeoutMs'),
    requestTimeoutMs: positive(o.requestTimeoutMs, 30_000, 'requestTimeoutMs'),
    outboundQueueCapacity: positive(o.outboundQueueCapacity, 1024, 'outboundQueueCapacity'),
    maxOutOfOrder: positive(o.maxOutOfOrder, 4096, 'maxOutOfOrder'),
    historyPageSize: Math.min(0xffff, positive(o.historyPageSize, 500, 'historyPageSize')),
    rateLimitRetries: o.rateLimitRetries ?? 5,
    getToken: o.getToken,
    random: o.random ?? Math.random,
  };
  if (r.deadLinkTimeoutMs <= r.heartbeatMs) bad('deadLinkTimeoutMs must be above heartbeatMs');
  if (!(Number.isInteger(r.rateLimitRetries) && r.rateLimitRetries >= 0)) bad('rateLimitRetries must be an integer >= 0');
  return r;
}
