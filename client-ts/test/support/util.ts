// Small helpers shared by the tests: bounded waiting, and a WebSocket
// constructor for Node 20 (the `ws` package), optionally with an Origin.

import { WebSocket } from 'ws';

import type { ClientOptions, WebSocketConstructor } from '../../src/index.js';

/** `ws`'s WebSocket, usable as `ClientOptions.webSocket`. */
export const NodeWebSocket: WebSocketConstructor = WebSocket;

/** A WebSocket constructor that sends this `Origin` header (as a browser page would). */
export function withOrigin(origin: string): WebSocketConstructor {
  return class extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols, { origin });
    }
  };
}

/** Waits until `cond()` holds, polling; fails after `ms` with `what`. */
export async function until(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(10);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** A promise that fails after `ms`. */
export async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let t: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  try {
    return await Promise.race([p, timeout]);
  } finally {
    clearTimeout(t);
  }
}

/** Options for a test client: fast backoff and heartbeats. */
export function options(url: string, user: string, device: string, more: Partial<ClientOptions> = {}): ClientOptions {
  return {
    url,
    token: `${user}:${device}`,
    device,
    webSocket: NodeWebSocket,
    backoff: { initialMs: 50, maxMs: 500 },
    connectTimeoutMs: 3000,
    requestTimeoutMs: 10_000,
    ...more,
  };
}

export const text = (b: Uint8Array): string => new TextDecoder().decode(b);
