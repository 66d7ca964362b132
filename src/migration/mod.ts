/**
 * ferry's precopy live migration over `tcp:HOST:PORT` and `unix:PATH`.
 *
 * The machine implements {@linkcode MigrationVm}; QMP drives the rest:
 *
 * ```ts
 * import { DEFAULT_MIGRATION_PARAMETERS, MigrationStatusTracker, receiveMigration, startMigration } from "./mod.ts";
 *
 * const status = new MigrationStatusTracker();
 * status.onChange((s) => qmp.emit("MIGRATION", { status: s }));
 *
 * // source, QMP `migrate`: returns at once, runs in the background
 * const handle = startMigration(vm, "tcp:10.0.0.2:4446", params, status);
 * handle.cancel();           // QMP migrate_cancel
 * status.queryMigrate();     // QMP query-migrate (either side)
 *
 * // destination, `-incoming tcp:0.0.0.0:4446`
 * await receiveMigration(vm, "tcp:0.0.0.0:4446", status);
 * ```
 *
 * Files, one concern each: `status.ts` (states and the transition table), `stream.ts` (wire
 * format), `ram.ts` (pages on the wire), `transport.ts` (URIs and sockets), `compat.ts`
 * (attribute check), `state_codec.ts` (device state to bytes), `sections.ts` (the VM's migratables to sections and back), `parameters.ts` (tunables and capabilities),
 * `auto_converge.ts` (when to throttle the vCPUs),
 * `source.ts` and `destination.ts` (the two pipelines). Wire table and diagram: docs/migration.md.
 * @module
 */
export type { MigrationVm, RamPlacer, Section } from "./vm_port.ts";
export {
  MIGRATION_TRANSITIONS,
  type MigrationInfoProvider,
  type MigrationStatus,
  type MigrationStatusListener,
  MigrationStatusTracker,
} from "./status.ts";
export type { MigrationInfo, RamInfo } from "./stats.ts";
export {
  type ConvergencePolicy,
  DEFAULT_MIGRATION_CAPABILITIES,
  DEFAULT_MIGRATION_PARAMETERS,
  listMigrationCapabilities,
  type MigrationCapabilities,
  type MigrationCapabilityStatus,
  type MigrationParameters,
  updateMigrationCapabilities,
  updateMigrationParameters,
} from "./parameters.ts";
export { AutoConverge } from "./auto_converge.ts";
export { checkCompatibility, ConfigMismatchError, type VmAttributes } from "./compat.ts";
export { decodeState, encodeState, STATE_CODEC_VERSION } from "./state_codec.ts";
export { restoreSections, saveSections } from "./sections.ts";
export { type MigrationUri, parseMigrationUri } from "./transport.ts";
export { MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, ProtocolError } from "./stream.ts";
export {
  MigrationError,
  type MigrationHandle,
  startMigration,
  type StartMigrationOptions,
} from "./source.ts";
export { receiveMigration, type ReceiveMigrationOptions } from "./destination.ts";
export { PostcopyPausedError } from "./postcopy.ts";
export { multifdChannels, prewarmMultifd } from "./multifd.ts";
export { warmMigrationPath } from "./warm.ts";
