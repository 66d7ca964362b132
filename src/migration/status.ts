/**
 * The migration status as QMP shows it, and the one table of allowed transitions (STYLE.md c.11).
 * Each change calls the listeners, so the caller can emit QMP `MIGRATION {"status": …}`.
 *
 * ```
 * none ──► setup ──► active ──► completed
 *            │         │  └──► postcopy-active ──► completed | failed
 *            │         │              └──► postcopy-paused ──► failed
 *            ├─────────┴──► failed | canceled
 * completed | failed | canceled ──► setup   (a new migration)
 * ```
 * @module
 */
import { logger } from "../util/log.ts";
import type { MigrationInfo, MigrationStatus } from "./stats.ts";

export type { MigrationStatus } from "./stats.ts";

const log = logger("migration");

/** The one transition table: `from → allowed next statuses`. */
export const MIGRATION_TRANSITIONS: Readonly<Record<MigrationStatus, readonly MigrationStatus[]>> = {
  none: ["setup"],
  setup: ["active", "failed", "canceled"],
  active: ["completed", "failed", "canceled", "postcopy-active"],
  // After the switch to post-copy neither side holds the whole guest: a broken link pauses both
  // (no `canceled`, no going back to `active`); see docs/migration.md "Post-copy".
  "postcopy-active": ["completed", "failed", "postcopy-paused"],
  "postcopy-paused": ["failed"],
  completed: ["setup"],
  failed: ["setup"],
  canceled: ["setup"],
};

/** Called after each change; `errorDesc` is set when the new status is `failed`. */
export type MigrationStatusListener = (status: MigrationStatus, errorDesc: string | undefined) => void;

/** Supplies everything in `query-migrate` except `status` and `error-desc`. */
export type MigrationInfoProvider = () => Omit<MigrationInfo, "status" | "error-desc">;

/**
 * Holds one VM's migration status (either side). The machine owns one; `startMigration` and
 * `receiveMigration` drive it; QMP reads it.
 *
 * @example
 * ```ts
 * const status = new MigrationStatusTracker();
 * status.onChange((s) => qmp.emit("MIGRATION", { status: s }));
 * ```
 */
export class MigrationStatusTracker {
  #status: MigrationStatus = "none";
  #errorDesc: string | undefined;
  #listeners = new Set<MigrationStatusListener>();
  #provider: MigrationInfoProvider | undefined;

  /** The current status. */
  get status(): MigrationStatus {
    return this.#status;
  }

  /** The failure reason while the status is `failed`. */
  get errorDesc(): string | undefined {
    return this.#errorDesc;
  }

  /**
   * True in `setup`, `active`, `postcopy-active` and `postcopy-paused`: a migration runs or holds
   * the guest (QMP refuses `migrate`, `stop`, `cont`, …).
   */
  get isActive(): boolean {
    return this.#status === "setup" || this.#status === "active" || this.#status === "postcopy-active" ||
      this.#status === "postcopy-paused";
  }

  /**
   * Moves to `to` if the table allows it, then calls the listeners.
   * @param to the next status
   * @param errorDesc the reason, for `failed`
   * @throws {Error} when the table has no `from → to` edge
   */
  transition(to: MigrationStatus, errorDesc?: string): void {
    const from = this.#status;
    if (!MIGRATION_TRANSITIONS[from].includes(to)) {
      throw new Error(
        `Cannot change migration status from '${from}' to '${to}': not in the transition table`,
      );
    }
    this.#status = to;
    this.#errorDesc = to === "failed" || to === "postcopy-paused"
      ? (errorDesc ?? "Migration failed")
      : undefined;
    if (to === "setup") this.#provider = undefined;
    log.info("Migration status %s -> %s%s", from, to, this.#errorDesc ? `: ${this.#errorDesc}` : "");
    for (const l of this.#listeners) {
      try {
        l(to, this.#errorDesc);
      } catch (e) {
        log.error("Migration status listener failed: %s", (e as Error).message);
      }
    }
  }

  /**
   * Registers a listener for status changes.
   * @returns a function that removes it
   */
  onChange(listener: MigrationStatusListener): () => void {
    this.#listeners.add(listener);
    return () => void this.#listeners.delete(listener);
  }

  /** Used by the running side to publish its statistics. */
  attachInfo(provider: MigrationInfoProvider): void {
    this.#provider = provider;
  }

  /** The QMP `query-migrate` reply. */
  queryMigrate(): MigrationInfo {
    const info: MigrationInfo = { status: this.#status };
    if (this.#provider && this.#status !== "none") Object.assign(info, this.#provider());
    if (this.#errorDesc !== undefined) info["error-desc"] = this.#errorDesc;
    return info;
  }
}
