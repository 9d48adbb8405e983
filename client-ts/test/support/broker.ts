// Starts the real broker binary for a test: its own temporary data
// directory, free loopback ports, WebSocket on; kill -9 and restart on the
// same directory and port. The binary comes from CONFAB_BIN (default: the
// release build in $CARGO_TARGET_DIR, else ~/.cache/confab/target).

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';

export const CONFAB_BIN =
  process.env['CONFAB_BIN'] ??
  join(process.env['CARGO_TARGET_DIR'] ?? join(homedir(), '.cache', 'confab', 'target'), 'release', 'confab');

/** A free TCP port on 127.0.0.1 (bound and released; the OS does not hand it out again at once). */
export async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const addr = srv.address();
  await new Promise<void>((r) => srv.close(() => r()));
  if (addr === null || typeof addr === 'string') throw new Error('no port');
  return addr.port;
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ host: '127.0.0.1', port });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export interface BrokerOptions {
  /** Origins allowed to open WebSockets (`websocket.allowed_origins`). */
  allowedOrigins?: string[];
  /** More `--set KEY=VALUE` settings. */
  settings?: string[];
}

/** A running broker process. */
export class Broker {
  private child: ChildProcess | null = null;
  private log = '';
  readonly dataDir: string;

  private constructor(
    readonly wsPort: number,
    private readonly o: BrokerOptions,
  ) {
    this.dataDir = mkdtempSync(join(tmpdir(), 'confab-ts-'));
  }

  /** Starts a broker and waits until its WebSocket port accepts connections. */
  static async start(o: BrokerOptions = {}): Promise<Broker> {
    if (!existsSync(CONFAB_BIN)) throw new Error(`no broker binary at ${CONFAB_BIN} (set CONFAB_BIN)`);
    const b = new Broker(await freePort(), o);
    try {
      await b.spawn();
    } catch (e) {
      rmSync(b.dataDir, { recursive: true, force: true });
      throw e;
    }
    return b;
  }

  /** `ws://127.0.0.1:PORT/ws`. */
  get url(): string {
    return `ws://127.0.0.1:${this.wsPort}/ws`;
  }

  /** What the broker printed (for failure messages). */
  output(): string {
    return this.log.slice(-4000);
  }

  private async spawn(): Promise<void> {
    const origins = this.o.allowedOrigins ?? [];
    const args = [
      'serve',
      '--data-dir',
      this.dataDir,
      '--listen',
      '127.0.0.1:0',
      '--listen-quic',
      'off',
      '--metrics-listen',
      'off',
      '--log-level',
      'warn',
      '--set',
      `listen.websocket=127.0.0.1:${this.wsPort}`,
      '--set',
      `websocket.allowed_origins=[${origins.map((x) => JSON.stringify(x)).join(',')}]`,
      ...(this.o.settings ?? []).flatMap((s) => ['--set', s]),
    ];
    // The broker reads CONFAB_* variables as settings (CONFAB_BIN would be
    // an unknown key `bin`): the child gets none of the test's.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('CONFAB_')));
    const child = spawn(CONFAB_BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    this.child = child;
    child.stdout?.on('data', (d: Buffer) => (this.log += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (this.log += d.toString()));
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`the broker exited with ${child.exitCode}:\n${this.output()}`);
      if (await canConnect(this.wsPort)) return;
      if (Date.now() > deadline) {
        child.kill('SIGKILL');
        throw new Error(`the broker did not listen on ${this.wsPort} within 20 s:\n${this.output()}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** `kill -9`, and wait for the process to be gone. */
  async kill9(): Promise<void> {
    const c = this.child;
    this.child = null;
    if (c === null || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGKILL');
    await gone;
  }

  /** Starts the broker again on the same data directory and port. */
  async restart(): Promise<void> {
    await this.kill9();
    await this.spawn();
  }

  /** Stops the broker and removes its data. */
  async stop(): Promise<void> {
    await this.kill9();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
