/**
 * The message view of a room: edits, deletes and reactions folded into the
 * messages they refer to (a port of the Rust SDK's `RoomView`). Pure and
 * order-independent: feeding it live entries, a history read backwards, or
 * the same entry twice gives the same view.
 *
 * - the edit with the highest sequence wins; edits by anyone but the
 *   original sender are ignored;
 * - a delete is final (no content, later edits ignored); deleting a
 *   reaction entry withdraws that reaction;
 * - an edit or reaction whose target has not arrived waits for it.
 *
 * @module
 */

import { MessageKind, type Seq } from './codec/index.js';
import type { RoomEvent } from './types.js';

const EMPTY = new Uint8Array();
const DECODER = new TextDecoder();

/** One message as a chat screen shows it. */
export interface MessageView {
  seq: Seq;
  sender: string;
  timestampUs: bigint;
  kind: number;
  replyTo: Seq | null;
  thread: Seq | null;
  /** The latest edit's payload, or the original; empty once deleted. */
  content: Uint8Array;
  /** The sequence of the edit shown, if any. */
  edited: Seq | null;
  deleted: boolean;
  /** Each reaction (its payload as UTF-8 text) with the users who gave it (a user counts once). */
  reactions: Map<string, Set<string>>;
}

interface Msg {
  view: MessageView;
  original: Uint8Array;
  /** Reaction entries by their sequence: [user, reaction]. */
  reactionEntries: Map<Seq, [string, string]>;
}

/** Folds a room's entries into its messages. */
export class RoomView {
  private readonly messages = new Map<Seq, Msg>();
  private readonly deleted = new Set<Seq>();
  private readonly reactionTargets = new Map<Seq, Seq>();
  private readonly waiting = new Map<Seq, RoomEvent[]>();

  /** Folds one entry in. */
  apply(e: RoomEvent): void {
    if (e.kind === MessageKind.EDIT || e.kind === MessageKind.REACTION) {
      const target = e.refersTo;
      if (target === null) return;
      if (e.kind === MessageKind.REACTION) {
        if (this.deleted.has(e.seq)) return;
        this.reactionTargets.set(e.seq, target);
      }
      const msg = this.messages.get(target);
      if (msg !== undefined) {
        applyTo(msg, e);
      } else {
        const w = this.waiting.get(target) ?? [];
        if (!w.some((x) => x.seq === e.seq)) w.push(e);
        this.waiting.set(target, w);
      }
    } else if (e.kind === MessageKind.DELETE) {
      const target = e.refersTo;
      if (target === null) return;
      this.deleted.add(target);
      const msg = this.messages.get(target);
      if (msg !== undefined) {
        msg.view.deleted = true;
        refresh(msg, null);
      }
      const reacted = this.reactionTargets.get(target);
      if (reacted !== undefined) {
        const m = this.messages.get(reacted);
        if (m !== undefined) {
          m.reactionEntries.delete(target);
          recount(m);
        }
      }
      for (const [k, w] of this.waiting) this.waiting.set(k, w.filter((x) => x.seq !== target));
    } else if (e.kind === MessageKind.MESSAGE || e.kind >= MessageKind.FIRST_CUSTOM) {
      if (this.messages.has(e.seq)) return;
      const msg: Msg = {
        view: {
          seq: e.seq,
          sender: e.sender,
          timestampUs: e.timestampUs,
          kind: e.kind,
          replyTo: e.refersTo,
          thread: e.thread,
          content: e.payload,
          edited: null,
          deleted: this.deleted.has(e.seq),
          reactions: new Map(),
        },
        original: e.payload,
        reactionEntries: new Map(),
      };
      refresh(msg, null);
      for (const op of this.waiting.get(e.seq) ?? []) applyTo(msg, op);
      this.waiting.delete(e.seq);
      this.messages.set(e.seq, msg);
    }
  }

  /** Folds many entries in. */
  extend(events: Iterable<RoomEvent>): void {
    for (const e of events) this.apply(e);
  }

  /** The message at `seq`, if it arrived. */
  get(seq: Seq): MessageView | undefined {
    return this.messages.get(seq)?.view;
  }

  /** Every message, in sequence order. */
  list(): MessageView[] {
    return [...this.messages.values()].map((m) => m.view).sort((a, b) => (a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0));
  }

  /** How many messages the view holds. */
  get size(): number {
    return this.messages.size;
  }
}

function refresh(msg: Msg, edit: [Seq, Uint8Array] | null): void {
  const v = msg.view;
  if (v.deleted) {
    // Final, whatever the order: no content, no edit shown, no reactions.
    v.content = EMPTY;
    v.edited = null;
    recount(msg);
    return;
  }
  if (edit !== null) {
    if (v.edited === null || edit[0] > v.edited) {
      v.edited = edit[0];
      v.content = edit[1];
    }
  } else if (v.edited === null) {
    v.content = msg.original;
  }
}

function recount(msg: Msg): void {
  const out = new Map<string, Set<string>>();
  if (!msg.view.deleted) {
    for (const [user, reaction] of msg.reactionEntries.values()) {
      const users = out.get(reaction) ?? new Set<string>();
      users.add(user);
      out.set(reaction, users);
    }
  }
  msg.view.reactions = out;
}

/** Applies an edit or a reaction to its (present) target. */
function applyTo(msg: Msg, op: RoomEvent): void {
  if (op.kind === MessageKind.EDIT && op.sender === msg.view.sender) {
    refresh(msg, [op.seq, op.payload]);
  } else if (op.kind === MessageKind.REACTION) {
    msg.reactionEntries.set(op.seq, [op.sender, DECODER.decode(op.payload)]);
    recount(msg);
  }
}
