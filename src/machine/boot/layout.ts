/**
 * The x86_64 q35 guest physical memory map ferry uses, and the e820 table derived from it.
 *
 * ```
 * 0x0000_0000 ┌──────────────────────────────┐ e820 RAM      real-mode IVT + BIOS data area (left zero)
 * 0x0000_1000 ├──────────────────────────────┤ e820 reserved ferry's boot area (6 pages):
 *             │ 0x1000 GDT, 0x1080 TSS       │   CPU descriptor tables
 *             │ 0x2000 zero page             │   struct boot_params
 *             │ 0x3000 kernel command line   │   ≤ 4 KiB including the NUL
 *             │ 0x4000 boot stack            │   rsp = 0x5000, grows down
 *             │ 0x5000 spare (PVH start_info)│   reserved for a future PVH loader
 * 0x0000_7000 ├──────────────────────────────┤ e820 RAM      FREE for the guest: the probe guest's SMP
 *             │                              │   trampoline (0x8000) and VIF pages; Linux's own
 *             │                              │   real-mode trampoline lands here too
 * 0x0009_FC00 ├──────────────────────────────┤ e820 reserved EBDA (1 KiB, left zero)
 * 0x000A_0000 │ 0xA0000 PML4, 0xA1000 PDPT,  │   boot page tables (legacy VGA window; backed by RAM
 *             │ 0xA2000..0xA5FFF four PDs    │   in KVM because ferry has no VGA)
 * 0x000E_0000 │ ACPI: RSDP + tables          │   RSDP must sit in 0xE0000-0xFFFFF (ACPI §5.2.5.1)
 * 0x000F_0000 │ MP floating pointer + table  │   must sit in 0xF0000-0xFFFFF (MP spec §4)
 * 0x0010_0000 ├──────────────────────────────┤ e820 RAM      kernel: ELF at p_paddr, bzImage at
 *             │ kernel (1 MiB or 16 MiB)     │   pref_address (16 MiB) or 1 MiB; initrd high
 * lowTop      ├──────────────────────────────┤               lowTop = min(ram, 0xB000_0000)
 * 0xB000_0000 │ PCIe ECAM (256 MiB)          │ e820 reserved (Linux wants MMCONFIG reserved)
 * 0xC000_0000 │ 32-bit PCI hole: BARs,       │ not in e820
 *             │ 0xFEC0_0000 IOAPIC,          │
 *             │ 0xFEE0_0000 LAPIC            │
 * 0x1_0000_0000 ───────────────────────────── e820 RAM      the rest of RAM, if ram > lowTop
 * ```
 * @module
 */

/** Size of a small page. */
export const PAGE_BYTES = 0x1000;
/** 1 MiB. */
export const MIB = 0x10_0000;
/** 4 GiB, where RAM above the PCI hole resumes. */
export const HIGH_RAM_START = 0x1_0000_0000;

/** Start of ferry's low boot area (reserved in e820). */
export const BOOT_AREA_START = 0x1000;
/** End (exclusive) of ferry's low boot area; 0x7000–0x9FBFF is left to the guest. */
export const BOOT_AREA_END = 0x7000;
/** The GDT: null, null, code64 (0x10), data (0x18), 64-bit TSS (0x20, 16 bytes). */
export const GDT_GPA = 0x1000;
/** The TSS the GDT's TSS descriptor points at (104 bytes, zero). */
export const TSS_GPA = 0x1080;
/** The zero page (`struct boot_params`, 4 KiB). */
export const ZERO_PAGE_GPA = 0x2000;
/** The kernel command line, NUL-terminated. */
export const CMDLINE_GPA = 0x3000;
/** Bytes reserved for the command line, including its NUL. */
export const CMDLINE_AREA_BYTES = 0x1000;
/** Lowest address of the boot stack. */
export const BOOT_STACK_BOTTOM_GPA = 0x4000;
/** Initial stack pointer (the stack grows down from here; 16-byte aligned). */
export const BOOT_STACK_POINTER = 0x5000;
/** A spare reserved page (for a PVH `hvm_start_info` later). */
export const SPARE_PAGE_GPA = 0x5000;

/** The first byte of the area left to the guest below 1 MiB (probe SMP trampoline at 0x8000). */
export const GUEST_LOW_FREE_START = 0x7000;
/** Extended BIOS data area: reserved from here to 1 MiB. */
export const EBDA_START = 0x9_fc00;
/** Start of the legacy VGA window (ferry has no VGA; holds the boot page tables). */
export const VGA_WINDOW_START = 0xa_0000;
/** Boot page tables: PML4. */
export const PML4_GPA = 0xa_0000;
/** Boot page tables: the one PDPT. */
export const PDPT_GPA = 0xa_1000;
/** Boot page tables: four PDs (one per GiB), 0xA2000–0xA5FFF. */
export const PD_GPA = 0xa_2000;
/** Number of page directories: 4 × 512 × 2 MiB = 4 GiB. */
export const PD_COUNT = 4;
/** ACPI area start (RSDP here, tables after it). */
export const ACPI_GPA = 0xe_0000;
/** ACPI area size. */
export const ACPI_AREA_BYTES = 0x1_0000;
/** MP floating pointer structure (16 bytes), followed by the MP configuration table. */
export const MPTABLE_GPA = 0xf_0000;
/** MP area size (to 1 MiB). */
export const MPTABLE_AREA_BYTES = 0x1_0000;
/** Start of the protected-mode/ELF kernel area (1 MiB). */
export const KERNEL_LOW_GPA = 0x10_0000;
/** Linux's LOAD_PHYSICAL_ADDR (16 MiB): Debian's `pref_address` and vmlinux `p_paddr`. */
export const KERNEL_PREF_GPA = 0x100_0000;

/** PCIe ECAM (MMCONFIG) base, 256 buses × 1 MiB. */
export const PCIE_ECAM_GPA = 0xb000_0000;
/** PCIe ECAM size. */
export const PCIE_ECAM_BYTES = 0x1000_0000;
/** Start of the 32-bit PCI MMIO hole (to 4 GiB). */
export const PCI_HOLE_START = 0xc000_0000;
/** IOAPIC MMIO base. */
export const IOAPIC_GPA = 0xfec0_0000;
/** Local APIC MMIO base. */
export const LAPIC_GPA = 0xfee0_0000;
/** RAM below 4 GiB ends at most here (the ECAM starts). */
export const LOW_RAM_MAX_END = PCIE_ECAM_GPA;
/** Smallest RAM size ferry accepts (the boot area and a kernel at 1 MiB need some room). */
export const MIN_RAM_BYTES = 2 * MIB;

/** e820 type: usable RAM. */
export const E820_RAM = 1;
/** e820 type: reserved. */
export const E820_RESERVED = 2;
/** e820 type: ACPI reclaimable. */
export const E820_ACPI = 3;

/** One e820 entry. */
export interface E820Entry {
  /** First byte. */
  gpa: number;
  /** Length in bytes. */
  sizeBytes: number;
  /** {@linkcode E820_RAM}, {@linkcode E820_RESERVED}, … */
  type: number;
}

/** One contiguous RAM range (becomes one KVM memory slot). */
export interface RamRange {
  /** First byte. */
  gpa: number;
  /** Length in bytes. */
  sizeBytes: number;
}

/**
 * Checks a RAM size: a multiple of 4 KiB and at least {@linkcode MIN_RAM_BYTES}.
 * @throws {RangeError} otherwise
 */
export function checkRamBytes(ramBytes: number): void {
  if (!Number.isSafeInteger(ramBytes) || ramBytes < MIN_RAM_BYTES || ramBytes % PAGE_BYTES !== 0) {
    throw new RangeError(
      `Cannot lay out guest RAM of '${ramBytes}' bytes: need a multiple of 4096 of at least ${MIN_RAM_BYTES}`,
    );
  }
}

/**
 * End (exclusive) of RAM below 4 GiB: `min(ramBytes, 0xB0000000)`.
 * @param ramBytes total guest RAM
 */
export function lowRamEnd(ramBytes: number): number {
  return Math.min(ramBytes, LOW_RAM_MAX_END);
}

/**
 * The guest RAM ranges for `ramBytes` of RAM: one from 0, and one from 4 GiB for what does not fit
 * below the ECAM.
 * @param ramBytes total guest RAM, a multiple of 4 KiB
 * @returns one or two ranges
 * @example
 * ```ts
 * ramRegions(4 * 2 ** 30); // [{gpa: 0, sizeBytes: 0xB0000000}, {gpa: 0x100000000, sizeBytes: 0x50000000}]
 * ```
 */
export function ramRegions(ramBytes: number): RamRange[] {
  checkRamBytes(ramBytes);
  const low = lowRamEnd(ramBytes);
  const out: RamRange[] = [{ gpa: 0, sizeBytes: low }];
  if (ramBytes > low) out.push({ gpa: HIGH_RAM_START, sizeBytes: ramBytes - low });
  return out;
}

/**
 * The e820 map the guest sees: RAM, ferry's boot area and the EBDA/BIOS area reserved, the ECAM
 * reserved, RAM above 4 GiB.
 * @param ramBytes total guest RAM
 * @returns entries sorted by address, non-overlapping
 */
export function e820Map(ramBytes: number): E820Entry[] {
  checkRamBytes(ramBytes);
  const low = lowRamEnd(ramBytes);
  const out: E820Entry[] = [
    { gpa: 0, sizeBytes: BOOT_AREA_START, type: E820_RAM },
    { gpa: BOOT_AREA_START, sizeBytes: BOOT_AREA_END - BOOT_AREA_START, type: E820_RESERVED },
    { gpa: BOOT_AREA_END, sizeBytes: EBDA_START - BOOT_AREA_END, type: E820_RAM },
    { gpa: EBDA_START, sizeBytes: KERNEL_LOW_GPA - EBDA_START, type: E820_RESERVED },
  ];
  if (low > KERNEL_LOW_GPA) {
    out.push({ gpa: KERNEL_LOW_GPA, sizeBytes: low - KERNEL_LOW_GPA, type: E820_RAM });
  }
  out.push({ gpa: PCIE_ECAM_GPA, sizeBytes: PCIE_ECAM_BYTES, type: E820_RESERVED });
  if (ramBytes > low) out.push({ gpa: HIGH_RAM_START, sizeBytes: ramBytes - low, type: E820_RAM });
  return out;
}

/**
 * Whether `[gpa, gpa+sizeBytes)` lies wholly in one e820 RAM entry (so a kernel may be loaded there).
 * @param ramBytes total guest RAM
 * @param gpa first byte
 * @param sizeBytes length
 */
export function isUsableRam(ramBytes: number, gpa: number, sizeBytes: number): boolean {
  return e820Map(ramBytes).some((e) =>
    e.type === E820_RAM && gpa >= e.gpa && sizeBytes >= 0 && gpa + sizeBytes <= e.gpa + e.sizeBytes
  );
}
