/**
 * How long a queue pass polls for more work before the I/O Worker sleeps, adapted as QEMU's
 * `aio_poll` adapts its `poll_ns`: the time the loop stayed idle between two passes is the evidence.
 * When the next event came after the current poll time but within the bound, polling longer would
 * have caught it: the time grows (from {@linkcode POLL_START_US}, doubling, up to the bound). When it
 * came after the bound, polling was wasted: the time drops to 0. So a driver that refills at once
 * (a page-cache write completing in microseconds, a guest streaming frames) is polled for, and a
 * disk slower than the bound (O_DIRECT) costs no spinning.
 * @module
 */

/** The first poll time after it dropped to 0 (QEMU's 4 µs). */
export const POLL_START_US = 4;

/** The adaptive poll time of one queue; see the module doc. */
export class AdaptivePoll {
  /** The bound in µs (0: never poll). */
  readonly maxUs: number;
  /** The poll time of the next pass, in µs. */
  us: number;
  readonly #now: () => number;
  /** When the loop went idle (ms on the `now` clock), or -1. */
  #idleSince = -1;

  /** @param now a millisecond clock (default `performance.now`; tests pass their own) */
  constructor(maxUs: number, now: () => number = () => performance.now()) {
    this.maxUs = this.us = maxUs;
    this.#now = now;
  }

  /** An event woke the loop: adapts {@linkcode us} to how long it was idle. */
  wake(): void {
    if (this.#idleSince < 0) return;
    const idleUs = (this.#now() - this.#idleSince) * 1000;
    this.#idleSince = -1;
    if (idleUs > this.maxUs) this.us = 0;
    else if (idleUs > this.us) this.us = Math.min(this.maxUs, this.us === 0 ? POLL_START_US : 2 * this.us);
  }

  /**
   * A poll of {@linkcode us} found what it waited for: the time grows (doubling, up to the bound).
   * For a poll whose misses are judged by {@linkcode miss}, not by the idle time after them.
   */
  hit(): void {
    if (this.us > 0) this.us = Math.min(this.maxUs, 2 * this.us);
  }

  /**
   * A poll of {@linkcode us} ran out: the time halves, to 0 below {@linkcode POLL_START_US}. A
   * miss says only that this one poll was too short: the idle time after it also holds the wake-up
   * latency of the loop's thread, which on a busy host exceeds the bound often, so it is not used
   * (from 0, {@linkcode idle} and {@linkcode wake} grow the time again).
   */
  miss(): void {
    const half = this.us / 2;
    this.us = half < POLL_START_US ? 0 : half;
  }

  /** The pass ended and the loop goes idle. */
  idle(): void {
    if (this.maxUs > 0) this.#idleSince = this.#now();
  }
}
