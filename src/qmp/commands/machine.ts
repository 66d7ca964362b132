/**
 * Machine lifecycle commands (`query-status`, `stop`, `cont`, `system_reset`, `system_powerdown`,
 * `quit`, `query-cpus-fast`) over a {@link MachineControl}, and {@link MachineEvents}, the helper the
 * VM side uses to emit `STOP`, `RESUME`, `RESET`, `POWERDOWN` and `SHUTDOWN`.
 *
 * Who emits what: commands never emit lifecycle events themselves. The VM emits them when its state
 * actually changes (so a guest-initiated reset or poweroff is reported the same way as a QMP one),
 * through a {@link MachineEvents} that `main.ts` wires to the server. Because `stop`/`cont` await
 * the machine, an event emitted during the change reaches the client before the `{"return":{}}`.
 * @module
 */
import { QmpError } from "../protocol.ts";
import type { QmpEventSink, QmpServer } from "../server.ts";

/** A VM run state as QMP reports it. */
export type RunState =
  | "running"
  | "paused"
  | "inmigrate"
  | "finish-migrate"
  | "postmigrate"
  | "shutdown"
  | "prelaunch";

/** What the machine commands need from the VM. */
export interface MachineControl {
  /** The current run state. */
  status(): RunState;
  /** Pauses every vCPU; resolves once they are paused. */
  stop(): Promise<void>;
  /** Resumes the vCPUs. */
  cont(): Promise<void>;
  /** Resets the machine (`system_reset`). */
  reset(): Promise<void>;
  /** Asks the guest to power down (ACPI power button). */
  powerdown(): Promise<void>;
  /** Ends ferry; the server replies `{}` first, then calls it. */
  quit(): Promise<void>;
  /** vCPU indexes and the host thread id each runs on. */
  cpus(): { index: number; threadId: number }[];
}

/** Why the machine shut down or reset (QEMU's `ShutdownCause` names). */
export type ShutdownCause =
  | "host-error"
  | "host-qmp-quit"
  | "host-qmp-system-reset"
  | "host-signal"
  | "host-ui"
  | "guest-shutdown"
  | "guest-reset"
  | "guest-panic"
  | "subsystem-reset";

/**
 * Emits the lifecycle events with the data shapes QEMU and StratoVirt use. Give one to the VM.
 *
 * @example
 * ```ts
 * const events = new MachineEvents(qmp);
 * vm.onRunStateChange = (from, to) => events.runStateChanged(from, to);
 * vm.onGuestReset = () => events.reset("guest-reset");
 * ```
 */
export class MachineEvents {
  readonly #sink: QmpEventSink;

  /** @param sink usually the {@link QmpServer} */
  constructor(sink: QmpEventSink) {
    this.#sink = sink;
  }

  /** `STOP {}`: the vCPUs stopped (QMP `stop`, migration switch-over, shutdown). */
  stop(): void {
    this.#sink.emit("STOP");
  }

  /** `RESUME {}`: the vCPUs run again. */
  resume(): void {
    this.#sink.emit("RESUME");
  }

  /** `RESET {"guest":bool,"reason":cause}`. */
  reset(cause: ShutdownCause): void {
    this.#sink.emit("RESET", { guest: cause.startsWith("guest-"), reason: cause });
  }

  /** `POWERDOWN {}`: a powerdown was requested (the guest may ignore it). */
  powerdown(): void {
    this.#sink.emit("POWERDOWN");
  }

  /** `SHUTDOWN {"guest":bool,"reason":cause}`: ferry is about to exit (`quit` sends `host-qmp-quit`). */
  shutdown(cause: ShutdownCause): void {
    this.#sink.emit("SHUTDOWN", { guest: cause.startsWith("guest-"), reason: cause });
  }

  /**
   * Emits what a run-state change means: `STOP` when leaving `running`, `RESUME` when entering it,
   * nothing otherwise.
   */
  runStateChanged(from: RunState, to: RunState): void {
    if (from === to) return;
    if (from === "running") this.stop();
    else if (to === "running") this.resume();
  }
}

/**
 * Registers the machine commands on `server`.
 * @param server the QMP server
 * @param machine the VM behind them
 */
export function registerMachineCommands(server: QmpServer, machine: MachineControl): void {
  server.register("query-status", {
    args: {},
    handler: () => {
      const status = machine.status();
      return { status, running: status === "running", singlestep: false };
    },
  });
  server.register("stop", {
    args: {},
    handler: async () => {
      await machine.stop();
      return {};
    },
  });
  server.register("cont", {
    args: {},
    handler: async () => {
      if (machine.status() === "inmigrate") {
        throw new QmpError("MigrationExpected", "Guest is waiting for an incoming migration");
      }
      await machine.cont();
      return {};
    },
  });
  server.register("system_reset", {
    args: {},
    handler: async () => {
      await machine.reset();
      return {};
    },
  });
  server.register("system_powerdown", {
    args: {},
    handler: async () => {
      await machine.powerdown();
      return {};
    },
  });
  server.register("quit", {
    args: {},
    handler: (_args, ctx) => {
      ctx.afterReply(() => machine.quit());
      return {};
    },
  });
  server.register("query-cpus-fast", {
    args: {},
    handler: () =>
      machine.cpus().map(({ index, threadId }) => ({
        "cpu-index": index,
        "qom-path": `/machine/unattached/device[${index}]`,
        "thread-id": threadId,
        props: { "core-id": index, "thread-id": 0, "socket-id": 0 },
        target: "x86_64",
      })),
  });
}
