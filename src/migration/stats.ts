/**
 * Migration statistics in QEMU's `query-migrate` names (`total-time`, `ram.normal-bytes`, …), kept
 * by whichever side runs and read by QMP through {@linkcode MigrationStatusTracker.queryMigrate}.
 * @module
 */
/** QMP `MigrationStatus` values ferry uses (transitions: status.ts). */
export type MigrationStatus =
  | "none"
  | "setup"
  | "active"
  | "postcopy-active"
  | "postcopy-paused"
  | "completed"
  | "failed"
  | "canceled";

/** The `ram` member of `query-migrate`. Counts are pages of 4 KiB, sizes bytes, rates per second. */
export interface RamInfo {
  /** Bytes sent (source) or received (destination), framing included. */
  transferred: number;
  /**
   * Bytes still to send (source): the dirty set of the last sync (every page during the first
   * pass) minus the pages sent since.
   */
  remaining: number;
  /** Guest RAM size in bytes. */
  total: number;
  /** Zero pages, sent as runs without bytes. */
  duplicate: number;
  /** Pages sent with their bytes. */
  normal: number;
  /** `normal × 4096`. */
  "normal-bytes": number;
  /** Pages dirtied per second, measured between the last two syncs. */
  "dirty-pages-rate": number;
  /** Measured throughput of the last pass in megabits per second. */
  mbps: number;
  /** Number of dirty-log syncs so far. */
  "dirty-sync-count": number;
  /** Pages per second sent in the last pass. */
  "pages-per-second": number;
  /**
   * Post-copy page requests: received from the destination (source) or sent to the source
   * (destination). QEMU's `ram.postcopy-requests`.
   */
  "postcopy-requests": number;
}

/** The `query-migrate` reply. Times are milliseconds. */
export interface MigrationInfo {
  status: MigrationStatus;
  /** Since `migrate` (or since the incoming connection); final once completed or failed. */
  "total-time"?: number;
  /** From `migrate` to the first RAM byte (status `active`). */
  "setup-time"?: number;
  /** From pausing the source to the destination confirming it runs (once completed). */
  downtime?: number;
  /** While active: remaining bytes / measured bandwidth. */
  "expected-downtime"?: number;
  ram?: RamInfo;
  /**
   * With capability `auto-converge` (source): the vCPU throttle in force in percent, 0 when none
   * (and again 0 once the migration ended: the guest runs at full speed).
   */
  "cpu-throttle-percentage"?: number;
  /** Why the migration failed (or, in `postcopy-paused`, why it stopped). */
  "error-desc"?: string;
  /**
   * Destination, with capability `postcopy-blocktime`: milliseconds during which every vCPU
   * waited for a page from the source at once (QEMU's name and meaning).
   */
  "postcopy-blocktime"?: number;
  /** Destination, with `postcopy-blocktime`: per vCPU, milliseconds it waited for pages. */
  "postcopy-vcpu-blocktime"?: number[];
  /**
   * Post-copy: mean time from a page fault to its page landing, nanoseconds (QEMU 10's
   * `postcopy-latency`; QEMU 7.2/8 have only the blocktimes).
   */
  "postcopy-latency"?: number;
}

/** Mutable counters behind {@linkcode RamInfo}. */
export class RamCounters {
  transferredBytes = 0;
  remainingBytes = 0;
  totalBytes = 0;
  zeroPages = 0;
  normalPages = 0;
  dirtyPagesRate = 0;
  /** Bytes per second measured on the last pass big enough to measure. */
  bandwidthBytesPerSec = 0;
  dirtySyncCount = 0;
  pagesPerSecond = 0;
  postcopyRequests = 0;

  /** The QMP `ram` object. */
  toInfo(): RamInfo {
    return {
      transferred: this.transferredBytes,
      remaining: this.remainingBytes,
      total: this.totalBytes,
      duplicate: this.zeroPages,
      normal: this.normalPages,
      "normal-bytes": this.normalPages * 4096,
      "dirty-pages-rate": Math.round(this.dirtyPagesRate),
      mbps: Math.round(this.bandwidthBytesPerSec * 8 / 1e6 * 1000) / 1000,
      "dirty-sync-count": this.dirtySyncCount,
      "pages-per-second": Math.round(this.pagesPerSecond),
      "postcopy-requests": this.postcopyRequests,
    };
  }
}
