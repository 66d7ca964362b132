/**
 * Direct kernel boot for x86_64: loads an ELF64 (vmlinux, the probe guest) or a bzImage into guest
 * RAM, writes the zero page (setup header, e820, command line, initrd), the MP table and the boot
 * CPU's GDT and page tables, and returns the 64-bit entry state as plain data. The memory map is in
 * `layout.ts`.
 *
 * @example
 * ```ts
 * import { loadKernel } from "./mod.ts";
 * const setup = loadKernel(memory, {
 *   kernel: Deno.readFileSync("vmlinuz"),
 *   kernelPath: "vmlinuz",
 *   cmdline: "console=ttyS0",
 *   cpus: 2,
 *   ramBytes: 512 * 2 ** 20,
 * });
 * // setup.vcpu.regs / setup.vcpu.sregs go to KVM_SET_REGS / KVM_SET_SREGS on vCPU 0
 * ```
 * @module
 */
import type { GuestMemory } from "../../memory/guest_memory.ts";
import { logger } from "../../util/log.ts";
import { writeBootParams } from "./boot_params.ts";
import { setupBootCpu, type VcpuBootState } from "./cpu_setup.ts";
import {
  BOOT_AREA_END,
  BOOT_AREA_START,
  checkRamBytes,
  EBDA_START,
  KERNEL_LOW_GPA,
  ramRegions,
} from "./layout.ts";
import { loadKernelImage, parseKernel } from "./linux_loader.ts";
import { writeMpTable } from "./mptable.ts";
import { writeAcpiTables } from "./acpi_tables.ts";

export * from "./layout.ts";
export { BOOT_PARAMS, placeInitrd, writeBootParams } from "./boot_params.ts";
export type { BootParamsOptions, BootParamsResult } from "./boot_params.ts";
export { setupBootCpu, writeGdt, writePageTables } from "./cpu_setup.ts";
export type { VcpuBootState } from "./cpu_setup.ts";
export { loadKernelImage, parseKernel } from "./linux_loader.ts";
export type {
  BzImageHeader,
  BzImageKernel,
  ElfKernel,
  ElfSegment,
  LoadedKernel,
  ParsedKernel,
} from "./linux_loader.ts";
export { buildMpTable, writeMpTable } from "./mptable.ts";
export type { MpTableResult } from "./mptable.ts";
export { buildAcpiTables, writeAcpiTables } from "./acpi_tables.ts";
export type { AcpiOptions, AcpiResult } from "./acpi_tables.ts";

const log = logger("boot");

/** What {@linkcode loadKernel} needs. */
export interface LoadKernelOptions {
  /** The kernel file's bytes (ELF64 x86_64 or bzImage). */
  kernel: Uint8Array;
  /** The kernel file's name, for error messages. */
  kernelPath: string;
  /** Kernel command line. */
  cmdline: string;
  /** initrd contents, if any. */
  initrd?: Uint8Array;
  /** Number of vCPUs to describe in the MP (and ACPI) tables. */
  cpus: number;
  /** Total guest RAM; `memory` must cover {@linkcode ramRegions}(ramBytes). */
  ramBytes: number;
  /**
   * Also write ACPI tables (RSDP/XSDT/FADT/DSDT/MADT). Debian's cloud kernel has no MP table parser
   * (`X86_MPPARSE` unset) and needs the MADT to see more than one CPU; but with ACPI on, Linux finds
   * PCI devices only through a root bridge in the DSDT, so pass `dsdtAml` describing one for q35.
   * @default false
   */
  acpi?: boolean;
  /** DSDT body (AML) when `acpi` is on. */
  dsdtAml?: Uint8Array;
}

/** The result of {@linkcode loadKernel}: where the guest starts and with what state. */
export interface BootSetup {
  /** The file format found. */
  kind: "elf" | "bzimage";
  /** The 64-bit entry point (also `vcpu.regs.rip`). */
  entry: number;
  /** The zero page (also `vcpu.regs.rsi`). */
  bootParamsGpa: number;
  /** Boot vCPU state for KVM_SET_REGS/KVM_SET_SREGS. */
  vcpu: VcpuBootState;
  /** PVH entry from an ELF note, informational. */
  pvhEntry?: number;
  /** Lowest byte of the kernel image. */
  loadGpa: number;
  /** First byte past what the kernel needs. */
  endGpa: number;
  /** The initrd, when one was given. */
  initrdGpa?: number;
  /** The MP floating pointer. */
  mpTableGpa: number;
  /** The ACPI RSDP, when ACPI tables were written. */
  acpiRsdpGpa?: number;
}

/**
 * Loads a kernel and builds everything the boot CPU needs to enter it in 64-bit mode.
 * @param memory guest RAM (every write goes through it, so the VMM dirty bitmap sees it)
 * @param options kernel file, command line, initrd, CPU count, RAM size
 * @returns the entry and boot vCPU state
 * @throws {SyntaxError} for a kernel file that is not ELF64 x86_64 or a 64-bit bzImage, or is truncated
 * @throws {RangeError} for a kernel or initrd that does not fit, a too-long command line, a bad
 *   CPU count or RAM size
 */
export function loadKernel(memory: GuestMemory, options: LoadKernelOptions): BootSetup {
  const { ramBytes, kernelPath } = options;
  checkRamBytes(ramBytes);
  for (const r of ramRegions(ramBytes)) {
    if (!memory.regionOf(r.gpa, r.sizeBytes)) {
      throw new RangeError(
        `Cannot boot with '${ramBytes}' bytes of RAM: guest memory does not cover 0x${r.gpa.toString(16)}` +
          ` (+${r.sizeBytes})`,
      );
    }
  }
  const parsed = parseKernel(options.kernel, kernelPath);
  // Clear ferry's areas so a reboot does not see stale tables.
  memory.fill(BOOT_AREA_START, BOOT_AREA_END - BOOT_AREA_START, 0);
  memory.fill(EBDA_START, KERNEL_LOW_GPA - EBDA_START, 0);

  const loaded = loadKernelImage(memory, parsed, { ramBytes, path: kernelPath });
  const mp = writeMpTable(memory, options.cpus);
  const acpi = options.acpi
    ? writeAcpiTables(memory, {
      cpus: options.cpus,
      ...(options.dsdtAml ? { dsdtAml: options.dsdtAml } : {}),
    })
    : undefined;
  const bootParams = writeBootParams(memory, {
    kernel: loaded,
    cmdline: options.cmdline,
    ramBytes,
    ...(options.initrd ? { initrd: options.initrd } : {}),
    ...(acpi ? { acpiRsdpGpa: acpi.rsdpGpa } : {}),
  });
  const vcpu = setupBootCpu(memory, { entry: loaded.entry, bootParamsGpa: bootParams.gpa });
  log.debug(
    "Loaded %s '%s' at 0x%s-0x%s, entry 0x%s",
    loaded.kind,
    kernelPath,
    loaded.loadGpa.toString(16),
    loaded.endGpa.toString(16),
    loaded.entry.toString(16),
  );

  const out: BootSetup = {
    kind: loaded.kind,
    entry: loaded.entry,
    bootParamsGpa: bootParams.gpa,
    vcpu,
    loadGpa: loaded.loadGpa,
    endGpa: loaded.endGpa,
    mpTableGpa: mp.floatingGpa,
  };
  if (loaded.pvhEntry !== undefined) out.pvhEntry = loaded.pvhEntry;
  if (bootParams.initrdGpa !== undefined) out.initrdGpa = bootParams.initrdGpa;
  if (acpi) out.acpiRsdpGpa = acpi.rsdpGpa;
  return out;
}
