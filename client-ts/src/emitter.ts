/**
 * A small typed event emitter. Listeners never break the SDK: one that
 * throws is reported to `console.error` and the others still run.
 *
 * @module
 */

/** Removes the listener it was returned for. */
export type Unlisten = () => void;

/** Events by name, each with its payload type. */
export class Emitter<M extends object> {
  private readonly listeners = new Map<keyof M, Set<(v: never) => void>>();

  /** Calls `listener` on every `event` from now on. */
  on<K extends keyof M>(event: K, listener: (value: M[K]) => void): Unlisten {
    let set = this.listeners.get(event);
    if (set === undefined) {
      set = new Set();
      this.listeners.set(event, set);
    }
    set.add(listener as (v: never) => void);
    return () => {
      set.delete(listener as (v: never) => void);
    };
  }

  /** Calls `listener` on the next `event` only. */
  once<K extends keyof M>(event: K, listener: (value: M[K]) => void): Unlisten {
    const off = this.on(event, (v) => {
      off();
      listener(v);
    });
    return off;
  }

  /** Calls every listener of `event`. */
  emit<K extends keyof M>(event: K, value: M[K]): void {
    const set = this.listeners.get(event);
    if (set === undefined) return;
    for (const l of [...set]) {
      try {
        (l as (v: M[K]) => void)(value);
      } catch (e) {
        console.error(`confab-client: a "${String(event)}" listener threw`, e);
      }
    }
  }
}
