/**
 * The boot vCPU's initial 64-bit state for the Linux 64-bit boot protocol (boot.rst "64-bit BOOT
 * PROTOCOL"): long mode with paging, `__BOOT_CS` = 0x10 and `__BOOT_DS` = 0x18 flat segments,
 * interrupts off, `rsi` = zero page. Writes the GDT and identity page tables into guest memory and
 * returns the registers as plain data (the vCPU code turns them into `KVM_SET_(S)REGS`).
 *
 * The page tables map 0..4 GiB with 2 MiB pages and set U/S=1 at every level: this host's
 * paravirtual KVM (kvm_pvm) needs it to run the guest natively, and Linux does not mind.
 * @module
 */
import type { GuestMemory } from "../../memory/guest_memory.ts";
import type { BootRegs, BootSregs, Segment } from "../../kvm/regs.ts";
import {
  BOOT_STACK_POINTER,
  GDT_GPA,
  PAGE_BYTES,
  PD_COUNT,
  PD_GPA,
  PDPT_GPA,
  PML4_GPA,
  TSS_GPA,
} from "./layout.ts";

/** Code segment selector (`__BOOT_CS`). */
export const BOOT_CS = 0x10;
/** Data segment selector (`__BOOT_DS`). */
export const BOOT_DS = 0x18;
/** TSS selector. */
export const BOOT_TSS = 0x20;
/** 64-bit code: base 0, limit 0xfffff, G=1, L=1, P=1, DPL 0, type 0xb (execute/read, accessed). */
export const GDT_CODE64 = 0x00af_9b00_0000_ffffn;
/** Data: base 0, limit 0xfffff, G=1, D/B=1, P=1, DPL 0, type 0x3 (read/write, accessed). */
export const GDT_DATA = 0x00cf_9300_0000_ffffn;
/** GDT entries: null, null, code, data, TSS (two slots). */
export const GDT_ENTRIES = 6;
/** TSS limit (a 104-byte 64-bit TSS, no I/O bitmap). */
export const TSS_LIMIT = 0x67;

/** CR0: PG | AM | WP | NE | ET | MP | PE. */
export const BOOT_CR0 = 0x8005_0033;
/** CR4: PAE only (never SMEP/SMAP: the guest runs with U/S=1 mappings). */
export const BOOT_CR4 = 0x20;
/** EFER: NXE | LMA | LME. */
export const BOOT_EFER = 0xd00;
/** Page table entry flags for PML4 and PDPT entries: present, writable, user. */
export const PTE_TABLE = 0x7;
/** Page directory entry flags for 2 MiB pages: present, writable, user, page size. */
export const PTE_LARGE = 0x87;

/** The initial boot vCPU state as plain data. */
export interface VcpuBootState {
  /** General registers: rip = entry, rsp = boot stack, rsi = zero page, rflags = 2. */
  regs: BootRegs;
  /** Special registers: long mode, flat segments, GDT, no IDT. */
  sregs: BootSregs;
}

/**
 * Writes the GDT at {@linkcode GDT_GPA} (and a zero TSS at {@linkcode TSS_GPA}).
 * @param memory guest RAM
 * @returns the GDT register value
 */
export function writeGdt(memory: GuestMemory): { base: number; limit: number } {
  const gdt = new Uint8Array(GDT_ENTRIES * 8);
  const v = new DataView(gdt.buffer);
  v.setBigUint64(BOOT_CS, GDT_CODE64, true);
  v.setBigUint64(BOOT_DS, GDT_DATA, true);
  // 64-bit TSS descriptor (16 bytes), type 0xb (busy, as after LTR), present.
  const base = BigInt(TSS_GPA);
  const low = BigInt(TSS_LIMIT) | ((base & 0xff_ffffn) << 16n) | (0x8bn << 40n) |
    (((base >> 24n) & 0xffn) << 56n);
  v.setBigUint64(BOOT_TSS, low, true);
  v.setBigUint64(BOOT_TSS + 8, base >> 32n, true);
  memory.write(GDT_GPA, gdt);
  memory.fill(TSS_GPA, TSS_LIMIT + 1, 0);
  return { base: GDT_GPA, limit: gdt.length - 1 };
}

/**
 * Writes identity page tables for 0..4 GiB with 2 MiB pages: PML4 at {@linkcode PML4_GPA}, one PDPT,
 * {@linkcode PD_COUNT} PDs; U/S=1 at every level.
 * @param memory guest RAM
 * @returns the CR3 value
 */
export function writePageTables(memory: GuestMemory): number {
  const tables = new Uint8Array((2 + PD_COUNT) * PAGE_BYTES);
  const v = new DataView(tables.buffer);
  const at = (gpa: number) => gpa - PML4_GPA;
  v.setBigUint64(at(PML4_GPA), BigInt(PDPT_GPA | PTE_TABLE), true);
  for (let i = 0; i < PD_COUNT; i++) {
    const pd = PD_GPA + i * PAGE_BYTES;
    v.setBigUint64(at(PDPT_GPA) + i * 8, BigInt(pd | PTE_TABLE), true);
    for (let j = 0; j < 512; j++) {
      const page = (BigInt(i) << 30n) | (BigInt(j) << 21n);
      v.setBigUint64(at(pd) + j * 8, page | BigInt(PTE_LARGE), true);
    }
  }
  memory.write(PML4_GPA, tables);
  return PML4_GPA;
}

function flat(selector: number, code: boolean): Segment {
  return {
    base: 0,
    limit: 0xffff_ffff,
    selector,
    type: code ? 0xb : 0x3,
    present: 1,
    dpl: 0,
    db: code ? 0 : 1,
    s: 1,
    l: code ? 1 : 0,
    g: 1,
  };
}

/**
 * Writes the GDT and page tables and returns the boot vCPU's registers for a 64-bit entry.
 * @param memory guest RAM
 * @param options `entry` (rip) and `bootParamsGpa` (rsi)
 * @returns the register state
 * @example
 * ```ts
 * const { regs, sregs } = setupBootCpu(memory, { entry: 0x1000000, bootParamsGpa: 0x2000 });
 * ```
 */
export function setupBootCpu(
  memory: GuestMemory,
  options: { entry: number; bootParamsGpa: number },
): VcpuBootState {
  const gdt = writeGdt(memory);
  const cr3 = writePageTables(memory);
  const code = flat(BOOT_CS, true);
  const data = flat(BOOT_DS, false);
  const tr: Segment = {
    base: TSS_GPA,
    limit: TSS_LIMIT,
    selector: BOOT_TSS,
    type: 0xb,
    present: 1,
    dpl: 0,
    db: 0,
    s: 0,
    l: 0,
    g: 0,
  };
  return {
    regs: { rip: options.entry, rsp: BOOT_STACK_POINTER, rsi: options.bootParamsGpa, rflags: 2 },
    sregs: {
      cr0: BOOT_CR0,
      cr3,
      cr4: BOOT_CR4,
      efer: BOOT_EFER,
      cs: code,
      ds: data,
      es: { ...data },
      fs: { ...data },
      gs: { ...data },
      ss: { ...data },
      tr,
      gdt,
      idt: { base: 0, limit: 0 },
    },
  };
}
