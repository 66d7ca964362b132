/**
 * Typed owners of KVM's three fd kinds (kvm-ioctls shape): {@linkcode Kvm} (/dev/kvm),
 * {@linkcode VmFd} and {@linkcode VcpuFd}. No raw pointers leak: callers pass and get typed
 * arrays and plain data. Fds are process-wide, so a Worker can rebuild a `VcpuFd` from its number.
 * @module
 */
import { check } from "../ffi/errno.ts";
import { cString, shim, viewAt } from "../ffi/shim.ts";
import { ABI, KVM_IRQCHIP_SIZE } from "../ffi/abi.ts";
import { CAP, KVM, MSR_PVM_ID, MSR_PVM_NATIVE } from "./ioctls.ts";

const O_RDWR = 2, O_CLOEXEC = 0o2000000;

function buf(n: number): Uint8Array<ArrayBuffer> {
  return new Uint8Array(n);
}

/** One `kvm_cpuid_entry2` as plain data. */
export interface CpuidEntry {
  function: number;
  index: number;
  flags: number;
  eax: number;
  ebx: number;
  ecx: number;
  edx: number;
}

/** /dev/kvm. */
export class Kvm {
  readonly fd: number;

  constructor(path = "/dev/kvm") {
    this.fd = check(shim().ferry_open(cString(path), O_RDWR | O_CLOEXEC, 0), `open '${path}'`);
  }

  apiVersion(): number {
    return check(shim().ferry_ioctl_val(this.fd, KVM.GET_API_VERSION, 0n), "read KVM API version");
  }

  /** KVM_CHECK_EXTENSION; 0 when absent. */
  checkExtension(cap: number): number {
    return Math.max(0, Number(shim().ferry_ioctl_val(this.fd, KVM.CHECK_EXTENSION, BigInt(cap))));
  }

  vcpuMmapSize(): number {
    return check(shim().ferry_ioctl_val(this.fd, KVM.GET_VCPU_MMAP_SIZE, 0n), "read vCPU mmap size");
  }

  /** KVM_GET_SUPPORTED_CPUID. */
  supportedCpuid(): CpuidEntry[] {
    const max = 256;
    const b = buf(8 + max * 40);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, max, true);
    check(shim().ferry_ioctl_ptr(this.fd, KVM.GET_SUPPORTED_CPUID, b), "get supported CPUID");
    const n = dv.getUint32(0, true);
    const out: CpuidEntry[] = [];
    for (let i = 0; i < n; i++) {
      const o = 8 + i * 40;
      out.push({
        function: dv.getUint32(o, true),
        index: dv.getUint32(o + 4, true),
        flags: dv.getUint32(o + 8, true),
        eax: dv.getUint32(o + 12, true),
        ebx: dv.getUint32(o + 16, true),
        ecx: dv.getUint32(o + 20, true),
        edx: dv.getUint32(o + 24, true),
      });
    }
    return out;
  }

  /** KVM_GET_MSR_INDEX_LIST. */
  msrIndexList(): number[] {
    const max = 1024;
    const b = buf(4 + max * 4);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, max, true);
    check(shim().ferry_ioctl_ptr(this.fd, KVM.GET_MSR_INDEX_LIST, b), "get MSR index list");
    const n = dv.getUint32(0, true);
    return Array.from({ length: n }, (_, i) => dv.getUint32(4 + i * 4, true));
  }

  createVm(): VmFd {
    const fd = check(shim().ferry_ioctl_val(this.fd, KVM.CREATE_VM, 0n), "create VM");
    return new VmFd(fd, this);
  }

  close(): void {
    shim().ferry_close(this.fd);
  }
}

/** A memory slot as KVM sees it. */
export interface MemorySlot {
  slot: number;
  flags: number;
  gpa: number;
  sizeBytes: number;
  hostAddr: bigint;
}

/** One entry of `KVM_SET_GSI_ROUTING` (`struct kvm_irq_routing_entry`, 48 bytes). */
export type KvmIrqRoute =
  | { gsi: number; kind: "irqchip"; chip: number; pin: number }
  | { gsi: number; kind: "msi"; addressLo: number; addressHi: number; data: number };

/** A VM fd. */
export class VmFd {
  readonly fd: number;
  readonly #kvm: Kvm | undefined;
  /** @param kvm the `/dev/kvm` it came from; undefined for {@linkcode fromRawFd} */
  constructor(fd: number, kvm: Kvm | undefined) {
    this.fd = fd;
    this.#kvm = kvm;
  }

  /**
   * A `VmFd` over a VM fd number another thread opened (fds are process-wide), e.g. in a Worker.
   * VM ioctls only: it does not own the fd, and {@linkcode createVcpu} needs the `Kvm` it lacks.
   */
  static fromRawFd(fd: number): VmFd {
    return new VmFd(fd, undefined);
  }

  /** The `/dev/kvm` this VM was created from. */
  get kvm(): Kvm {
    if (!this.#kvm) throw new Error(`Cannot use /dev/kvm through VM fd ${this.fd}: it was opened elsewhere`);
    return this.#kvm;
  }

  #ptr(req: bigint, b: Uint8Array<ArrayBuffer>, op: string): number {
    return check(shim().ferry_ioctl_ptr(this.fd, req, b), op);
  }

  checkExtension(cap: number): number {
    return Math.max(0, Number(shim().ferry_ioctl_val(this.fd, KVM.CHECK_EXTENSION, BigInt(cap))));
  }

  setMemorySlot(s: MemorySlot): void {
    const b = buf(ABI.kvm_userspace_memory_region);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, s.slot, true);
    dv.setUint32(4, s.flags, true);
    dv.setBigUint64(8, BigInt(s.gpa), true);
    dv.setBigUint64(16, BigInt(s.sizeBytes), true);
    dv.setBigUint64(24, s.hostAddr, true);
    this.#ptr(KVM.SET_USER_MEMORY_REGION, b, `set memory slot ${s.slot}`);
  }

  /** KVM_GET_DIRTY_LOG of one slot into `bitmap` (one bit per page, cleared by KVM). */
  getDirtyLog(slot: number, bitmap: Uint32Array<ArrayBuffer>): void {
    const b = buf(ABI.kvm_dirty_log);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, slot, true);
    const ptr = Deno.UnsafePointer.of(bitmap);
    dv.setBigUint64(8, BigInt(Deno.UnsafePointer.value(ptr)), true);
    this.#ptr(KVM.GET_DIRTY_LOG, b, `get dirty log of slot ${slot}`);
  }

  setTssAddr(addr: number): void {
    check(shim().ferry_ioctl_val(this.fd, KVM.SET_TSS_ADDR, BigInt(addr)), "set TSS address");
  }

  setIdentityMapAddr(addr: number): void {
    const b = buf(8);
    new DataView(b.buffer).setBigUint64(0, BigInt(addr), true);
    this.#ptr(KVM.SET_IDENTITY_MAP_ADDR, b, "set identity map address");
  }

  createIrqchip(): void {
    check(shim().ferry_ioctl_val(this.fd, KVM.CREATE_IRQCHIP, 0n), "create in-kernel irqchip");
  }

  createPit2(): void {
    // kvm_pit_config { flags = KVM_PIT_SPEAKER_DUMMY }: the kernel also answers port 0x61, whose
    // gate/output bits guests use to calibrate the TSC against PIT channel 2.
    const b = buf(64);
    new DataView(b.buffer).setUint32(0, 1, true);
    this.#ptr(KVM.CREATE_PIT2, b, "create in-kernel PIT");
  }

  /** KVM_IRQ_LINE. */
  irqLine(irq: number, level: boolean): void {
    const b = buf(ABI.kvm_irq_level);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, irq, true);
    dv.setUint32(4, level ? 1 : 0, true);
    this.#ptr(KVM.IRQ_LINE, b, `set IRQ line ${irq}`);
  }

  /** Raw `struct kvm_irqchip` of chip 0 (PIC master), 1 (PIC slave) or 2 (IOAPIC). */
  getIrqchip(chip: number): Uint8Array<ArrayBuffer> {
    const b = buf(KVM_IRQCHIP_SIZE);
    new DataView(b.buffer).setUint32(0, chip, true);
    this.#ptr(KVM.GET_IRQCHIP, b, `get irqchip ${chip}`);
    return b;
  }

  setIrqchip(raw: Uint8Array): void {
    this.#ptr(KVM.SET_IRQCHIP, sized(raw, KVM_IRQCHIP_SIZE, "irqchip"), "set irqchip");
  }

  getPit2(): Uint8Array<ArrayBuffer> {
    const b = buf(ABI.kvm_pit_state2);
    this.#ptr(KVM.GET_PIT2, b, "get PIT state");
    return b;
  }

  setPit2(raw: Uint8Array): void {
    this.#ptr(KVM.SET_PIT2, sized(raw, ABI.kvm_pit_state2, "PIT state"), "set PIT state");
  }

  /** KVM_GET_CLOCK as raw `kvm_clock_data`. */
  getClock(): Uint8Array<ArrayBuffer> {
    const b = buf(ABI.kvm_clock_data);
    this.#ptr(KVM.GET_CLOCK, b, "get kvmclock");
    return b;
  }

  setClock(raw: Uint8Array): void {
    this.#ptr(KVM.SET_CLOCK, sized(raw, ABI.kvm_clock_data, "clock"), "set kvmclock");
  }

  /** KVM_IOEVENTFD for a PIO or MMIO address (`datamatch` unused). */
  ioeventfd(opts: { addr: number; len: number; fd: number; pio: boolean; deassign?: boolean }): void {
    const b = buf(ABI.kvm_ioeventfd);
    const dv = new DataView(b.buffer);
    dv.setBigUint64(8, BigInt(opts.addr), true);
    dv.setUint32(16, opts.len, true);
    dv.setInt32(20, opts.fd, true);
    dv.setUint32(24, (opts.pio ? 2 : 0) | (opts.deassign ? 4 : 0), true);
    this.#ptr(KVM.IOEVENTFD, b, `register ioeventfd at 0x${opts.addr.toString(16)}`);
  }

  /** KVM_IRQFD: `fd` raises GSI `gsi`. */
  irqfd(opts: { fd: number; gsi: number; deassign?: boolean }): void {
    const b = buf(ABI.kvm_irqfd);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, opts.fd, true);
    dv.setUint32(4, opts.gsi, true);
    dv.setUint32(8, opts.deassign ? 1 : 0, true);
    this.#ptr(KVM.IRQFD, b, `register irqfd for GSI ${opts.gsi}`);
  }

  createVcpu(id: number): VcpuFd {
    const fd = check(shim().ferry_ioctl_val(this.fd, KVM.CREATE_VCPU, BigInt(id)), `create vCPU ${id}`);
    return new VcpuFd(fd, id, this.kvm.vcpuMmapSize());
  }

  close(): void {
    shim().ferry_close(this.fd);
  }

  /**
   * KVM_SET_GSI_ROUTING: replaces the VM's whole GSI routing table (irqchip pins and MSI routes).
   * Include the irqchip defaults for GSI 0..23 or the IOAPIC/PIC lose their routes.
   */
  setGsiRouting(routes: KvmIrqRoute[]): void {
    const entry = ABI.kvm_irq_routing_entry;
    const b = buf(8 + routes.length * entry);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, routes.length, true);
    routes.forEach((r, i) => {
      const o = 8 + i * entry;
      dv.setUint32(o, r.gsi, true);
      if (r.kind === "irqchip") {
        dv.setUint32(o + 4, 1, true); // KVM_IRQ_ROUTING_IRQCHIP
        dv.setUint32(o + 16, r.chip, true);
        dv.setUint32(o + 20, r.pin, true);
      } else {
        dv.setUint32(o + 4, 2, true); // KVM_IRQ_ROUTING_MSI
        dv.setUint32(o + 16, r.addressLo, true);
        dv.setUint32(o + 20, r.addressHi, true);
        dv.setUint32(o + 24, r.data, true);
      }
    });
    this.#ptr(KVM.SET_GSI_ROUTING, b, `set ${routes.length} GSI routes`);
  }

  /** KVM_SIGNAL_MSI: injects one MSI directly. @returns 0 when the guest blocked it, 1 when delivered */
  signalMsi(msi: { addressLo: number; addressHi: number; data: number }): number {
    const b = buf(ABI.kvm_msi);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, msi.addressLo, true);
    dv.setUint32(4, msi.addressHi, true);
    dv.setUint32(8, msi.data, true);
    return this.#ptr(
      KVM.SIGNAL_MSI,
      b,
      `signal MSI 0x${msi.addressLo.toString(16)}/0x${msi.data.toString(16)}`,
    );
  }
}

function sized(raw: Uint8Array, n: number, what: string): Uint8Array<ArrayBuffer> {
  if (raw.length !== n) throw new RangeError(`Cannot restore ${what}: ${raw.length} bytes, expected ${n}`);
  const b = buf(n);
  b.set(raw);
  return b;
}

/** One MSR value. */
export interface MsrValue {
  index: number;
  value: bigint;
}

/** A vCPU fd with its mmapped `kvm_run`. */
export class VcpuFd {
  readonly fd: number;
  readonly id: number;
  /** Host address of the `kvm_run` mapping. */
  readonly runAddr: bigint;
  readonly runSize: number;

  /**
   * @param fd the vCPU fd (process-wide; valid in Workers)
   * @param id vCPU index
   * @param runSize KVM_GET_VCPU_MMAP_SIZE
   * @param runAddr an existing `kvm_run` mapping (a Worker reuses the main thread's)
   */
  constructor(fd: number, id: number, runSize: number, runAddr?: bigint) {
    this.fd = fd;
    this.id = id;
    this.runSize = runSize;
    if (runAddr !== undefined) this.runAddr = runAddr;
    else {
      // PROT_READ|PROT_WRITE, MAP_SHARED
      this.runAddr = BigInt(
        check(shim().ferry_mmap(0n, BigInt(runSize), 3, 1, fd, 0n), `map kvm_run of vCPU ${id}`),
      );
    }
  }

  /** A view of `kvm_run`: create once per thread and keep. */
  runView(): Uint8Array<ArrayBuffer> {
    return viewAt(this.runAddr, this.runSize);
  }

  #get(req: bigint, n: number, op: string): Uint8Array<ArrayBuffer> {
    const b = buf(n);
    check(shim().ferry_ioctl_ptr(this.fd, req, b), `${op} of vCPU ${this.id}`);
    return b;
  }

  #set(req: bigint, raw: Uint8Array, n: number, op: string): void {
    check(shim().ferry_ioctl_ptr(this.fd, req, sized(raw, n, op)), `${op} of vCPU ${this.id}`);
  }

  getRegs(): Uint8Array<ArrayBuffer> {
    return this.#get(KVM.GET_REGS, ABI.kvm_regs, "get registers");
  }
  setRegs(raw: Uint8Array): void {
    this.#set(KVM.SET_REGS, raw, ABI.kvm_regs, "set registers");
  }
  getSregs(): Uint8Array<ArrayBuffer> {
    return this.#get(KVM.GET_SREGS, ABI.kvm_sregs, "get special registers");
  }
  setSregs(raw: Uint8Array): void {
    this.#set(KVM.SET_SREGS, raw, ABI.kvm_sregs, "set special registers");
  }
  getFpu(): Uint8Array<ArrayBuffer> {
    return this.#get(KVM.GET_FPU, ABI.kvm_fpu, "get FPU state");
  }
  setFpu(raw: Uint8Array): void {
    this.#set(KVM.SET_FPU, raw, ABI.kvm_fpu, "set FPU state");
  }
  getXsave(): Uint8Array<ArrayBuffer> {
    return this.#get(KVM.GET_XSAVE, ABI.kvm_xsave, "get XSAVE state");
  }
  setXsave(raw: Uint8Array): void {
    this.#set(KVM.SET_XSAVE, raw, ABI.kvm_xsave, "set XSAVE state");
  }
  getXcrs(): Uint8Array<ArrayBuffer> {
    return this.#get(KVM.GET_XCRS, ABI.kvm_xcrs, "get XCRs");
  }
  setXcrs(raw: Uint8Array): void {
    this.#set(KVM.SET_XCRS, raw, ABI.kvm_xcrs, "set XCRs");
  }
  getDebugregs(): Uint8Array<ArrayBuffer> {
    return this.#get(KVM.GET_DEBUGREGS, ABI.kvm_debugregs, "get debug registers");
  }
  setDebugregs(raw: Uint8Array): void {
    this.#set(KVM.SET_DEBUGREGS, raw, ABI.kvm_debugregs, "set debug registers");
  }
  getLapic(): Uint8Array<ArrayBuffer> {
    return this.#get(KVM.GET_LAPIC, ABI.kvm_lapic_state, "get LAPIC");
  }
  setLapic(raw: Uint8Array): void {
    this.#set(KVM.SET_LAPIC, raw, ABI.kvm_lapic_state, "set LAPIC");
  }
  getVcpuEvents(): Uint8Array<ArrayBuffer> {
    return this.#get(KVM.GET_VCPU_EVENTS, ABI.kvm_vcpu_events, "get vCPU events");
  }
  setVcpuEvents(raw: Uint8Array): void {
    this.#set(KVM.SET_VCPU_EVENTS, raw, ABI.kvm_vcpu_events, "set vCPU events");
  }
  getMpState(): number {
    return new DataView(this.#get(KVM.GET_MP_STATE, 4, "get MP state").buffer).getUint32(0, true);
  }
  setMpState(state: number): void {
    const b = buf(4);
    new DataView(b.buffer).setUint32(0, state, true);
    this.#set(KVM.SET_MP_STATE, b, 4, "set MP state");
  }

  setCpuid(entries: CpuidEntry[]): void {
    const b = buf(8 + entries.length * 40);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, entries.length, true);
    entries.forEach((e, i) => {
      const o = 8 + i * 40;
      dv.setUint32(o, e.function, true);
      dv.setUint32(o + 4, e.index, true);
      dv.setUint32(o + 8, e.flags, true);
      dv.setUint32(o + 12, e.eax, true);
      dv.setUint32(o + 16, e.ebx, true);
      dv.setUint32(o + 20, e.ecx, true);
      dv.setUint32(o + 24, e.edx, true);
    });
    check(shim().ferry_ioctl_ptr(this.fd, KVM.SET_CPUID2, b), `set CPUID of vCPU ${this.id}`);
  }

  /**
   * Reads MSRs one at a time (a batch stops at the first failing entry, DESIGN.md §1) and
   * returns those that could be read.
   */
  getMsrs(indices: number[]): MsrValue[] {
    const out: MsrValue[] = [];
    const b = buf(8 + 16);
    const dv = new DataView(b.buffer);
    for (const index of indices) {
      dv.setUint32(0, 1, true);
      dv.setUint32(8, index, true);
      dv.setBigUint64(16, 0n, true);
      const n = Number(shim().ferry_ioctl_ptr(this.fd, KVM.GET_MSRS, b));
      if (n === 1) out.push({ index, value: dv.getBigUint64(16, true) });
    }
    return out;
  }

  /**
   * Writes MSRs one at a time so one refused entry cannot silently drop the rest.
   * @returns the indices KVM refused
   */
  setMsrs(msrs: MsrValue[]): number[] {
    const refused: number[] = [];
    const b = buf(8 + 16);
    const dv = new DataView(b.buffer);
    for (const m of msrs) {
      dv.setUint32(0, 1, true);
      dv.setUint32(8, m.index, true);
      dv.setBigUint64(16, m.value, true);
      const n = Number(shim().ferry_ioctl_ptr(this.fd, KVM.SET_MSRS, b));
      if (n !== 1) refused.push(m.index);
    }
    return refused;
  }

  close(): void {
    shim().ferry_munmap(this.runAddr, BigInt(this.runSize));
    shim().ferry_close(this.fd);
  }
}

/**
 * The platform MSRs this host reveals that `KVM_GET_MSR_INDEX_LIST` omits: on a PVM host
 * (`0x4b564d11` reads "PVM") the native-mode MSR `0x4b564d10`. Probed, never assumed.
 */
export function platformMsrs(vcpu: VcpuFd): number[] {
  const id = vcpu.getMsrs([MSR_PVM_ID]);
  if (id.length === 1 && id[0]!.value === 0x4d5650n) return [MSR_PVM_NATIVE];
  return [];
}

/** True when the host supports what ferry's machine needs. */
export function requiredCaps(kvm: Kvm): string[] {
  const missing: string[] = [];
  for (
    const [name, cap] of Object.entries({
      IRQCHIP: CAP.IRQCHIP,
      PIT2: CAP.PIT2,
      IMMEDIATE_EXIT: CAP.IMMEDIATE_EXIT,
    })
  ) {
    if (kvm.checkExtension(cap) === 0) missing.push(name);
  }
  return missing;
}
