/**
 * The machine's face for migration: implements `MigrationVm` over a {@linkcode Vm}. State goes
 * out as one section per component, each with a version:
 *
 * | id             | version | payload                                                    |
 * |----------------|---------|------------------------------------------------------------|
 * | `vm:runstate`  | 1       | `{running}`: whether the guest ran on the source (a paused one stays paused) |
 * | `vm:kernel`    | 1       | PIC master, PIC slave, IOAPIC (raw kvm_irqchip), PIT2, kvmclock |
 * | `vcpu:<i>`     | 1       | regs, sregs, fpu, xsave, xcrs, debugregs, lapic, events, mp state, MSRs |
 * | device ids     | device's | the device's own `save()`: platform devices, PCI transports (`pci/pcie.0/SS.F`), virtio devices |
 * @module
 */
import type { Migratable, StateValue } from "../devices/device.ts";
import { checkStateVersion, StateReader } from "../devices/state_fields.ts";
import type { Vm } from "../machine/vm.ts";
import type { GuestMemory } from "../memory/guest_memory.ts";
import { Populator, residency } from "../memory/host_memory.ts";
import { PagePlacer } from "../memory/page_placer.ts";
import { type MigrationVm, restoreSections, saveSections, type Section } from "../migration/mod.ts";

const RUNSTATE_VERSION = 1;

/** `vm:runstate`: whether the guest ran on the source, so the destination runs it (or keeps it paused). */
class RunstateMigratable implements Migratable {
  readonly id = "vm:runstate";
  readonly stateVersion = RUNSTATE_VERSION;
  readonly minStateVersion = RUNSTATE_VERSION;
  readonly #get: () => boolean;
  readonly #set: (running: boolean) => void;

  constructor(get: () => boolean, set: (running: boolean) => void) {
    this.#get = get;
    this.#set = set;
  }
  save(): StateValue {
    return { running: this.#get() };
  }
  restore(state: StateValue, version: number): void {
    checkStateVersion(this.id, version, this.minStateVersion, this.stateVersion);
    this.#set(new StateReader(this.id, state).bool("running"));
  }
}

/** Host facts a destination must share: CPU vendor, KVM API, platform MSRs. */
export function hostAttributes(vm: Vm): Record<string, string> {
  const leaf0 = vm.kvm.supportedCpuid().find((e) => e.function === 0);
  const vendor = leaf0
    ? new TextDecoder().decode(new Uint32Array([leaf0.ebx, leaf0.edx, leaf0.ecx]).buffer)
    : "unknown";
  const platform = vm.msrIndices.filter((i) => i >= 0x4b564d10 && i <= 0x4b564d1f);
  return {
    "cpu vendor": vendor,
    "kvm api version": String(vm.kvm.apiVersion()),
    "platform msrs": platform.map((i) => "0x" + i.toString(16)).join(",") || "none",
  };
}

/** `MigrationVm` over a running {@linkcode Vm}. */
export class VmMigrationAdapter implements MigrationVm {
  readonly #vm: Vm;
  readonly #config: () => Record<string, string>;
  #pausedByMigration = false;
  #populator: Populator | undefined;
  #restored = false;
  /** Destination: whether the guest ran on the source, so it runs here after the load. */
  #runAfterRestore = true;

  constructor(vm: Vm, opts: { configAttributes: () => Record<string, string> }) {
    this.#vm = vm;
    this.#config = opts.configAttributes;
  }

  get memory(): GuestMemory {
    return this.#vm.memory;
  }
  configAttributes(): Record<string, string> {
    return this.#config();
  }
  hostAttributes(): Record<string, string> {
    return hostAttributes(this.#vm);
  }
  startDirtyLog(): void {
    this.#vm.startDirtyLog();
  }
  residency(gpa: number, pageCount: number): Uint8Array | undefined {
    return residency(this.#vm.layout, gpa, pageCount);
  }
  populate(gpa: number, pageCount: number): void {
    this.#populator ??= new Populator(this.#vm.layout);
    this.#populator.ahead(gpa, pageCount);
  }
  openPlacer(): PagePlacer | undefined {
    return PagePlacer.open(this.#vm.layout);
  }
  vcpuThreadIds(): readonly number[] {
    return this.#vm.threadIds();
  }
  syncDirtyLog(): Uint32Array[] {
    return this.#vm.syncDirtyLog();
  }
  stopDirtyLog(): void {
    this.#vm.stopDirtyLog();
  }
  async setCpuThrottle(percent: number): Promise<void> {
    // Only a running guest is throttled: the throttle resumes what it paused.
    if (percent > 0 && !this.#vm.paused) this.#vm.throttle.set(percent);
    else await this.#vm.throttle.stop();
  }
  async pause(): Promise<void> {
    this.#pausedByMigration = !this.#vm.paused;
    await this.#vm.pause();
  }
  async resumeAfterRollback(): Promise<void> {
    await this.#vm.resume();
  }
  async startIncomingGuest(): Promise<void> {
    if (!this.#restored) throw new Error("Cannot start the incoming guest: its state was not restored");
    // The guest runs only if it ran on the source (QEMU keeps a guest that was paused there paused
    // here); then tell the network where it went.
    this.#restored = false;
    if (!this.#runAfterRestore) return;
    await this.#vm.resume();
    this.#vm.pci?.announce().catch(() => {});
  }

  landed(): void {
    this.#vm.adviseHugePages();
  }

  /** Destination, after a completed incoming migration: whether the guest runs (else paused). */
  get guestRunning(): boolean {
    return this.#runAfterRestore;
  }
  get guestPaused(): boolean {
    return this.#vm.paused;
  }
  get pausedByMigration(): boolean {
    return this.#pausedByMigration;
  }

  /** The VM's own list ({@linkcode Vm.migratables}), in restore order, then `vm:runstate`. */
  #migratables(): Migratable[] {
    const runstate = new RunstateMigratable(
      () => this.#pausedByMigration,
      (running) => this.#runAfterRestore = running,
    );
    return [...this.#vm.migratables(), runstate];
  }

  saveState(): Promise<Section[]> {
    return Promise.resolve(saveSections(this.#migratables()));
  }

  restoreState(sections: Section[]): Promise<void> {
    restoreSections(this.#migratables(), sections);
    // The source released the disk locks at switchover: take them before the guest runs here.
    this.#vm.pci?.acquireLocks();
    this.#restored = true;
    return Promise.resolve();
  }

  /** Source, paused, before the last state goes out: flush and release the disk image locks. */
  onSwitchover(): Promise<void> {
    this.#vm.pci?.onSwitchover();
    return Promise.resolve();
  }

  /** Source, after a failed or canceled migration that got past switchover: take the locks back. */
  onRollback(): Promise<void> {
    this.#vm.pci?.acquireLocks();
    return Promise.resolve();
  }
}
