/**
 * Plain-data views of `kvm_regs` and `kvm_sregs` for the few fields ferry sets by name (boot
 * state); migration moves the raw structs.
 * @module
 */
import { ABI } from "../ffi/abi.ts";

/** Plain `kvm_segment`. */
export interface Segment {
  base: number;
  limit: number;
  selector: number;
  type: number;
  present: number;
  dpl: number;
  db: number;
  s: number;
  l: number;
  g: number;
}

/** Plain descriptor table register. */
export interface DTable {
  base: number;
  limit: number;
}

/** The general registers ferry sets at boot (others zero). */
export interface BootRegs {
  rip: number;
  rsp: number;
  rsi: number;
  rflags: number;
  rbx?: number;
}

/** The special registers ferry sets at boot. */
export interface BootSregs {
  cr0: number;
  cr3: number;
  cr4: number;
  efer: number;
  cs: Segment;
  ds: Segment;
  es: Segment;
  fs: Segment;
  gs: Segment;
  ss: Segment;
  tr?: Segment;
  gdt: DTable;
  idt: DTable;
}

// kvm_regs: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags, u64 each.
const REG_INDEX = {
  rax: 0,
  rbx: 1,
  rcx: 2,
  rdx: 3,
  rsi: 4,
  rdi: 5,
  rsp: 6,
  rbp: 7,
  rip: 16,
  rflags: 17,
} as const;

/** Encodes boot registers into a raw `kvm_regs`. */
export function encodeRegs(r: BootRegs): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(ABI.kvm_regs);
  const dv = new DataView(b.buffer);
  dv.setBigUint64(REG_INDEX.rip * 8, BigInt(r.rip), true);
  dv.setBigUint64(REG_INDEX.rsp * 8, BigInt(r.rsp), true);
  dv.setBigUint64(REG_INDEX.rsi * 8, BigInt(r.rsi), true);
  dv.setBigUint64(REG_INDEX.rflags * 8, BigInt(r.rflags), true);
  if (r.rbx !== undefined) dv.setBigUint64(REG_INDEX.rbx * 8, BigInt(r.rbx), true);
  return b;
}

/** Reads one named register from a raw `kvm_regs`. */
export function regValue(raw: Uint8Array, name: keyof typeof REG_INDEX): bigint {
  return new DataView(raw.buffer, raw.byteOffset, raw.byteLength).getBigUint64(REG_INDEX[name] * 8, true);
}

function putSegment(dv: DataView, off: number, s: Segment): void {
  dv.setBigUint64(off, BigInt(s.base), true);
  dv.setUint32(off + 8, s.limit >>> 0, true);
  dv.setUint16(off + 12, s.selector, true);
  dv.setUint8(off + 14, s.type);
  dv.setUint8(off + 15, s.present);
  dv.setUint8(off + 16, s.dpl);
  dv.setUint8(off + 17, s.db);
  dv.setUint8(off + 18, s.s);
  dv.setUint8(off + 19, s.l);
  dv.setUint8(off + 20, s.g);
  dv.setUint8(off + 21, 0);
  dv.setUint8(off + 22, 0);
}

/**
 * Applies boot special registers onto a raw `kvm_sregs` read from the vCPU (keeping apic_base
 * and the rest as KVM set them).
 */
export function applySregs(raw: Uint8Array<ArrayBuffer>, s: BootSregs): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(raw);
  const dv = new DataView(out.buffer);
  const seg = ABI.kvm_segment;
  const order = [s.cs, s.ds, s.es, s.fs, s.gs, s.ss] as const;
  order.forEach((g, i) => putSegment(dv, i * seg, g));
  if (s.tr) putSegment(dv, ABI["kvm_sregs.tr"], s.tr);
  dv.setBigUint64(ABI["kvm_sregs.gdt"], BigInt(s.gdt.base), true);
  dv.setUint16(ABI["kvm_sregs.gdt"] + 8, s.gdt.limit, true);
  dv.setBigUint64(ABI["kvm_sregs.idt"], BigInt(s.idt.base), true);
  dv.setUint16(ABI["kvm_sregs.idt"] + 8, s.idt.limit, true);
  dv.setBigUint64(ABI["kvm_sregs.cr0"], BigInt(s.cr0), true);
  dv.setBigUint64(ABI["kvm_sregs.cr3"], BigInt(s.cr3), true);
  dv.setBigUint64(ABI["kvm_sregs.cr4"], BigInt(s.cr4), true);
  dv.setBigUint64(ABI["kvm_sregs.efer"], BigInt(s.efer), true);
  return out;
}
