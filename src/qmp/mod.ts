/**
 * ferry's QMP server: StratoVirt's/QEMU's QMP dialect on a UNIX socket, so operators' scripts
 * (`ncat -U`, `socat`, python `qemu.qmp`) work unchanged. See docs/qmp.md for every command.
 *
 * `main.ts` creates the server, registers the command groups against the VM and the migration code,
 * hands the VM a {@link MachineEvents} for lifecycle events, and listens:
 *
 * @example
 * ```ts
 * import { MachineEvents, QmpServer, registerMachineCommands, registerMigrationCommands } from "./src/qmp/mod.ts";
 *
 * const qmp = new QmpServer({ path: "/run/ferry/qmp.sock", wait: false });
 * registerMachineCommands(qmp, machineControl);     // MachineControl over the Vm
 * registerMigrationCommands(qmp, migrationControl); // MigrationControl over src/migration
 * const events = new MachineEvents(qmp);            // the Vm calls events.stop(), .resume(), .shutdown(…)
 * await qmp.listen();
 * // …
 * await qmp.close();
 * ```
 * @module
 */
export {
  encodeLine,
  encodeReplyLine,
  errorReply,
  eventMessage,
  FERRY_VERSION,
  greeting,
  QmpError,
  type QmpErrorClass,
  type QmpId,
  type QmpTimestamp,
  type QmpVersionNumber,
  returnReply,
  timestamp,
  versionInfo,
} from "./protocol.ts";
export { type ArgSchema, type ArgsOf, type ArgSpec, type ArgType, checkArgs } from "./schema.ts";
export {
  type CommandContext,
  type CommandDef,
  type QmpClientInfo,
  type QmpEventSink,
  QmpServer,
  type QmpServerOptions,
} from "./server.ts";
export {
  type MachineControl,
  MachineEvents,
  registerMachineCommands,
  type RunState,
  type ShutdownCause,
} from "./commands/machine.ts";
export {
  MAX_DOWNTIME_LIMIT_MS,
  type MigrationControl,
  type MigrationParameters,
  registerMigrationCommands,
} from "./commands/migration.ts";
