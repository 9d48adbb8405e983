/**
 * confab-client: the Confab chat broker's client for browsers and Node
 * 20+, over WebSocket.
 *
 * @module
 */

export * from './codec/index.js';
