/**
 * confab-client: the Confab chat broker's client for browsers and Node
 * 20+, over WebSocket. See docs/web.md in the repository.
 *
 * @module
 */

export * from './codec/index.js';
export { Backoff, type BackoffConfig, type BackoffOptions, backoffConfig } from './backoff.js';
export { Client, Subscription } from './client.js';
export { VERSION } from './options.js';
export { type CursorStore, IndexedDbCursorStore, LocalStorageCursorStore, MemoryCursorStore, type StorageLike } from './cursor.js';
export { Emitter, type Unlisten } from './emitter.js';
export { ClientError, type ClientErrorKind, type DisconnectReason, describeReason } from './errors.js';
export { RoomSync, type SyncAction } from './sync.js';
export { SUBPROTOCOL, type WebSocketConstructor, type WebSocketLike } from './transport.js';
export type {
  ClientEvents,
  ClientOptions,
  ConnectionEvent,
  ConnectionState,
  Message,
  PendingPublish,
  PublishAck,
  RoomEvent,
  SubscribeOptions,
} from './types.js';
export { type MessageView, RoomView } from './view.js';
