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
import type { StateValue } from "../devices/device.ts";
import type { VcpuState, Vm, VmKernelState } from "../machine/vm.ts";
import type { GuestMemory } from "../memory/guest_memory.ts";
import { Populator, residency } from "../memory/host_memory.ts";
import { decodeState, encodeState, type MigrationVm, type Section } from "../migration/mod.ts";

const VCPU_VERSION = 1;
const RUNSTATE_VERSION = 1;
const KERNEL_VERSION = 1;

function bytesField(o: Record<string, StateValue>, name: string, where: string, len?: number): Uint8Array {
  const v = o[name];
  if (!(v instanceof Uint8Array)) {
    throw new TypeError(`Cannot restore ${where}: field '${name}' must be bytes`);
  }
  if (len !== undefined && v.length !== len) {
    throw new RangeError(`Cannot restore ${where}: field '${name}' has ${v.length} bytes, expected ${len}`);
  }
  return v;
}

function objectOf(v: StateValue, where: string): Record<string, StateValue> {
  if (v === null || typeof v !== "object" || Array.isArray(v) || v instanceof Uint8Array) {
    throw new TypeError(`Cannot restore ${where}: expected an object`);
  }
  return v;
}

function encodeVcpu(s: VcpuState): StateValue {
  return {
    regs: s.regs,
    sregs: s.sregs,
    fpu: s.fpu,
    xsave: s.xsave,
    xcrs: s.xcrs,
    debugregs: s.debugregs,
    lapic: s.lapic,
    events: s.events,
    mpState: s.mpState,
    msrs: s.msrs.map((m) => [m.index, m.value]),
  };
}

/** Validates an untrusted vCPU section payload. */
export function decodeVcpu(v: StateValue, where: string): VcpuState {
  const o = objectOf(v, where);
  const mp = o.mpState;
  if (typeof mp !== "number" || !Number.isInteger(mp) || mp < 0 || mp > 10) {
    throw new RangeError(`Cannot restore ${where}: field 'mpState' must be an integer 0..10`);
  }
  const msrs = o.msrs;
  if (!Array.isArray(msrs)) throw new TypeError(`Cannot restore ${where}: field 'msrs' must be a list`);
  return {
    regs: bytesField(o, "regs", where, 144),
    sregs: bytesField(o, "sregs", where, 312),
    fpu: bytesField(o, "fpu", where, 416),
    xsave: bytesField(o, "xsave", where, 4096),
    xcrs: bytesField(o, "xcrs", where, 392),
    debugregs: bytesField(o, "debugregs", where, 128),
    lapic: bytesField(o, "lapic", where, 1024),
    events: bytesField(o, "events", where, 64),
    mpState: mp,
    msrs: msrs.map((m, i) => {
      if (!Array.isArray(m) || m.length !== 2 || typeof m[0] !== "number" || !Number.isInteger(m[0])) {
        throw new TypeError(`Cannot restore ${where}: field 'msrs[${i}]' must be [index, value]`);
      }
      const value = typeof m[1] === "bigint" ? m[1] : typeof m[1] === "number" ? BigInt(m[1]) : undefined;
      if (value === undefined || value < 0n || value >= 1n << 64n) {
        throw new RangeError(`Cannot restore ${where}: field 'msrs[${i}]' value out of range`);
      }
      return { index: m[0] >>> 0, value };
    }),
  };
}

function decodeKernel(v: StateValue): VmKernelState {
  const where = "vm:kernel";
  const o = objectOf(v, where);
  const chips = o.irqchips;
  if (!Array.isArray(chips) || chips.length !== 3) {
    throw new TypeError(`Cannot restore ${where}: field 'irqchips' must list 3 chips`);
  }
  return {
    irqchips: chips.map((c, i) => {
      if (!(c instanceof Uint8Array) || c.length !== 520) {
        throw new TypeError(`Cannot restore ${where}: field 'irqchips[${i}]' must be 520 bytes`);
      }
      return c;
    }),
    pit: bytesField(o, "pit", where, 112),
    clock: bytesField(o, "clock", where, 48),
  };
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
  readonly #blockers: () => string[];
  #pausedByMigration = false;
  #populator: Populator | undefined;
  #restored = false;
  /** Destination: whether the guest ran on the source, so it runs here after the load. */
  #runAfterRestore = true;

  constructor(vm: Vm, opts: { configAttributes: () => Record<string, string>; blockers?: () => string[] }) {
    this.#vm = vm;
    this.#config = opts.configAttributes;
    this.#blockers = opts.blockers ?? (() => []);
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
  migrationBlockers(): string[] {
    return this.#blockers();
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
  async resume(): Promise<void> {
    if (!this.#restored) {
      await this.#vm.resume();
      return;
    }
    // Destination: the state is loaded. The guest runs only if it ran on the source (QEMU keeps
    // a guest that was paused there paused here); then tell the network where it went.
    this.#restored = false;
    if (!this.#runAfterRestore) return;
    await this.#vm.resume();
    this.#vm.pci?.announce().catch(() => {});
  }

  /** Destination, after a completed incoming migration: whether the guest runs (else paused). */
  get guestRunning(): boolean {
    return this.#runAfterRestore;
  }
  get pausedByMigration(): boolean {
    return this.#pausedByMigration;
  }

  saveState(): Promise<Section[]> {
    const all = this.#vm.saveAll();
    const sections: Section[] = [
      {
        id: "vm:runstate",
        version: RUNSTATE_VERSION,
        payload: encodeState({ running: this.#pausedByMigration }),
      },
      { id: "vm:kernel", version: KERNEL_VERSION, payload: encodeState({ ...all.kernel }) },
      ...all.vcpus.map((v, i) => ({
        id: `vcpu:${i}`,
        version: VCPU_VERSION,
        payload: encodeState(encodeVcpu(v)),
      })),
    ];
    for (const d of all.devices) {
      sections.push({ id: d.id, version: d.version, payload: encodeState(d.state) });
    }
    return Promise.resolve(sections);
  }

  restoreState(sections: Section[]): Promise<void> {
    const byId = new Map(sections.map((s) => [s.id, s]));
    const take = (id: string, version: number, min = version): StateValue => {
      const s = byId.get(id);
      if (!s) throw new Error(`Cannot restore VM: section '${id}' is missing`);
      if (s.version < min || s.version > version) {
        throw new RangeError(
          `Cannot restore ${id}: state version ${s.version}, this ferry reads ${min}..${version}`,
        );
      }
      byId.delete(id);
      return decodeState(s.payload);
    };
    const kernel = decodeKernel(take("vm:kernel", KERNEL_VERSION));
    const vcpus = this.#vm.vcpus.map((_, i) => decodeVcpu(take(`vcpu:${i}`, VCPU_VERSION), `vcpu:${i}`));
    const runstate = objectOf(take("vm:runstate", RUNSTATE_VERSION), "vm:runstate");
    if (typeof runstate.running !== "boolean") {
      throw new TypeError("Cannot restore vm:runstate: field 'running' must be a boolean");
    }
    const devices: Record<string, { state: StateValue; version: number }> = {};
    for (const d of this.#vm.migratables()) {
      const s = byId.get(d.id);
      if (!s) throw new Error(`Cannot restore VM: section '${d.id}' is missing`);
      devices[d.id] = { state: take(d.id, d.stateVersion, d.minStateVersion), version: s.version };
    }
    if (byId.size > 0) {
      throw new Error(`Cannot restore VM: unknown section '${[...byId.keys()][0]}' (a device this VM lacks)`);
    }
    // Validate everything before touching KVM: device restores validate first too.
    this.#vm.restoreKernelState(kernel);
    vcpus.forEach((v, i) => this.#vm.restoreVcpu(i, v));
    for (const d of this.#vm.migratables()) d.restore(devices[d.id]!.state, devices[d.id]!.version);
    // The source released the disk locks at switchover: take them before the guest runs here.
    this.#vm.pci?.acquireLocks();
    this.#restored = true;
    this.#runAfterRestore = runstate.running;
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
