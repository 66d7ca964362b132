/**
 * An Intel MultiProcessor Specification 1.4 table, so a kernel without ACPI finds N CPUs, the
 * IOAPIC and the ISA interrupt routing. The floating pointer sits at {@linkcode MPTABLE_GPA}
 * (0xF0000, inside the BIOS area Linux scans) and the configuration table follows it.
 *
 * Interrupt routing mirrors KVM's in-kernel irqchip defaults (and SeaBIOS): ISA IRQ n → IOAPIC
 * pin n, except IRQ0 (the PIT) → pin 2; IRQ2 (the PIC cascade) has no entry. LINT0 is ExtINT and
 * LINT1 NMI on every local APIC.
 * @module
 */
import type { GuestMemory } from "../../memory/guest_memory.ts";
import { IOAPIC_GPA, LAPIC_GPA, MPTABLE_AREA_BYTES, MPTABLE_GPA } from "./layout.ts";

/** Most CPUs ferry describes (APIC ids are 8 bits and the IOAPIC takes id N). */
export const MAX_CPUS = 254;
/** Local APIC version reported for each CPU (integrated xAPIC). */
export const LAPIC_VERSION = 0x14;
/** IOAPIC version (82093AA-compatible, 24 pins). */
export const IOAPIC_VERSION = 0x11;

const ENTRY_PROCESSOR = 0;
const ENTRY_BUS = 1;
const ENTRY_IOAPIC = 2;
const ENTRY_IO_INTERRUPT = 3;
const ENTRY_LOCAL_INTERRUPT = 4;
const INT_TYPE_INT = 0;
const INT_TYPE_NMI = 1;
const INT_TYPE_EXTINT = 3;
const CPU_ENABLED = 0x01;
const CPU_BSP = 0x02;
/** Family 6 signature and FPU|APIC feature bits, as QEMU and Firecracker report. */
const CPU_SIGNATURE = 0x600;
const CPU_FEATURES = 0x201;
const HEADER_BYTES = 44;

/** Where the table went. */
export interface MpTableResult {
  /** The 16-byte floating pointer structure. */
  floatingGpa: number;
  /** The configuration table. */
  configGpa: number;
  /** Length of the configuration table (base table). */
  configBytes: number;
  /** The IOAPIC id used (= number of CPUs). */
  ioapicId: number;
}

/** Sum of bytes modulo 256. */
export function byteSum(bytes: Uint8Array): number {
  let s = 0;
  for (const b of bytes) s = (s + b) & 0xff;
  return s;
}

function ascii(view: DataView, at: number, text: string): void {
  for (let i = 0; i < text.length; i++) view.setUint8(at + i, text.charCodeAt(i));
}

/**
 * Builds the floating pointer and configuration table bytes (without writing them).
 * @param cpus number of CPUs, 1..{@linkcode MAX_CPUS}; APIC ids 0..cpus-1, CPU 0 the BSP
 * @param gpa where the floating pointer will live (the table follows at gpa + 16)
 * @returns the bytes to place at `gpa`
 * @throws {RangeError} for a CPU count out of range
 */
export function buildMpTable(cpus: number, gpa = MPTABLE_GPA): Uint8Array {
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > MAX_CPUS) {
    throw new RangeError(`Cannot build MP table for '${cpus}' CPUs: need 1 to ${MAX_CPUS}`);
  }
  const isaIrqs = [0, 1, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
  const entryCount = cpus + 1 + 1 + isaIrqs.length + 2;
  const configBytes = HEADER_BYTES + cpus * 20 + (entryCount - cpus) * 8;
  const out = new Uint8Array(16 + configBytes);
  const v = new DataView(out.buffer);
  const configGpa = gpa + 16;
  const ioapicId = cpus;

  // Floating pointer structure (MP spec §4.1).
  ascii(v, 0, "_MP_");
  v.setUint32(4, configGpa, true);
  v.setUint8(8, 1); // length in 16-byte units
  v.setUint8(9, 4); // spec revision 1.4
  // 11..15: feature bytes 0 (a configuration table is present; virtual wire mode)

  // Configuration table header (§4.2).
  const c = 16;
  ascii(v, c, "PCMP");
  v.setUint16(c + 4, configBytes, true);
  v.setUint8(c + 6, 4);
  ascii(v, c + 8, "FERRY   ");
  ascii(v, c + 16, "Q35         ");
  v.setUint16(c + 34, entryCount, true);
  v.setUint32(c + 36, LAPIC_GPA, true);

  let p = c + HEADER_BYTES;
  for (let id = 0; id < cpus; id++) {
    v.setUint8(p, ENTRY_PROCESSOR);
    v.setUint8(p + 1, id);
    v.setUint8(p + 2, LAPIC_VERSION);
    v.setUint8(p + 3, CPU_ENABLED | (id === 0 ? CPU_BSP : 0));
    v.setUint32(p + 4, CPU_SIGNATURE, true);
    v.setUint32(p + 8, CPU_FEATURES, true);
    p += 20;
  }
  v.setUint8(p, ENTRY_BUS);
  v.setUint8(p + 1, 0);
  ascii(v, p + 2, "ISA   ");
  p += 8;
  v.setUint8(p, ENTRY_IOAPIC);
  v.setUint8(p + 1, ioapicId);
  v.setUint8(p + 2, IOAPIC_VERSION);
  v.setUint8(p + 3, 1); // enabled
  v.setUint32(p + 4, IOAPIC_GPA, true);
  p += 8;
  for (const irq of isaIrqs) {
    v.setUint8(p, ENTRY_IO_INTERRUPT);
    v.setUint8(p + 1, INT_TYPE_INT);
    v.setUint16(p + 2, 0, true); // polarity and trigger conform to the bus (ISA: edge, high)
    v.setUint8(p + 4, 0); // source bus: ISA
    v.setUint8(p + 5, irq);
    v.setUint8(p + 6, ioapicId);
    v.setUint8(p + 7, irq === 0 ? 2 : irq);
    p += 8;
  }
  for (const [type, lint] of [[INT_TYPE_EXTINT, 0], [INT_TYPE_NMI, 1]] as const) {
    v.setUint8(p, ENTRY_LOCAL_INTERRUPT);
    v.setUint8(p + 1, type);
    v.setUint16(p + 2, 0, true);
    v.setUint8(p + 4, 0);
    v.setUint8(p + 5, 0);
    v.setUint8(p + 6, 0xff); // every local APIC
    v.setUint8(p + 7, lint);
    p += 8;
  }

  v.setUint8(c + 7, (256 - byteSum(out.subarray(c, c + configBytes))) & 0xff);
  v.setUint8(10, (256 - byteSum(out.subarray(0, 16))) & 0xff);
  return out;
}

/**
 * Writes the MP table at {@linkcode MPTABLE_GPA}.
 * @param memory guest RAM
 * @param cpus number of CPUs
 * @returns where the structures are
 */
export function writeMpTable(memory: GuestMemory, cpus: number): MpTableResult {
  const bytes = buildMpTable(cpus, MPTABLE_GPA);
  if (bytes.length > MPTABLE_AREA_BYTES) throw new RangeError(`Cannot fit MP table of ${bytes.length} bytes`);
  memory.write(MPTABLE_GPA, bytes);
  return {
    floatingGpa: MPTABLE_GPA,
    configGpa: MPTABLE_GPA + 16,
    configBytes: bytes.length - 16,
    ioapicId: cpus,
  };
}
