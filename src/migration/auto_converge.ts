/**
 * When to throttle the vCPUs (capability `auto-converge`), with QEMU's parameters and meaning
 * (migration/ram.c, `migration_trigger_throttle` and `mig_throttle_guest_down`): after a dirty
 * sync, if the bytes dirtied since the previous sync exceed `throttle-trigger-threshold` % of the
 * bytes sent in that time, the pass did not shrink the dirty set enough, so the throttle starts at
 * `cpu-throttle-initial` or rises by `cpu-throttle-increment` (with `cpu-throttle-tailslow`: only
 * as far as the measured ratio needs), never above `max-cpu-throttle`.
 *
 * One difference from QEMU: QEMU waits for two such syncs at least a second apart before each
 * step; ferry steps at every sync after a pass, since a pass over a slow link already takes long.
 * @module
 */
import type { MigrationParameters } from "./parameters.ts";

/** The throttle parameters {@linkcode AutoConverge} reads. */
export type ThrottleParameters = Pick<
  MigrationParameters,
  | "cpu-throttle-initial"
  | "cpu-throttle-increment"
  | "cpu-throttle-tailslow"
  | "max-cpu-throttle"
  | "throttle-trigger-threshold"
>;

/**
 * The throttle decision of one migration.
 *
 * @example
 * ```ts
 * const ac = new AutoConverge();
 * ac.afterSync(32 << 20, 30 << 20, DEFAULT_MIGRATION_PARAMETERS); // 20
 * ac.afterSync(32 << 20, 30 << 20, DEFAULT_MIGRATION_PARAMETERS); // 30
 * ac.afterSync(1 << 20, 30 << 20, DEFAULT_MIGRATION_PARAMETERS); // 30: the pass shrank the set
 * ```
 */
export class AutoConverge {
  #percent = 0;

  /** The throttle decided so far in percent (0 = none). */
  get percentage(): number {
    return this.#percent;
  }

  /**
   * Decides after a dirty sync.
   * @param dirtiedBytes bytes dirtied since the previous sync (the dirty set just read)
   * @param sentBytes bytes sent since the previous sync
   * @param p the parameters in force now
   * @returns the throttle in percent
   */
  afterSync(dirtiedBytes: number, sentBytes: number, p: Readonly<ThrottleParameters>): number {
    const thresholdBytes = sentBytes * p["throttle-trigger-threshold"] / 100;
    if (dirtiedBytes > thresholdBytes) {
      if (this.#percent === 0) this.#percent = p["cpu-throttle-initial"];
      else {
        let inc = p["cpu-throttle-increment"];
        if (p["cpu-throttle-tailslow"]) {
          // The share of CPU the guest may keep so that it dirties no more than the threshold.
          const cpuNow = 100 - this.#percent;
          const cpuIdeal = Math.floor(cpuNow * thresholdBytes / dirtiedBytes);
          inc = Math.min(cpuNow - cpuIdeal, inc);
        }
        this.#percent += inc;
      }
    }
    return this.clamp(p);
  }

  /**
   * Applies a lowered `max-cpu-throttle` at once.
   * @returns the throttle in percent
   */
  clamp(p: Readonly<ThrottleParameters>): number {
    this.#percent = Math.min(this.#percent, p["max-cpu-throttle"]);
    return this.#percent;
  }

  /** Back to no throttle (the migration ended or left the dirty passes). */
  reset(): void {
    this.#percent = 0;
  }
}
