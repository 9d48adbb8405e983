/**
 * What the outbox and the subscriptions need from the client that owns
 * them: the current connection, request ids, events.
 *
 * @module
 */

import type { Frame } from './codec/index.js';
import type { ClientError } from './errors.js';
import type { Session } from './session.js';
import type { ConnectionEvent } from './types.js';

/** The client, as its parts see it. */
export interface Host {
  /** The current connection, if any. */
  session(): Session | null;
  /** The next request id (nonzero, wrapping). */
  nextRid(): number;
  /** Reports a connection event. */
  emit(event: ConnectionEvent): void;
  /** Sends a frame on `s`; an encoding failure comes back as an error. */
  send(s: Session, f: Frame): ClientError | null;
}
