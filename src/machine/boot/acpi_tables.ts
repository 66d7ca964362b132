/**
 * Minimal ACPI tables (ACPI 6.x): RSDP → XSDT → FADT (hardware-reduced) → DSDT, and a MADT listing
 * N local APICs, the IOAPIC, the IRQ0 → GSI 2 override and LINT1 = NMI. Written in the BIOS area at
 * {@linkcode ACPI_GPA} (the RSDP must be in 0xE0000–0xFFFFF for a kernel that scans for it; Linux
 * also gets it through `boot_params.acpi_rsdp_addr`).
 *
 * Why this is optional (off by default in `loadKernel`): with ACPI on, Linux enumerates PCI only
 * through a root bridge (`PNP0A08`) in the DSDT. The DSDT here is empty unless the machine passes
 * AML, so a q35 guest with virtio-pci needs that AML first. Without ACPI, Linux probes PCI bus 0
 * itself and takes CPUs from the MP table — except kernels built without `X86_MPPARSE` (Debian
 * cloud), which then see one CPU.
 * @module
 */
import type { GuestMemory } from "../../memory/guest_memory.ts";
import { ACPI_AREA_BYTES, ACPI_GPA, IOAPIC_GPA, LAPIC_GPA } from "./layout.ts";
import { byteSum, MAX_CPUS } from "./mptable.ts";

/** FADT flag: hardware-reduced ACPI (no PM1/GPE register blocks, no SCI). */
export const FADT_HW_REDUCED_ACPI = 1 << 20;
/** IAPC_BOOT_ARCH: legacy ISA devices (serial, RTC) exist without ACPI description. */
export const IAPC_LEGACY_DEVICES = 1 << 0;
/** IAPC_BOOT_ARCH: an i8042 keyboard controller exists (ferry uses it for reset). */
export const IAPC_8042 = 1 << 1;
/** IAPC_BOOT_ARCH: no VGA. */
export const IAPC_VGA_NOT_PRESENT = 1 << 2;

const OEM_ID = "FERRY ";
const OEM_TABLE_ID = "FERRYQ35";
const HEADER_BYTES = 36;

/** What to put in the tables. */
export interface AcpiOptions {
  /** Number of CPUs (local APIC ids 0..cpus-1; the IOAPIC gets id `cpus`). */
  cpus: number;
  /** AML for the DSDT body (e.g. a PCI root bridge); empty by default. */
  dsdtAml?: Uint8Array;
}

/** Where the tables went. */
export interface AcpiResult {
  /** The RSDP (hand to Linux in `boot_params.acpi_rsdp_addr`). */
  rsdpGpa: number;
  /** Each table by signature. */
  tables: Record<"XSDT" | "FACP" | "DSDT" | "APIC", { gpa: number; sizeBytes: number }>;
  /** Total bytes used from {@linkcode ACPI_GPA}. */
  sizeBytes: number;
}

function ascii(v: DataView, at: number, text: string): void {
  for (let i = 0; i < text.length; i++) v.setUint8(at + i, text.charCodeAt(i));
}

/** A table with its standard header filled and checksummed. */
function table(signature: string, revision: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(HEADER_BYTES + body.length);
  const v = new DataView(out.buffer);
  ascii(v, 0, signature);
  v.setUint32(4, out.length, true);
  v.setUint8(8, revision);
  ascii(v, 10, OEM_ID);
  ascii(v, 16, OEM_TABLE_ID);
  v.setUint32(24, 1, true); // OEM revision
  ascii(v, 28, "FRRY"); // creator id
  v.setUint32(32, 1, true); // creator revision
  out.set(body, HEADER_BYTES);
  v.setUint8(9, (256 - byteSum(out)) & 0xff);
  return out;
}

function madtBody(cpus: number): Uint8Array {
  const bytes = 8 + cpus * 8 + 12 + 10 + 6;
  const out = new Uint8Array(bytes);
  const v = new DataView(out.buffer);
  v.setUint32(0, LAPIC_GPA, true);
  v.setUint32(4, 1, true); // PCAT_COMPAT: dual 8259s present
  let p = 8;
  for (let id = 0; id < cpus; id++) {
    v.setUint8(p, 0); // Processor Local APIC
    v.setUint8(p + 1, 8);
    v.setUint8(p + 2, id); // ACPI processor UID
    v.setUint8(p + 3, id); // APIC id
    v.setUint32(p + 4, 1, true); // enabled
    p += 8;
  }
  v.setUint8(p, 1); // I/O APIC
  v.setUint8(p + 1, 12);
  v.setUint8(p + 2, cpus);
  v.setUint32(p + 4, IOAPIC_GPA, true);
  v.setUint32(p + 8, 0, true); // GSI base
  p += 12;
  v.setUint8(p, 2); // Interrupt Source Override: ISA IRQ0 → GSI 2 (KVM's PIT routing)
  v.setUint8(p + 1, 10);
  v.setUint8(p + 2, 0);
  v.setUint8(p + 3, 0);
  v.setUint32(p + 4, 2, true);
  v.setUint16(p + 8, 0, true); // conforms to the bus: edge, active high
  p += 10;
  v.setUint8(p, 4); // Local APIC NMI: all processors, LINT1
  v.setUint8(p + 1, 6);
  v.setUint8(p + 2, 0xff);
  v.setUint16(p + 3, 0, true);
  v.setUint8(p + 5, 1);
  return out;
}

function fadtBody(dsdtGpa: number): Uint8Array {
  const out = new Uint8Array(276 - HEADER_BYTES);
  const v = new DataView(out.buffer);
  const at = (off: number) => off - HEADER_BYTES;
  v.setUint32(at(40), dsdtGpa, true); // DSDT
  v.setUint16(at(109), IAPC_LEGACY_DEVICES | IAPC_8042 | IAPC_VGA_NOT_PRESENT, true);
  v.setUint32(at(112), FADT_HW_REDUCED_ACPI, true);
  v.setUint8(at(131), 0); // FADT minor version
  v.setBigUint64(at(140), BigInt(dsdtGpa), true); // X_DSDT
  ascii(v, at(268), "FERRYVMM"); // hypervisor vendor identity
  return out;
}

/**
 * Builds the ACPI tables for placement at `gpa`.
 * @param options CPU count and optional DSDT AML
 * @param gpa where the RSDP goes (tables follow, 16-byte aligned)
 * @returns the bytes and where each table sits
 * @throws {RangeError} for a CPU count out of range
 */
export function buildAcpiTables(
  options: AcpiOptions,
  gpa = ACPI_GPA,
): { bytes: Uint8Array; result: AcpiResult } {
  const { cpus } = options;
  if (!Number.isInteger(cpus) || cpus < 1 || cpus > MAX_CPUS) {
    throw new RangeError(`Cannot build ACPI tables for '${cpus}' CPUs: need 1 to ${MAX_CPUS}`);
  }
  const align = (n: number) => Math.ceil(n / 16) * 16;
  const rsdpBytes = 36;
  const xsdtGpa = gpa + align(rsdpBytes);
  const xsdtBytes = HEADER_BYTES + 2 * 8;
  const fadtGpa = xsdtGpa + align(xsdtBytes);
  const dsdtGpa = fadtGpa + align(276);
  const dsdt = table("DSDT", 2, options.dsdtAml ?? new Uint8Array(0));
  const madtGpa = dsdtGpa + align(dsdt.length);
  const madt = table("APIC", 5, madtBody(cpus));
  const fadt = table("FACP", 6, fadtBody(dsdtGpa));
  const xsdtBody = new Uint8Array(16);
  const xv = new DataView(xsdtBody.buffer);
  xv.setBigUint64(0, BigInt(fadtGpa), true);
  xv.setBigUint64(8, BigInt(madtGpa), true);
  const xsdt = table("XSDT", 1, xsdtBody);

  const rsdp = new Uint8Array(rsdpBytes);
  const rv = new DataView(rsdp.buffer);
  ascii(rv, 0, "RSD PTR ");
  ascii(rv, 9, OEM_ID);
  rv.setUint8(15, 2); // revision: ACPI 2.0+
  rv.setUint32(16, 0, true); // no RSDT
  rv.setUint32(20, rsdpBytes, true);
  rv.setBigUint64(24, BigInt(xsdtGpa), true);
  rv.setUint8(8, (256 - byteSum(rsdp.subarray(0, 20))) & 0xff);
  rv.setUint8(32, (256 - byteSum(rsdp)) & 0xff);

  const total = madtGpa + madt.length - gpa;
  const bytes = new Uint8Array(total);
  bytes.set(rsdp, 0);
  bytes.set(xsdt, xsdtGpa - gpa);
  bytes.set(fadt, fadtGpa - gpa);
  bytes.set(dsdt, dsdtGpa - gpa);
  bytes.set(madt, madtGpa - gpa);
  return {
    bytes,
    result: {
      rsdpGpa: gpa,
      tables: {
        XSDT: { gpa: xsdtGpa, sizeBytes: xsdt.length },
        FACP: { gpa: fadtGpa, sizeBytes: fadt.length },
        DSDT: { gpa: dsdtGpa, sizeBytes: dsdt.length },
        APIC: { gpa: madtGpa, sizeBytes: madt.length },
      },
      sizeBytes: total,
    },
  };
}

/**
 * Writes the ACPI tables at {@linkcode ACPI_GPA}.
 * @param memory guest RAM
 * @param options CPU count and optional DSDT AML
 * @returns where the RSDP and tables are
 * @throws {RangeError} when they do not fit in the ACPI area
 */
export function writeAcpiTables(memory: GuestMemory, options: AcpiOptions): AcpiResult {
  const { bytes, result } = buildAcpiTables(options, ACPI_GPA);
  if (bytes.length > ACPI_AREA_BYTES) {
    throw new RangeError(`Cannot fit ACPI tables of ${bytes.length} bytes in ${ACPI_AREA_BYTES}`);
  }
  memory.write(ACPI_GPA, bytes);
  return result;
}
