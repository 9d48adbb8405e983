/**
 * The SDK's errors: one class, told apart by `kind`.
 *
 * @module
 */

import { errorCodeName } from './codec/index.js';

/** What kind of failure a {@link ClientError} is. */
export type ClientErrorKind =
  /** The broker refused the request (`code`, `retryAfterMs`). */
  | 'Server'
  /** The broker refused the request under a rate limit; wait `retryAfterMs`. */
  | 'RateLimited'
  /** The outbound queue (or the queue of requests waiting for a connection) is full. */
  | 'QueueFull'
  /** No reply within `requestTimeoutMs`. */
  | 'Timeout'
  /** The connection dropped with a request that changes something in flight; it may have been carried out. */
  | 'ConnectionLost'
  /** Typing while offline (stale typing is worthless). */
  | 'NotConnected'
  /** The client was closed. */
  | 'Closed'
  /** Token refused or expired, version unsupported, device connected elsewhere: the client stopped. */
  | 'Fatal'
  /** `backoff.maxAttempts` reached. */
  | 'ReconnectFailed'
  /** Larger than the broker allows; not sent. */
  | 'PayloadTooLarge'
  /** The room already has a subscription on this client. */
  | 'AlreadySubscribed'
  /** A bad option or argument. */
  | 'InvalidConfig'
  /** A value could not be encoded, or the broker sent bytes that cannot be decoded. */
  | 'Codec'
  /** The broker answered with a frame that does not answer the request. */
  | 'UnexpectedReply';

/** Every failure of the SDK. */
export class ClientError extends Error {
  readonly kind: ClientErrorKind;
  /** The protocol error code, for `Server`, `RateLimited` and `Fatal`. */
  readonly code: number | undefined;
  /** For `RateLimited`: how long to wait before retrying. */
  readonly retryAfterMs: number | undefined;

  constructor(kind: ClientErrorKind, message: string, code?: number, retryAfterMs?: number) {
    super(message);
    this.name = 'ClientError';
    this.kind = kind;
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }

  /** The error for a broker `Error` frame. */
  static server(code: number, message: string, retryAfterMs: number): ClientError {
    const text = `${errorCodeName(code)}: ${message}`;
    return code === 30
      ? new ClientError('RateLimited', text, code, retryAfterMs)
      : new ClientError('Server', text, code, retryAfterMs);
  }
}

/** Why a connection ended or an attempt failed. */
export type DisconnectReason =
  /** Transport error, or closed without a `Goodbye`. */
  | { kind: 'io'; message: string }
  /** The broker said why (`ShuttingDown`, `SlowConsumer`, a refused `Hello`, ...). */
  | { kind: 'goodbye'; code: number; message: string }
  /** Nothing received for `deadLinkTimeoutMs`. */
  | { kind: 'heartbeatTimeout' }
  /** The broker broke the protocol (undecodable bytes, a text message, ...). */
  | { kind: 'protocol'; message: string }
  /** The WebSocket could not be opened (refused, HTTP error such as 403, timeout). */
  | { kind: 'connectFailed'; message: string }
  /** The client closed it. */
  | { kind: 'closed' };

/** A one-line description of a reason. */
export function describeReason(r: DisconnectReason): string {
  switch (r.kind) {
    case 'io':
    case 'protocol':
    case 'connectFailed':
      return `${r.kind}: ${r.message}`;
    case 'goodbye':
      return `goodbye ${errorCodeName(r.code)}${r.message ? `: ${r.message}` : ''}`;
    case 'heartbeatTimeout':
      return 'nothing received from the broker in time';
    case 'closed':
      return 'closed';
  }
}
