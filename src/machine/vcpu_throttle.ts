/**
 * vCPU throttling for migration's auto-converge: keeps every vCPU out of `KVM_RUN` for a share
 * of each period, so a guest that dirties memory faster than the link moves it slows down. It is
 * built only on the vCPU pause/kick primitive ({@linkcode ThrottleTarget}: kick every vCPU out of
 * `KVM_RUN` and wait until they are out, then let them run again), so it carries over to any vCPU
 * threading design that offers that primitive.
 *
 * The period follows QEMU's cpu-throttle (softmmu/cpu-throttle.c): the vCPUs run for one time
 * slice of {@linkcode THROTTLE_TIMESLICE_MS}, then sleep `slice × p / (100 − p)`, so at `p` % they
 * are out of `KVM_RUN` for `p` % of the wall time (99 %: 10 ms of running per second).
 * @module
 */
import { logger } from "../util/log.ts";

const log = logger("vcpu-throttle");

/** The run slice between two throttle sleeps, in ms (QEMU's `CPU_THROTTLE_TIMESLICE_NS`). */
export const THROTTLE_TIMESLICE_MS = 10;
/** The highest throttle percentage (QEMU's `CPU_THROTTLE_PCT_MAX`). */
export const THROTTLE_PCT_MAX = 99;

/** What the throttle stands on: the vCPU pause/kick primitive (e.g. {@linkcode VcpuControl}). */
export interface ThrottleTarget {
  /** Kicks every vCPU out of `KVM_RUN`; resolves once all are out. */
  pause(): Promise<void>;
  /** Lets every vCPU run again. */
  resume(): void;
}

/**
 * How long the vCPUs sleep after each run slice at `percent` %.
 * @param percent 0..{@linkcode THROTTLE_PCT_MAX}
 * @param timesliceMs the run slice
 * @returns the sleep in ms (0 at 0 %)
 * @example
 * ```ts
 * throttleSleepMs(50); // 10: run 10 ms, sleep 10 ms
 * throttleSleepMs(99); // 990
 * ```
 */
export function throttleSleepMs(percent: number, timesliceMs = THROTTLE_TIMESLICE_MS): number {
  const p = Math.min(Math.max(percent, 0), THROTTLE_PCT_MAX) / 100;
  return timesliceMs * p / (1 - p);
}

/**
 * Throttles the vCPUs of one VM. {@linkcode set} takes effect at once; {@linkcode stop} (or
 * `set(0)`) lets them run free again. The owner must stop it before any real pause of the VM.
 *
 * @example
 * ```ts
 * const throttle = new VcpuThrottle(vm.control);
 * throttle.set(20); // the vCPUs run 10 ms, sleep 2.5 ms, …
 * await throttle.stop(); // running at full speed again
 * ```
 */
export class VcpuThrottle {
  readonly #target: ThrottleTarget;
  readonly #timesliceMs: number;
  #percent = 0;
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;

  /**
   * @param target the vCPU pause/kick primitive
   * @param options `timesliceMs`: the run slice @default {THROTTLE_TIMESLICE_MS}
   */
  constructor(target: ThrottleTarget, options: { timesliceMs?: number } = {}) {
    this.#target = target;
    this.#timesliceMs = options.timesliceMs ?? THROTTLE_TIMESLICE_MS;
  }

  /** The throttle in force, 0..{@linkcode THROTTLE_PCT_MAX} (0 = not throttled). */
  get percentage(): number {
    return this.#percent;
  }

  /**
   * Sets the throttle; takes effect at once (a sleep in progress is cut short).
   * @param percent 0 (off) .. {@linkcode THROTTLE_PCT_MAX}; higher values are clamped
   */
  set(percent: number): void {
    const p = Math.min(Math.max(Math.round(percent), 0), THROTTLE_PCT_MAX);
    if (p === this.#percent) return;
    this.#percent = p;
    this.#wake?.();
    if (p > 0 && !this.#loop) {
      this.#loop = this.#run().finally(() => (this.#loop = undefined));
    }
  }

  /** Turns the throttle off; resolves once every vCPU may run again. */
  async stop(): Promise<void> {
    this.set(0);
    await this.#loop;
  }

  /** Sleeps `ms`; a change of the throttle ({@linkcode set}) wakes it early. */
  #sleep(ms: number): Promise<void> {
    const { promise, resolve } = Promise.withResolvers<void>();
    const timer = setTimeout(resolve, ms);
    this.#wake = resolve;
    return promise.finally(() => {
      clearTimeout(timer);
      this.#wake = undefined;
    });
  }

  async #run(): Promise<void> {
    log.info("Throttling vCPUs at %d%%", this.#percent);
    while (this.#percent > 0) {
      const sleepMs = throttleSleepMs(this.#percent, this.#timesliceMs);
      try {
        await this.#target.pause();
      } catch (e) {
        // Leave the vCPUs running rather than half paused; the migration goes on unthrottled.
        log.error("Cannot throttle the vCPUs: %s", (e as Error).message);
        this.#target.resume();
        this.#percent = 0;
        break;
      }
      if (this.#percent > 0) await this.#sleep(sleepMs);
      this.#target.resume();
      if (this.#percent > 0) await this.#sleep(this.#timesliceMs);
    }
    log.info("vCPU throttling off");
  }
}
