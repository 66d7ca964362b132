/**
 * The VMM process: one {@linkcode Vm}, its QMP sockets and its migrations. Owns the run state
 * (`running`, `paused`, `inmigrate`, `finish-migrate`, `postmigrate`, `shutdown`) and the rules that
 * tie QMP,
 * the machine and migration together:
 * - lifecycle commands are refused while a migration is active;
 * - a failed or canceled migration leaves the source exactly as it was (running or paused);
 * - a source paused for the switch-over is `finish-migrate` (`STOP` goes out then, before
 *   `MIGRATION completed`); a completed migration leaves it paused (`postmigrate`) until `quit`; a
 *   rollback after the pause restores the state before (`MIGRATION failed`, then `RESUME`);
 * - a destination answers QMP while it receives, resumes only after the whole state loaded, and
 *   exits non-zero when the incoming migration fails.
 * @module
 */
import { Vm, type VmExit, type VmSpec } from "../machine/vm.ts";
import {
  DEFAULT_MIGRATION_CAPABILITIES,
  DEFAULT_MIGRATION_PARAMETERS,
  listMigrationCapabilities,
  type MigrationCapabilities,
  type MigrationCapabilityStatus,
  type MigrationHandle,
  type MigrationParameters,
  MigrationStatusTracker,
  type MigrationUri,
  multifdChannels,
  parseMigrationUri,
  PostcopyPausedError,
  prewarmMultifd,
  receiveMigration,
  startMigration,
  updateMigrationCapabilities,
  updateMigrationParameters,
  warmMigrationPath,
} from "../migration/mod.ts";
import {
  type MachineControl,
  MachineEvents,
  type MigrationControl,
  QmpError,
  type QmpEventSink,
  QmpServer,
  registerMachineCommands,
  registerMigrationCommands,
  type RunState,
} from "../qmp/mod.ts";
import { logger } from "../util/log.ts";
import { VmMigrationAdapter } from "./migration_adapter.ts";
import { loadTlsCreds, type TlsCreds, type TlsCredsConfig } from "../migration/tls.ts";

const log = logger("vmm");

/** Everything the VMM needs from the command line. */
export interface VmmOptions {
  spec: VmSpec;
  qmp: { path: string; wait: boolean }[];
  /**
   * `-incoming`, parsed once: a migration destination's `tcp:`/`unix:` address, a snapshot
   * `file:` to restore, or `defer` (QMP `migrate-incoming`).
   */
  incoming?: MigrationUri | "defer";
  /** `-object tls-creds-x509` (their files are read at start). */
  tlsCreds?: TlsCredsConfig[];
  /** Migration parameters from the command line (`-global migration.tls-creds=ID`). */
  migrationParameters?: Record<string, unknown>;
  /** Canonical configuration attributes a migration peer must match. */
  configAttributes: Record<string, string>;
}

/** How the process should end. */
export interface VmmEnd {
  code: number;
  message: string;
}

/** What the PCI devices add to the configuration check: image size, bus placement and identity. */
function pciAttributes(vm: Vm): Record<string, string> {
  return vm.pci?.configAttributes() ?? {};
}

class EventFanout implements QmpEventSink {
  readonly sinks: QmpEventSink[] = [];
  emit(name: string, data?: Record<string, unknown>): void {
    for (const s of this.sinks) s.emit(name, data);
  }
}

/** The running VMM. */
export class Vmm implements MachineControl, MigrationControl {
  readonly vm: Vm;
  readonly #opts: VmmOptions;
  readonly #servers: QmpServer[] = [];
  readonly #fanout = new EventFanout();
  readonly #events: MachineEvents;
  readonly #migration = new MigrationStatusTracker();
  readonly #adapter: VmMigrationAdapter;
  #params: MigrationParameters = { ...DEFAULT_MIGRATION_PARAMETERS };
  #capabilities: MigrationCapabilities = { ...DEFAULT_MIGRATION_CAPABILITIES };
  readonly #tlsCreds = new Map<string, TlsCreds>();
  #state: RunState = "prelaunch";
  #active: MigrationHandle | undefined;
  #incoming: Promise<void> | undefined;
  #incomingAbort: AbortController | undefined;
  /** The last completed migration wrote a snapshot file: the guest runs nowhere else, `cont` may resume it. */
  #snapshotSaved = false;
  #endResolve!: (e: VmmEnd) => void;
  /** Settles when the process should exit. */
  readonly ended: Promise<VmmEnd>;
  #ending = false;

  private constructor(vm: Vm, opts: VmmOptions) {
    this.vm = vm;
    this.#opts = opts;
    this.#events = new MachineEvents(this.#fanout);
    this.#adapter = new VmMigrationAdapter(vm, {
      configAttributes: () => ({ ...opts.configAttributes, ...pciAttributes(vm) }),
    });
    this.ended = new Promise((r) => (this.#endResolve = r));
    this.#migration.onChange((status) => this.#fanout.emit("MIGRATION", { status }));
    vm.onExit((e) => this.#onGuestExit(e));
  }

  /** Builds the VM, opens the QMP sockets and starts the guest (or waits for the incoming state). */
  static async start(opts: VmmOptions): Promise<Vmm> {
    // Credentials and parameters first: a bad file fails before any VM exists.
    const creds = (opts.tlsCreds ?? []).map(loadTlsCreds);
    const params = updateMigrationParameters(DEFAULT_MIGRATION_PARAMETERS, opts.migrationParameters ?? {});
    const vm = await Vm.create(opts.spec, { boot: opts.incoming === undefined });
    const vmm = new Vmm(vm, opts);
    for (const c of creds) vmm.#tlsCreds.set(c.id, c);
    vmm.#params = params;
    try {
      for (const q of opts.qmp) {
        const server = new QmpServer({ path: q.path, wait: q.wait });
        registerMachineCommands(server, vmm);
        registerMigrationCommands(server, vmm);
        vmm.#servers.push(server);
        vmm.#fanout.sinks.push(server);
      }
      // A destination answers QMP while it waits; `server,wait` needs its client before the guest
      // starts. Otherwise the sockets exist now but clients are accepted once the guest runs, so
      // none sees it half-started (`prelaunch`, then a `RESUME`), as with QEMU.
      const early = opts.incoming !== undefined;
      for (const [i, s] of vmm.#servers.entries()) {
        if (early || opts.qmp[i]!.wait) await s.listen();
        else await s.bind();
      }
    } catch (e) {
      await vmm.#teardown();
      throw e;
    }
    if (opts.incoming !== undefined) {
      vmm.#setState("inmigrate");
      if (opts.incoming !== "defer") {
        try {
          vmm.#receive(opts.incoming);
        } catch (e) {
          await vmm.#teardown();
          throw e;
        }
      }
    } else {
      await vm.resume();
      vmm.#setState("running");
      for (const [i, s] of vmm.#servers.entries()) if (!opts.qmp[i]!.wait) await s.listen();
    }
    return vmm;
  }

  /** The credentials `tls-creds` names, checked for `endpoint`; undefined when TLS is off. */
  #tls(endpoint: "server" | "client"): TlsCreds | undefined {
    const id = this.#params["tls-creds"];
    if (id === "") return undefined;
    const creds = this.#tlsCreds.get(id);
    if (!creds) throw new TypeError(`Cannot use tls-creds '${id}': no -object tls-creds-x509 has that id`);
    if (creds.endpoint !== endpoint) {
      throw new TypeError(
        `Cannot use tls-creds '${id}' ${
          endpoint === "server" ? "to receive" : "to migrate"
        }: its endpoint is ${creds.endpoint}, want ${endpoint}`,
      );
    }
    return creds;
  }

  #receive(uri: string | MigrationUri): void {
    warmMigrationPath();
    const target = typeof uri === "string" ? parseMigrationUri(uri, { listen: true }) : uri;
    const tls = target.kind === "file" ? undefined : this.#tls("server");
    const abort = new AbortController();
    this.#incomingAbort = abort;
    // Post-copy: the guest runs here before the migration completes.
    const off = this.#migration.onChange((s) => {
      if (s === "postcopy-active" && this.#state === "inmigrate") this.#setState("running");
    });
    this.#incoming = receiveMigration(this.#adapter, target, this.#migration, {
      signal: abort.signal,
      multifdChannels: multifdChannels(this.#capabilities, this.#params),
      capabilities: this.#capabilities,
      ...(tls ? { tls } : {}),
    }).finally(off).then(
      () => {
        const running = this.#adapter.guestRunning;
        this.#setState(running ? "running" : "paused");
        log.info(
          "Incoming migration completed; the guest is %s here",
          running ? "running" : "paused (as on the source)",
        );
      },
      (e: Error) => {
        if (e instanceof PostcopyPausedError) {
          // No source to fall back to: keep the paused guest and say why (query-migrate).
          this.#setState("paused");
          log.error("ferry: %s", e.message);
          return;
        }
        if (!this.#ending) {
          void this.end({ code: 1, message: `ferry: incoming migration failed: ${e.message}` });
        }
      },
    );
  }

  #setState(to: RunState): void {
    const from = this.#state;
    this.#state = to;
    this.#events.runStateChanged(from, to);
  }

  #onGuestExit(e: VmExit): void {
    const messages: Record<VmExit["reason"], VmmEnd> = {
      poweroff: { code: 0, message: "ferry: guest powered off" },
      reset: { code: 0, message: "ferry: guest requested a reset; ferry exits (guest reboot ends the VM)" },
      "triple-fault": { code: 2, message: `ferry: guest stopped: ${e.detail}` },
      error: { code: 1, message: `ferry: ${e.detail}` },
    };
    const end = messages[e.reason];
    this.#events.shutdown(
      e.reason === "reset" ? "guest-reset" : e.reason === "poweroff" ? "guest-shutdown" : "guest-panic",
    );
    this.end(end);
  }

  /** Ends the process: cancels any migration, closes sockets, destroys the VM, then resolves `ended`. */
  async end(e: VmmEnd): Promise<void> {
    if (this.#ending) return;
    this.#ending = true;
    // Stop any migration and wait for it to let go of guest RAM before the VM is unmapped.
    this.#active?.cancel();
    this.#incomingAbort?.abort(new Error(e.message || "ferry is quitting"));
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.allSettled([this.#active?.done, this.#incoming]),
      // A destination that never confirms after `complete` must not keep `quit` waiting forever.
      new Promise((r) => (timer = setTimeout(r, 5000))),
    ]);
    clearTimeout(timer);
    this.#state = "shutdown";
    await this.#teardown();
    this.#endResolve(e);
  }

  async #teardown(): Promise<void> {
    for (const s of this.#servers) {
      try {
        await s.close();
      } catch (err) {
        log.warn("Closing QMP socket failed: %s", (err as Error).message);
      }
    }
    await this.vm.destroy();
  }

  #refuseDuringMigration(what: string): void {
    if (this.#migration.isActive) {
      throw new QmpError("GenericError", `Cannot ${what}: a migration is in progress (migrate_cancel first)`);
    }
  }

  // ---- MachineControl -----------------------------------------------------------------------------

  status(): RunState {
    return this.#state;
  }

  async stop(): Promise<void> {
    this.#refuseDuringMigration("stop the VM");
    if (this.#state === "inmigrate") {
      throw new QmpError("GenericError", "Cannot stop: the VM is waiting for an incoming migration");
    }
    if (this.#state !== "running") return;
    await this.vm.pause();
    this.#setState("paused");
  }

  async cont(): Promise<void> {
    this.#refuseDuringMigration("resume the VM");
    if (this.#state === "inmigrate") {
      throw new QmpError("MigrationExpected", "Cannot continue: the VM is waiting for an incoming migration");
    }
    if (this.#state === "postmigrate" && !this.#snapshotSaved) {
      throw new QmpError("GenericError", "Cannot continue: the VM was migrated away; quit this process");
    }
    if (this.#state === "postmigrate") {
      // After a snapshot, as QEMU: the guest ran nowhere else, so it may go on here.
      await this.vm.resume();
      this.#setState("running");
      return;
    }
    if (this.#state !== "paused") return;
    await this.vm.resume();
    this.#setState("running");
  }

  async reset(): Promise<void> {
    this.#refuseDuringMigration("reset the VM");
    if (this.#state === "inmigrate" || this.#state === "postmigrate") {
      throw new QmpError("GenericError", `Cannot reset: the VM is ${this.#state}`);
    }
    await this.vm.reset();
    this.#events.reset("host-qmp-system-reset");
  }

  powerdown(): Promise<void> {
    this.#refuseDuringMigration("power down the VM");
    this.#events.powerdown();
    this.vm.platform.pressPowerButton();
    return Promise.resolve();
  }

  async quit(): Promise<void> {
    this.#events.shutdown("host-qmp-quit");
    await this.end({ code: 0, message: "" });
  }

  cpus(): { index: number; threadId: number }[] {
    return this.vm.threadIds().map((tid, index) => ({ index, threadId: tid }));
  }

  // ---- MigrationControl ---------------------------------------------------------------------------

  migrate(uri: string): void {
    if (this.#state === "inmigrate") {
      throw new QmpError("GenericError", "Cannot migrate: an incoming migration is pending");
    }
    if (this.#state === "postmigrate" && !this.#snapshotSaved) {
      throw new QmpError("GenericError", "Cannot migrate: the VM was already migrated away");
    }
    if (this.#state === "shutdown") {
      throw new QmpError("GenericError", "Cannot migrate: the VM is shutting down");
    }
    let handle: MigrationHandle;
    let target: MigrationUri;
    try {
      target = parseMigrationUri(uri);
      const creds = target.kind === "file" ? undefined : this.#tls("client");
      const hostname = this.#params["tls-hostname"];
      handle = startMigration(this.#adapter, target, this.#params, this.#migration, {
        capabilities: this.#capabilities,
        // QEMU's switch-over run state; leaving `running` emits STOP before MIGRATION completed.
        onPaused: () => this.#setState("finish-migrate"),
        ...(creds ? { tls: { creds, ...(hostname ? { hostname } : {}) } } : {}),
      });
    } catch (e) {
      throw new QmpError("GenericError", (e as Error).message);
    }
    this.#active = handle;
    const wasRunning = this.#state === "running";
    handle.done.then((final) => {
      if (this.#active === handle) this.#active = undefined;
      if (final === "completed") this.#snapshotSaved = target.kind === "file";
      if (final === "completed") {
        // The guest runs on the destination now: stay paused until quit.
        this.#setState("postmigrate");
      } else if (final === "postcopy-paused") {
        // Post-copy broke: the guest may have run on the destination, so it never runs here again.
        this.#setState("paused");
      } else if (this.#state === "finish-migrate") {
        // Rolled back after the pause: as before (RESUME when it ran).
        this.#setState(wasRunning ? "running" : "paused");
      }
    });
  }

  cancel(): void {
    this.#active?.cancel();
  }

  /** `migrate-start-postcopy` (QEMU's command). */
  startPostcopy(): void {
    if (!this.#active) {
      throw new QmpError("GenericError", "Cannot start post-copy: no outgoing migration is in progress");
    }
    try {
      this.#active.startPostcopy();
    } catch (e) {
      throw new QmpError("GenericError", (e as Error).message);
    }
  }

  /** QMP `migrate-incoming`, only after `-incoming defer` (QEMU's rule). */
  incoming(uri: string): void {
    if (this.#opts.incoming !== "defer") {
      throw new QmpError(
        "GenericError",
        this.#opts.incoming === undefined
          ? "Cannot start an incoming migration: '-incoming' was not specified on the command line"
          : "Cannot start an incoming migration: it was started by -incoming already",
      );
    }
    if (this.#incoming) {
      throw new QmpError("GenericError", "Cannot start an incoming migration: it was started already");
    }
    try {
      this.#receive(uri);
    } catch (e) {
      throw new QmpError("GenericError", (e as Error).message);
    }
  }

  /**
   * `query-migrate`. Before any migration the status follows StratoVirt's meaning: `setup` when
   * the VM is set up and ready to migrate (running or paused), `none` while it is not (prelaunch,
   * shutting down).
   */
  query(): Record<string, unknown> {
    if (this.#migration.status === "none") {
      return { status: this.#state === "running" || this.#state === "paused" ? "setup" : "none" };
    }
    return this.#migration.queryMigrate() as unknown as Record<string, unknown>;
  }

  /** `migrate-set-parameters`; during a migration the new values apply to it at once. */
  setParameters(p: Record<string, unknown>): void {
    try {
      const id = p["tls-creds"];
      if (typeof id === "string" && id !== "" && !this.#tlsCreds.has(id)) {
        throw new TypeError(
          `Cannot set migration parameter 'tls-creds' to '${id}': no -object tls-creds-x509 has that id`,
        );
      }
      this.#params = updateMigrationParameters(this.#params, p);
    } catch (e) {
      throw new QmpError("GenericError", (e as Error).message);
    }
    this.#active?.setParameters(this.#params);
    if (!this.#migration.isActive) prewarmMultifd(multifdChannels(this.#capabilities, this.#params));
    warmMigrationPath();
  }

  /** `migrate-set-capabilities`; refused during a migration, as QEMU does. */
  setCapabilities(caps: unknown[]): void {
    if (this.#migration.isActive) {
      throw new QmpError("GenericError", "Cannot set migration capabilities: a migration is in progress");
    }
    try {
      this.#capabilities = updateMigrationCapabilities(this.#capabilities, caps);
    } catch (e) {
      throw new QmpError("GenericError", (e as Error).message);
    }
    prewarmMultifd(multifdChannels(this.#capabilities, this.#params));
    warmMigrationPath();
  }

  capabilities(): MigrationCapabilityStatus[] {
    return listMigrationCapabilities(this.#capabilities);
  }

  parameters(): Record<string, unknown> {
    return { ...this.#params };
  }
}
