/**
 * The WebSocket transport: one binary message carries exactly one Confab
 * frame, as on TCP (docs/protocol.md section 3), over the `confab.v1`
 * subprotocol. The WebSocket implementation is injected: the browser's
 * `WebSocket`, Node 22's global one, or the `ws` package's on Node 20.
 *
 * @module
 */

import { CodecError, DEFAULT_MAX_FRAME_LEN, ErrorCode, type Frame, decodeMessage, encodeFrame, frame } from './codec/index.js';
import type { DisconnectReason } from './errors.js';

/** The WebSocket subprotocol the broker speaks. */
export const SUBPROTOCOL = 'confab.v1';

/**
 * What the SDK needs of a WebSocket: the browser's, Node 22's and the `ws`
 * package's all fit. Handlers are assigned, never read, so their event
 * parameter is typed `never` here and checked where they are written.
 */
export interface WebSocketLike {
  binaryType: string;
  readonly protocol: string;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: never) => void) | null;
  onmessage: ((ev: never) => void) | null;
  onclose: ((ev: never) => void) | null;
  onerror: ((ev: never) => void) | null;
}

/** A WebSocket constructor (`WebSocket`, or `ws`'s `WebSocket`, or a subclass). */
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** What the link reports. */
export interface LinkHandlers {
  open(): void;
  frame(f: Frame): void;
  /** The link is gone; called once. */
  fail(reason: DisconnectReason): void;
}

function ignoreError(): void {}

/** One WebSocket connection carrying frames. */
export class Link {
  private done = false;
  private opened = false;
  /** The receive limit: 1 MiB until `Welcome`, then its `max_frame_len` (or more). */
  maxFrameLen = DEFAULT_MAX_FRAME_LEN;

  constructor(
    private readonly ws: WebSocketLike,
    private readonly h: LinkHandlers,
  ) {
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      if (this.done) return;
      this.opened = true;
      this.h.open();
    };
    ws.onmessage = (ev: { data: unknown }) => this.onMessage(ev.data);
    ws.onclose = (ev: { code?: number; reason?: string }) => {
      const why = `closed (${ev.code ?? '?'}${ev.reason ? ` ${ev.reason}` : ''})`;
      this.finish(this.opened ? { kind: 'io', message: why } : { kind: 'connectFailed', message: `WebSocket ${why}` });
    };
    ws.onerror = (ev: { message?: string; error?: unknown }) => {
      // A close follows; keep the detail for it when there is one (Node's
      // `ws` says "Unexpected server response: 403"; browsers say nothing).
      const detail = typeof ev.message === 'string' ? ev.message : ev.error instanceof Error ? ev.error.message : '';
      if (!this.opened && detail) this.finish({ kind: 'connectFailed', message: detail });
    };
  }

  /** The subprotocol the server selected. */
  protocol(): string {
    return this.ws.protocol;
  }

  /** Whether the link still works. */
  alive(): boolean {
    return !this.done;
  }

  /**
   * Encodes and sends a frame.
   *
   * @throws {CodecError} if it cannot be encoded (nothing is sent then).
   */
  send(f: Frame): void {
    const bytes = encodeFrame(f);
    if (this.done) return;
    try {
      this.ws.send(bytes);
    } catch (e) {
      this.finish({ kind: 'io', message: `send failed: ${String(e)}` });
    }
  }

  /** Sends `goodbye` (if any) and closes; no more reports after this. */
  close(goodbye?: Frame): void {
    if (goodbye !== undefined && !this.done && this.opened) {
      try {
        this.ws.send(encodeFrame(goodbye));
      } catch {
        // Closing anyway.
      }
    }
    this.done = true;
    this.detach();
    try {
      this.ws.close(1000, 'goodbye');
    } catch {
      // Already closed.
    }
  }

  /** Ends the link for a protocol failure: a `Goodbye` with the code, then close. */
  fail(code: number, message: string): void {
    if (this.done) return;
    this.close(frame({ type: 'Goodbye', code, message }));
    this.h.fail({ kind: 'protocol', message });
  }

  private onMessage(data: unknown): void {
    if (this.done) return;
    if (typeof data === 'string') {
      this.fail(ErrorCode.ProtocolViolation, 'the broker sent a text message');
      return;
    }
    let bytes: Uint8Array;
    if (data instanceof ArrayBuffer) bytes = new Uint8Array(data);
    else if (ArrayBuffer.isView(data)) bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    else {
      this.fail(ErrorCode.ProtocolViolation, 'the broker sent a message of an unknown kind');
      return;
    }
    let f: Frame;
    try {
      f = decodeMessage(bytes, this.maxFrameLen);
    } catch (e) {
      if (e instanceof CodecError) {
        const code = e.kind === 'NotOneFrame' ? ErrorCode.MalformedFrame : e.code();
        this.fail(code, e.message);
        return;
      }
      throw e;
    }
    if (f.body.type === 'Extension') return; // 3.3: skipped
    this.h.frame(f);
  }

  private finish(reason: DisconnectReason): void {
    if (this.done) return;
    this.done = true;
    this.detach();
    try {
      this.ws.close();
    } catch {
      // Already closed.
    }
    this.h.fail(reason);
  }

  private detach(): void {
    this.ws.onopen = null;
    this.ws.onmessage = null;
    this.ws.onclose = null;
    // Not null: closing a socket that is still connecting makes Node's `ws`
    // emit an error event afterwards, and an EventEmitter error with no
    // listener is an uncaught exception. A no-op keeps it quiet.
    this.ws.onerror = ignoreError;
  }
}
