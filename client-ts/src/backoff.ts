/**
 * Reconnection delays: exponential backoff with full jitter. After the
 * n-th consecutive failure (from 0) the delay is drawn uniformly from
 * `0..=min(max, initial * multiplier^n)`, which spreads the reconnects of
 * many clients that lost the same broker at the same instant.
 *
 * @module
 */

/** Backoff settings. */
export interface BackoffOptions {
  /** Upper bound of the first delay, in ms. Default 200. */
  initialMs?: number;
  /** Cap on every delay's upper bound, in ms. Default 30000. */
  maxMs?: number;
  /** Growth factor of the bound per failed attempt (at least 1). Default 2. */
  multiplier?: number;
  /** Give up after this many failures in a row. Default: never. */
  maxAttempts?: number;
}

/** Resolved backoff settings. */
export interface BackoffConfig {
  initialMs: number;
  maxMs: number;
  multiplier: number;
  maxAttempts: number | null;
}

/** Fills in defaults and checks the values; returns a message naming the first bad one. */
export function backoffConfig(o: BackoffOptions = {}): BackoffConfig | string {
  const c: BackoffConfig = {
    initialMs: o.initialMs ?? 200,
    maxMs: o.maxMs ?? 30_000,
    multiplier: o.multiplier ?? 2,
    maxAttempts: o.maxAttempts ?? null,
  };
  if (!(c.initialMs > 0)) return 'backoff.initialMs must be above zero';
  if (!(c.maxMs >= c.initialMs)) return 'backoff.maxMs must be at least backoff.initialMs';
  if (!(Number.isFinite(c.multiplier) && c.multiplier >= 1)) return 'backoff.multiplier must be a finite number >= 1';
  if (c.maxAttempts !== null && !(Number.isInteger(c.maxAttempts) && c.maxAttempts >= 1)) {
    return 'backoff.maxAttempts must be an integer >= 1 when set';
  }
  return c;
}

/** One reconnection sequence: how many attempts failed in a row. */
export class Backoff {
  private failures = 0;

  /** `random` returns a number in [0, 1), like `Math.random`. */
  constructor(
    private readonly config: BackoffConfig,
    private readonly random: () => number = Math.random,
  ) {}

  /** Consecutive failures since the last reset. */
  failureCount(): number {
    return this.failures;
  }

  /** Starts over after a success. */
  reset(): void {
    this.failures = 0;
  }

  /** The bound of the delay after `failures` consecutive failures (0-based). */
  ceiling(failures: number): number {
    const bound = this.config.initialMs * this.config.multiplier ** failures;
    return Number.isFinite(bound) ? Math.min(bound, this.config.maxMs) : this.config.maxMs;
  }

  /** Records a failure; the delay before the next attempt, or `null` once `maxAttempts` failed in a row. */
  nextDelay(): number | null {
    const n = this.failures;
    this.failures += 1;
    if (this.config.maxAttempts !== null && this.failures >= this.config.maxAttempts) return null;
    return Math.floor(this.random() * (this.ceiling(n) + 1));
  }
}
