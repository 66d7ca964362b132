/**
 * The VM lifecycle: create (KVM VM, irqchip, PIT, RAM, vCPUs, devices), boot, run (native run
 * threads, exits handled on one vCPU Worker), pause/resume (the primitive QMP `stop`/`cont` and migration stand on), save/restore
 * of every vCPU and VM state item, dirty logging, and teardown.
 * @module
 */
import { check } from "../ffi/errno.ts";
import { shim } from "../ffi/shim.ts";
import { CAP, CLOCK_REALTIME, MEM_LOG_DIRTY_PAGES } from "../kvm/ioctls.ts";
import { type CpuidEntry, Kvm, platformMsrs, requiredCaps, type VcpuFd, type VmFd } from "../kvm/kvm.ts";
import { applySregs, encodeRegs } from "../kvm/regs.ts";
import type { GuestMemory, MemoryLayout } from "../memory/guest_memory.ts";
import {
  adviseHugePages,
  allocateRam,
  freeRam,
  hostGuestMemory,
  preallocRam,
} from "../memory/host_memory.ts";
import { logger } from "../util/log.ts";
import { loadKernel } from "./boot/mod.ts";
import { ramRegions } from "./boot/layout.ts";
import { KICK_SIGNAL, VcpuControl } from "./vcpu_control.ts";
import { VcpuThrottle } from "./vcpu_throttle.ts";
import type { VcpuEvent, VcpuInit, VcpuReady } from "./vcpu_worker.ts";
import { Platform, type SerialSink } from "./platform.ts";
import type { Migratable } from "../devices/device.ts";
import { VcpuMigratable, type VcpuState } from "./vcpu_state.ts";
import { VmKernelMigratable, type VmKernelState } from "./vm_kernel_state.ts";
import type { VirtioPciDevices } from "./pci.ts";
import type { IoControl } from "../devices/virtio/io_control.ts";
import type { DriveConfig } from "../devices/virtio/block/block.ts";
import type { PciAddress } from "../devices/pci/pci_address.ts";
import { workerUrl } from "../util/bundled.ts";

export type { VcpuState } from "./vcpu_state.ts";
export type { VmKernelState } from "./vm_kernel_state.ts";

const log = logger("vm");

/** A PCI device on `pcie.0`; the first free slot when `addr` is absent. */
export type PciDeviceSpec =
  | { kind: "virtio-blk"; addr?: PciAddress; drive: DriveConfig }
  | { kind: "virtio-net"; addr?: PciAddress; id: string; ifname: string; mac: Uint8Array };

/** What a VM is made of (from the command line). */
export interface VmSpec {
  memoryBytes: number;
  /** `-mem-prealloc`: back all guest RAM before the VM starts (or waits for its migration). */
  memPrealloc?: boolean;
  cpus: number;
  kernel?: { path: string; cmdline: string; initrd?: string };
  serial: SerialSink;
  pci?: PciDeviceSpec[];
}

/** Why the VM stopped on its own. */
export interface VmExit {
  reason: "poweroff" | "reset" | "triple-fault" | "error";
  detail: string;
}

/** Extra CPUID topology for vCPU `id` of `count`. */
function cpuidFor(base: CpuidEntry[], id: number, count: number): CpuidEntry[] {
  return base.map((e) => {
    const o = { ...e };
    if (e.function === 1) {
      // EBX[31:24] initial APIC id, [23:16] logical processor count; EDX bit 28 HTT.
      o.ebx = ((e.ebx & 0x0000ffff) | ((count & 0xff) << 16) | ((id & 0xff) << 24)) >>> 0;
      if (count > 1) o.edx = (e.edx | (1 << 28)) >>> 0;
    } else if (e.function === 0xb) {
      // x2APIC topology: level 0 = SMT (1 thread), level 1 = core (count cores).
      o.edx = id;
      if (e.index === 0) {
        o.eax = 0;
        o.ebx = 1;
        o.ecx = 0x100;
      } else if (e.index === 1) {
        o.eax = Math.ceil(Math.log2(Math.max(count, 1)));
        o.ebx = count;
        o.ecx = 0x201;
      } else {
        o.eax = 0;
        o.ebx = 0;
        o.ecx = e.index;
      }
    } else if (e.function === 4) {
      // Cores per package - 1 in EAX[31:26].
      o.eax = ((e.eax & 0x03ffffff) | (((count - 1) & 0x3f) << 26)) >>> 0;
    }
    return o;
  });
}

let kickInstalled = false;

/** A running (or paused) virtual machine. */
export class Vm {
  readonly spec: VmSpec;
  readonly kvm: Kvm;
  readonly vmFd: VmFd;
  readonly vcpus: VcpuFd[];
  readonly layout: MemoryLayout;
  readonly memory: GuestMemory;
  readonly control: VcpuControl;
  /** Migration's auto-converge throttle over {@linkcode control}; every pause stops it first. */
  readonly throttle: VcpuThrottle;
  readonly platform: Platform;
  readonly msrIndices: number[];
  /** `KVM_GET_MSR_INDEX_LIST`: MSRs KVM itself may refuse to set without it mattering. */
  readonly #kvmMsrs: Set<number>;
  /** The PCI devices, when any were configured. */
  readonly pci: VirtioPciDevices | undefined;
  #io: IoControl | undefined;
  readonly #workers: Worker[] = [];
  readonly #exitListeners: ((e: VmExit) => void)[] = [];
  #dirtyLogging = false;
  #destroyed = false;
  #bootState: VcpuState[] = [];
  #paused = true;
  #exited: VmExit | undefined;

  private constructor(
    spec: VmSpec,
    kvm: Kvm,
    vmFd: VmFd,
    layout: MemoryLayout,
    vcpus: VcpuFd[],
    platform: Platform,
    pci: VirtioPciDevices | undefined,
  ) {
    this.spec = spec;
    this.pci = pci;
    this.kvm = kvm;
    this.vmFd = vmFd;
    this.layout = layout;
    this.memory = hostGuestMemory(layout);
    this.vcpus = vcpus;
    this.platform = platform;
    // One vCPU: the vCPU Worker runs it and answers its exits on the same thread (no hand-off).
    this.control = new VcpuControl(vcpus, { runOnHost: vcpus.length === 1 });
    this.throttle = new VcpuThrottle(this.control);
    this.#kvmMsrs = new Set(kvm.msrIndexList());
    this.msrIndices = [...this.#kvmMsrs, ...(vcpus[0] ? platformMsrs(vcpus[0]) : [])];
  }

  /**
   * Builds the machine; vCPUs exist but are paused. With `boot: true` the kernel is loaded and
   * the boot vCPU set to its entry; a migration destination passes `boot: false`.
   */
  static async create(spec: VmSpec, options: { boot: boolean }): Promise<Vm> {
    if (!kickInstalled) {
      check(shim().ferry_install_kick_handler(KICK_SIGNAL), "install the vCPU kick signal handler");
      kickInstalled = true;
    }
    // The vCPU Worker loads its modules while this thread sets the VM up (a boot-time saving);
    // its init message waits in the Worker's queue until then.
    const worker = new Worker(workerUrl("./vcpu_worker.ts", import.meta.url), {
      type: "module",
      name: "vcpus",
    });
    try {
      return await Vm.#build(spec, options, worker);
    } catch (e) {
      worker.terminate();
      throw e;
    }
  }

  static async #build(spec: VmSpec, options: { boot: boolean }, worker: Worker): Promise<Vm> {
    const kvm = new Kvm();
    const missing = requiredCaps(kvm);
    if (missing.length > 0) throw new Error(`Cannot create VM: KVM lacks ${missing.join(", ")}`);
    const vmFd = kvm.createVm();
    vmFd.setTssAddr(0xfffbd000);
    vmFd.setIdentityMapAddr(0xfffbc000);
    vmFd.createIrqchip();
    vmFd.createPit2();
    // A destination lands its RAM in 4 KiB pages; huge pages come after (adviseHugePages).
    const layout = allocateRam(ramRegions(spec.memoryBytes), { hugePages: options.boot });
    if (spec.memPrealloc) {
      try {
        await preallocRam(layout);
      } catch (e) {
        freeRam(layout);
        throw e;
      }
    }
    for (const r of layout.regions) {
      vmFd.setMemorySlot({
        slot: r.slot,
        flags: 0,
        gpa: r.gpa,
        sizeBytes: r.sizeBytes,
        hostAddr: r.hostAddr,
      });
    }
    const cpuid = kvm.supportedCpuid();
    const vcpus: VcpuFd[] = [];
    for (let i = 0; i < spec.cpus; i++) {
      const v = vmFd.createVcpu(i);
      v.setCpuid(cpuidFor(cpuid, i, spec.cpus));
      vcpus.push(v);
    }
    const pci = await Vm.#createPci(spec, vmFd, options.boot);
    const platform = new Platform({
      vmFd: vmFd.fd,
      serial: spec.serial,
      ramBytes: spec.memoryBytes,
      ...(pci ? { pci: pci.pciPlan() } : {}),
    });
    const vm = new Vm(spec, kvm, vmFd, layout, vcpus, platform, pci);
    vm.#bootState = vcpus.map((_, i) => vm.saveVcpu(i));
    if (options.boot) vm.#boot();
    await vm.#startWorkers(worker);
    if (pci) {
      const { IoControl } = await import("../devices/virtio/io_control.ts");
      vm.#io = await IoControl.start({ plan: pci.ioPlan(layout) });
    }
    return vm;
  }

  /**
   * Builds the PCI devices. A migration destination (`boot: false`) opens disk images without
   * their lock: the source still holds it until switchover. The PCI and virtio modules load here,
   * only for a VM that has PCI devices.
   */
  static async #createPci(spec: VmSpec, vmFd: VmFd, boot: boolean): Promise<VirtioPciDevices | undefined> {
    if (!spec.pci || spec.pci.length === 0) return undefined;
    const { VirtioPciDevices } = await import("./pci.ts");
    const pci = new VirtioPciDevices({ vm: vmFd });
    try {
      for (const d of spec.pci) {
        if (d.kind === "virtio-blk") {
          pci.addBlock(d.drive, { ...(d.addr ? { addr: d.addr } : {}), lock: boot ? "now" : "deferred" });
        } else {
          pci.addNet(
            { id: d.id, ifname: d.ifname, mac: d.mac },
            d.addr ? { addr: d.addr } : {},
          );
        }
      }
      pci.wireKvm();
    } catch (e) {
      pci.close();
      throw e;
    }
    return pci;
  }

  #boot(): void {
    const k = this.spec.kernel;
    if (!k) throw new TypeError("Cannot boot: no -kernel given");
    const kernel = Deno.readFileSync(k.path);
    const initrd = k.initrd !== undefined ? Deno.readFileSync(k.initrd) : undefined;
    const setup = loadKernel(this.memory, {
      kernel,
      kernelPath: k.path,
      cmdline: k.cmdline,
      ...(initrd ? { initrd } : {}),
      cpus: this.spec.cpus,
      ramBytes: this.spec.memoryBytes,
    });
    const bsp = this.vcpus[0]!;
    bsp.setSregs(applySregs(bsp.getSregs(), setup.vcpu.sregs));
    bsp.setRegs(encodeRegs(setup.vcpu.regs));
    // LAPIC LINT0 = ExtINT, LINT1 = NMI on the BSP (what firmware leaves for Linux).
    const lapic = bsp.getLapic();
    const dv = new DataView(lapic.buffer);
    dv.setUint32(0x350, (dv.getUint32(0x350, true) & ~0x700 & ~0x10000) | 0x700, true);
    dv.setUint32(0x360, (dv.getUint32(0x360, true) & ~0x700 & ~0x10000) | 0x400, true);
    bsp.setLapic(lapic);
    log.info("kernel %s (%s) entry 0x%s", k.path, setup.kind, setup.entry.toString(16));
  }

  /** Starts the vCPU run threads (paused) and the one vCPU Worker that handles their exits. */
  async #startWorkers(w: Worker): Promise<void> {
    this.#workers.push(w);
    const ready = new Promise<void>((resolve, reject) => {
      w.onerror = (e) => {
        e.preventDefault();
        reject(new Error(`vCPU worker failed: ${e.message}`));
        this.#onExit({ reason: "error", detail: `vCPU worker failed: ${e.message}` });
      };
      w.onmessage = (e: MessageEvent<VcpuReady | VcpuEvent>) => {
        const m = e.data;
        if (m.type === "ready") resolve();
        else this.#onVcpuEvent(m);
      };
    });
    // Nothing awaited since the Worker was created, so the handlers above see all its messages.
    await this.control.start();
    const init: VcpuInit = { type: "init", host: this.control.hostPlan(), devices: this.platform.plan() };
    w.postMessage(init);
    await ready;
  }

  #onVcpuEvent(m: VcpuEvent): void {
    if (m.kind === "shutdown") this.#onExit({ reason: "triple-fault", detail: m.detail });
    else if (m.kind === "request") {
      this.#onExit({ reason: m.request === "reset" ? "reset" : "poweroff", detail: m.detail });
    } else this.#onExit({ reason: "error", detail: m.detail });
  }

  #onExit(e: VmExit): void {
    if (this.#exited) return;
    this.#exited = e;
    for (const l of this.#exitListeners) l(e);
  }

  /** Called once when the guest powers off, resets, triple-faults or a vCPU fails. */
  onExit(listener: (e: VmExit) => void): void {
    this.#exitListeners.push(listener);
  }

  get exited(): VmExit | undefined {
    return this.#exited;
  }

  get paused(): boolean {
    return this.#paused;
  }

  /** Starts or resumes the I/O Worker and every vCPU. */
  resume(): Promise<void> {
    this.#io?.resume();
    this.control.resume();
    this.#paused = false;
    return Promise.resolve();
  }

  /**
   * A migration destination's RAM, mapped in small pages for the landing, takes transparent huge
   * pages from now on ({@linkcode adviseHugePages}).
   */
  adviseHugePages(): void {
    adviseHugePages(this.layout);
  }

  /**
   * Stops every vCPU outside KVM_RUN, then the I/O Worker once every request it took has
   * completed; returns when all are quiet.
   */
  async pause(): Promise<void> {
    await this.throttle.stop();
    await this.control.pause();
    await this.#io?.pause();
    this.#paused = true;
  }

  /**
   * Everything with migratable state, in restore order: the kernel state (`vm:kernel`; irqchip
   * before any LAPIC), each vCPU (`vcpu:<i>`), platform devices, PCI transports, PCI devices.
   * Migration maps this one list to its sections, both ways.
   */
  migratables(): Migratable[] {
    return [
      new VmKernelMigratable({
        save: () => this.saveKernelState(),
        restore: (s) => this.restoreKernelState(s),
      }),
      ...this.vcpus.map((_, i) =>
        new VcpuMigratable(i, { save: () => this.saveVcpu(i), restore: (s) => this.restoreVcpu(i, s) })
      ),
      ...this.platform.migratables(),
      ...(this.pci?.migratables() ?? []),
    ];
  }

  /** Thread ids of the vCPUs (query-cpus-fast). */
  threadIds(): readonly number[] {
    return this.control.tids();
  }

  // ---- state ------------------------------------------------------------------------------------

  /** Reads every state item of vCPU `i` (paused). */
  saveVcpu(i: number): VcpuState {
    const v = this.vcpus[i]!;
    return {
      regs: v.getRegs(),
      sregs: v.getSregs(),
      fpu: v.getFpu(),
      xsave: v.getXsave(),
      xcrs: v.getXcrs(),
      debugregs: v.getDebugregs(),
      lapic: v.getLapic(),
      events: v.getVcpuEvents(),
      mpState: v.getMpState(),
      msrs: v.getMsrs(this.msrIndices),
    };
  }

  /**
   * Writes every state item of vCPU `i`. Order matters: sregs before MSRs (PVM's native-mode MSR
   * is accepted only on a configured vCPU), LAPIC after the irqchip.
   */
  restoreVcpu(i: number, s: VcpuState): void {
    const v = this.vcpus[i]!;
    v.setSregs(s.sregs);
    v.setRegs(s.regs);
    v.setFpu(s.fpu);
    v.setXsave(s.xsave);
    v.setXcrs(s.xcrs);
    v.setLapic(s.lapic);
    const refused = v.setMsrs(s.msrs.filter((m) => this.msrIndices.includes(m.index)));
    if (refused.length > 0) {
      log.debug("vCPU %d refused MSRs %s", i, refused.map((x) => "0x" + x.toString(16)).join(" "));
    }
    const missingPlatform = refused.filter((x) => !this.#kvmMsrs.has(x));
    if (missingPlatform.length > 0) {
      throw new Error(
        `Cannot restore vCPU ${i}: platform MSR ${
          missingPlatform.map((x) => "0x" + x.toString(16)).join(", ")
        } refused`,
      );
    }
    v.setVcpuEvents(s.events);
    v.setMpState(s.mpState);
    v.setDebugregs(s.debugregs);
  }

  /** PIC ×2, IOAPIC, PIT and kvmclock (paused). */
  saveKernelState(): VmKernelState {
    return {
      irqchips: [0, 1, 2].map((c) => this.vmFd.getIrqchip(c)),
      pit: this.vmFd.getPit2(),
      clock: this.vmFd.getClock(),
    };
  }

  /**
   * Restores PIC, IOAPIC, PIT and the clock. The clock is advanced by the real time that passed
   * since it was saved when the host supports `KVM_CLOCK_REALTIME`, so the guest clock does not
   * freeze across a migration.
   */
  restoreKernelState(s: VmKernelState): void {
    s.irqchips.forEach((c) => this.vmFd.setIrqchip(c));
    this.vmFd.setPit2(s.pit);
    const clock = new Uint8Array(s.clock);
    const dv = new DataView(clock.buffer);
    const savedFlags = dv.getUint32(8, true);
    const canRealtime = (this.vmFd.checkExtension(CAP.ADJUST_CLOCK) & CLOCK_REALTIME) !== 0;
    dv.setUint32(8, canRealtime && (savedFlags & CLOCK_REALTIME) ? CLOCK_REALTIME : 0, true);
    this.vmFd.setClock(clock);
  }

  /** Puts every vCPU back to its state at creation and reloads the kernel (QMP system_reset). */
  async reset(): Promise<void> {
    const wasRunning = !this.#paused;
    await this.pause();
    this.#bootState.forEach((s, i) => this.restoreVcpu(i, s));
    this.platform.reset();
    this.pci?.reset();
    if (this.spec.kernel) this.#boot();
    if (wasRunning) await this.resume();
  }

  // ---- dirty logging ------------------------------------------------------------------------------

  #setLogging(on: boolean): void {
    for (const r of this.layout.regions) {
      this.vmFd.setMemorySlot({
        slot: r.slot,
        flags: on ? MEM_LOG_DIRTY_PAGES : 0,
        gpa: r.gpa,
        sizeBytes: r.sizeBytes,
        hostAddr: r.hostAddr,
      });
    }
    this.#dirtyLogging = on;
  }

  /** Turns KVM dirty logging on for every slot and clears the VMM bitmap. */
  startDirtyLog(): void {
    this.#setLogging(true);
    this.memory.regions.forEach((r) => new Int32Array(r.vmmDirty).fill(0));
  }

  /** Per region: KVM's log OR the VMM's bitmap of its own writes; both are cleared. */
  syncDirtyLog(): Uint32Array[] {
    if (!this.#dirtyLogging) throw new Error("Cannot read the dirty log: dirty logging is off");
    return this.memory.regions.map((r, i) => {
      const pages = r.sizeBytes / 4096;
      const bitmap = new Uint32Array(Math.ceil(pages / 64) * 2);
      this.vmFd.getDirtyLog(r.slot, bitmap);
      this.memory.takeVmmDirty(i, bitmap);
      return bitmap;
    });
  }

  stopDirtyLog(): void {
    if (this.#dirtyLogging) this.#setLogging(false);
  }

  get dirtyLogging(): boolean {
    return this.#dirtyLogging;
  }

  // ---- teardown -----------------------------------------------------------------------------------

  /** Stops the vCPU threads and releases every resource. Idempotent. */
  async destroy(): Promise<void> {
    if (this.#destroyed) return;
    this.#destroyed = true;
    await this.throttle.stop();
    await this.control.stop();
    for (const w of this.#workers) w.terminate();
    this.control.release();
    await this.#io?.stop();
    this.pci?.close();
    this.platform.close();
    for (const v of this.vcpus) v.close();
    this.vmFd.close();
    this.kvm.close();
    // Workers are gone, so no view over guest RAM is used any more.
    freeRam(this.layout);
  }
}
