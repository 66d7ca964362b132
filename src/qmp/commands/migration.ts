/**
 * Migration commands (`migrate`, `migrate_cancel`, `query-migrate`, `migrate-set-parameters`,
 * `query-migrate-parameters`, `migrate-set-capabilities`, `query-migrate-capabilities`, and
 * `migrate-incoming` when the backend supports it) over a
 * {@link MigrationControl}. This file only checks arguments; the migration code owns state and
 * decides what to refuse.
 * @module
 */
import { QmpError } from "../protocol.ts";
import type { QmpServer } from "../server.ts";
import type { MigrationParameters as FullMigrationParameters } from "../../migration/parameters.ts";

/** What the migration commands need from ferry's migration code. */
export interface MigrationControl {
  /**
   * Starts an outgoing migration and returns at once; progress and failures show in `query()`.
   * Throws a {@link QmpError} to refuse (e.g. one is already active, or a device blocks migration).
   */
  migrate(uri: string): void;
  /** Cancels the active migration; a no-op when none is active. */
  cancel(): void;
  /**
   * `migrate-start-postcopy`: switches the active migration to post-copy. Optional: the command
   * is registered only when present.
   */
  startPostcopy?(): void;
  /** The `query-migrate` return object (`{}` before any migration, then `{"status":…,…}`). */
  query(): Record<string, unknown>;
  /** Applies the given parameters (only those present); throws a {@link QmpError} to refuse. */
  setParameters(p: MigrationParameters): void;
  /** The `query-migrate-parameters` return object. */
  parameters(): Record<string, unknown>;
  /**
   * Applies `migrate-set-capabilities` entries (`{capability, state}`), all or nothing; throws a
   * {@link QmpError} to refuse (an unknown capability, a migration in progress). Optional, with
   * {@link capabilities}: both commands are registered only when present.
   */
  setCapabilities?(capabilities: Record<string, unknown>[]): void;
  /** The `query-migrate-capabilities` return list. */
  capabilities?(): { capability: string; state: boolean }[];
  /**
   * Starts listening for an incoming migration (`-incoming defer` + `migrate-incoming`). Optional:
   * the command is registered only when present.
   */
  incoming?(uri: string): void;
}

/** Parameters `migrate-set-parameters` accepts: any of migration's one table (parameters.ts), each optional. */
export type MigrationParameters = Partial<FullMigrationParameters>;

/** QEMU's ceiling for `downtime-limit`: 2000 s. */
export const MAX_DOWNTIME_LIMIT_MS = 2_000_000;

const PARAMETER_ARGS = {
  "downtime-limit": { type: "uint", required: false, max: MAX_DOWNTIME_LIMIT_MS },
  "max-bandwidth": { type: "uint", required: false },
  "max-iterations": { type: "uint", required: false, min: 1 },
  "convergence-policy": { type: "str", required: false, enum: ["cancel", "force"] },
  "max-precopy-time": { type: "uint", required: false, max: 86_400_000 },
  "cpu-throttle-initial": { type: "uint", required: false, min: 1, max: 99 },
  "cpu-throttle-increment": { type: "uint", required: false, min: 1, max: 99 },
  "cpu-throttle-tailslow": { type: "bool", required: false },
  "max-cpu-throttle": { type: "uint", required: false, min: 1, max: 99 },
  "throttle-trigger-threshold": { type: "uint", required: false, min: 1, max: 100 },
  "tls-creds": { type: "str", required: false },
  "tls-hostname": { type: "str", required: false },
  "multifd-channels": { type: "uint", required: false, min: 1, max: 255 },
} as const;

/**
 * Registers the migration commands on `server`.
 * @param server the QMP server
 * @param migration ferry's migration code
 */
export function registerMigrationCommands(server: QmpServer, migration: MigrationControl): void {
  server.register("migrate", {
    args: {
      uri: { type: "str", required: true },
      detach: { type: "bool", required: false },
      blk: { type: "bool", required: false },
      inc: { type: "bool", required: false },
      resume: { type: "bool", required: false },
    },
    handler: ({ uri, blk, inc, resume }) => {
      for (const [name, on] of [["blk", blk], ["inc", inc]] as const) {
        if (on) {
          throw new QmpError(
            "GenericError",
            `Cannot migrate with '${name}': ferry copies no disk contents, use shared storage`,
          );
        }
      }
      if (resume) {
        throw new QmpError(
          "GenericError",
          "Cannot migrate with 'resume': ferry cannot recover a paused post-copy",
        );
      }
      migration.migrate(uri);
      return {};
    },
  });
  server.register("migrate_cancel", {
    args: {},
    handler: () => {
      migration.cancel();
      return {};
    },
  });
  server.register("query-migrate", { args: {}, handler: () => migration.query() });
  const startPostcopy = migration.startPostcopy?.bind(migration);
  if (startPostcopy) {
    server.register("migrate-start-postcopy", {
      args: {},
      handler: () => {
        startPostcopy();
        return {};
      },
    });
  }
  server.register("migrate-set-parameters", {
    args: PARAMETER_ARGS,
    handler: (args) => {
      migration.setParameters(args);
      return {};
    },
  });
  server.register("query-migrate-parameters", { args: {}, handler: () => migration.parameters() });
  const setCapabilities = migration.setCapabilities?.bind(migration);
  const capabilities = migration.capabilities?.bind(migration);
  if (setCapabilities && capabilities) registerCapabilityCommands(server, setCapabilities, capabilities);
  const incoming = migration.incoming?.bind(migration);
  if (incoming) {
    server.register("migrate-incoming", {
      args: { uri: { type: "str", required: true } },
      handler: ({ uri }) => {
        incoming(uri);
        return {};
      },
    });
  }
}

function registerCapabilityCommands(
  server: QmpServer,
  set: (capabilities: Record<string, unknown>[]) => void,
  list: () => { capability: string; state: boolean }[],
): void {
  server.register("migrate-set-capabilities", {
    args: { capabilities: { type: "object[]", required: true } },
    handler: ({ capabilities }) => {
      for (const c of capabilities) {
        for (const k of Object.keys(c)) {
          if (k !== "capability" && k !== "state") {
            throw new QmpError("GenericError", `Parameter 'capabilities.${k}' is unexpected`);
          }
        }
        if (typeof c.capability !== "string") {
          throw new QmpError(
            "GenericError",
            "Parameter 'capabilities.capability' is missing or not a string",
          );
        }
        if (typeof c.state !== "boolean") {
          throw new QmpError("GenericError", "Parameter 'capabilities.state' is missing or not a boolean");
        }
      }
      set(capabilities);
      return {};
    },
  });
  server.register("query-migrate-capabilities", { args: {}, handler: () => list() });
}
