/**
 * The Linux zero page (`struct boot_params`, Documentation/arch/x86/boot.rst and zero-page.rst):
 * the setup header (copied from a bzImage, or a minimal one for an ELF kernel), the e820 table,
 * the command line and the initrd.
 * @module
 */
import type { GuestMemory } from "../../memory/guest_memory.ts";
import {
  CAN_USE_HEAP,
  HDRS_MAGIC,
  LOADED_HIGH,
  type LoadedKernel,
  SETUP_HEADER_OFFSET,
} from "./linux_loader.ts";
import {
  CMDLINE_AREA_BYTES,
  CMDLINE_GPA,
  e820Map,
  KERNEL_LOW_GPA,
  lowRamEnd,
  PAGE_BYTES,
  ZERO_PAGE_GPA,
} from "./layout.ts";

/** Byte offsets inside the zero page. */
export const BOOT_PARAMS = {
  /** u64: physical address of the ACPI RSDP. */
  acpiRsdpAddr: 0x070,
  /** u32: high 32 bits of ramdisk_image. */
  extRamdiskImage: 0x0c0,
  /** u32: high 32 bits of ramdisk_size. */
  extRamdiskSize: 0x0c4,
  /** u32: high 32 bits of cmd_line_ptr. */
  extCmdLinePtr: 0x0c8,
  /** u8: number of e820 entries. */
  e820Entries: 0x1e8,
  /** u8: must stay 0 (else the kernel wipes fields it thinks are stale). */
  sentinel: 0x1ef,
  /** u8 setup_sects (start of the setup header). */
  setupSects: 0x1f1,
  /** u16: 0xAA55. */
  bootFlag: 0x1fe,
  /** u32: "HdrS". */
  header: 0x202,
  /** u16: boot protocol version. */
  version: 0x206,
  /** u8: 0xff, "undefined" boot loader. */
  typeOfLoader: 0x210,
  /** u8. */
  loadflags: 0x211,
  /** u32. */
  code32Start: 0x214,
  /** u32. */
  ramdiskImage: 0x218,
  /** u32. */
  ramdiskSize: 0x21c,
  /** u16. */
  heapEndPtr: 0x224,
  /** u32. */
  cmdLinePtr: 0x228,
  /** u32. */
  initrdAddrMax: 0x22c,
  /** u32. */
  cmdlineSize: 0x238,
  /** 128 × { u64 addr, u64 size, u32 type }. */
  e820Table: 0x2d0,
} as const;

/** Maximum e820 entries in the zero page. */
export const E820_MAX_ENTRIES = 128;
/** Boot protocol version written in the minimal header for ELF kernels (2.15). */
export const ELF_BOOT_PROTOCOL = 0x020f;
/** Command line limit for ELF kernels (Linux x86 COMMAND_LINE_SIZE is 2048 with the NUL). */
export const ELF_CMDLINE_SIZE = 2047;
/** initrd_addr_max for ELF kernels (the default of boot protocols before 2.03 is lower; this is Linux's). */
export const ELF_INITRD_ADDR_MAX = 0x7fff_ffff;
/** heap_end_ptr as QEMU sets it (only used by the real-mode setup code ferry skips). */
const HEAP_END_PTR = 0xfe00;

/** What {@linkcode writeBootParams} needs. */
export interface BootParamsOptions {
  /** The loaded kernel (bzImage header or ELF). */
  kernel: LoadedKernel;
  /** Kernel command line (ASCII/UTF-8, no NUL). */
  cmdline: string;
  /** initrd contents; omitted or empty for none. */
  initrd?: Uint8Array;
  /** Total guest RAM, for the e820 table and initrd placement. */
  ramBytes: number;
  /** ACPI RSDP address to hand over, when ACPI tables were written. */
  acpiRsdpGpa?: number;
}

/** Where {@linkcode writeBootParams} put things. */
export interface BootParamsResult {
  /** The zero page (goes into `rsi`). */
  gpa: number;
  /** The command line. */
  cmdlineGpa: number;
  /** The initrd, when one was given. */
  initrdGpa?: number;
}

/**
 * Chooses the initrd address: the highest page-aligned address such that the initrd ends at or
 * below `min(initrd_addr_max + 1, RAM top below 4 GiB)`, above the kernel.
 * @param options sizes and limits
 * @returns the guest physical address
 * @throws {RangeError} when it does not fit between the kernel and the limit
 */
export function placeInitrd(
  options: { sizeBytes: number; kernelEndGpa: number; initrdAddrMax: number; ramBytes: number },
): number {
  const { sizeBytes, kernelEndGpa, initrdAddrMax, ramBytes } = options;
  const limit = Math.min(initrdAddrMax + 1, lowRamEnd(ramBytes));
  const gpa = Math.floor((limit - sizeBytes) / PAGE_BYTES) * PAGE_BYTES;
  const floor = Math.ceil(Math.max(kernelEndGpa, KERNEL_LOW_GPA) / PAGE_BYTES) * PAGE_BYTES;
  if (gpa < floor) {
    throw new RangeError(
      `Cannot place initrd of ${sizeBytes} bytes: only 0x${floor.toString(16)}-0x${limit.toString(16)} ` +
        `is free above the kernel`,
    );
  }
  return gpa;
}

/**
 * Writes the zero page at {@linkcode ZERO_PAGE_GPA}, the command line at {@linkcode CMDLINE_GPA} and
 * the initrd (high in RAM below 4 GiB).
 * @param memory guest RAM
 * @param options kernel, command line, initrd, RAM size
 * @returns the addresses used
 * @throws {RangeError} when the command line is longer than the kernel's `cmdline_size` or the
 *   initrd does not fit
 */
export function writeBootParams(memory: GuestMemory, options: BootParamsOptions): BootParamsResult {
  const { kernel, cmdline, ramBytes } = options;
  const page = new Uint8Array(PAGE_BYTES);
  const view = new DataView(page.buffer);
  const bz = kernel.bzImage;

  let cmdlineMax: number;
  let initrdAddrMax: number;
  if (bz) {
    page.set(bz.setupHeader, SETUP_HEADER_OFFSET);
    view.setUint8(BOOT_PARAMS.loadflags, bz.header.loadflags | CAN_USE_HEAP);
    view.setUint32(BOOT_PARAMS.code32Start, kernel.loadGpa, true);
    cmdlineMax = bz.header.cmdlineSize;
    initrdAddrMax = bz.header.initrdAddrMax;
  } else {
    view.setUint16(BOOT_PARAMS.bootFlag, 0xaa55, true);
    view.setUint32(BOOT_PARAMS.header, HDRS_MAGIC, true);
    view.setUint16(BOOT_PARAMS.version, ELF_BOOT_PROTOCOL, true);
    view.setUint8(BOOT_PARAMS.loadflags, LOADED_HIGH | CAN_USE_HEAP);
    view.setUint32(BOOT_PARAMS.initrdAddrMax, ELF_INITRD_ADDR_MAX, true);
    view.setUint32(BOOT_PARAMS.cmdlineSize, ELF_CMDLINE_SIZE, true);
    cmdlineMax = ELF_CMDLINE_SIZE;
    initrdAddrMax = ELF_INITRD_ADDR_MAX;
  }
  view.setUint8(BOOT_PARAMS.typeOfLoader, 0xff);
  view.setUint16(BOOT_PARAMS.heapEndPtr, HEAP_END_PTR, true);

  // Command line.
  const text = new TextEncoder().encode(cmdline);
  const limit = Math.min(cmdlineMax, CMDLINE_AREA_BYTES - 1);
  if (text.length > limit) {
    throw new RangeError(`Cannot set kernel command line: ${text.length} bytes exceed the limit of ${limit}`);
  }
  if (text.includes(0)) throw new RangeError("Cannot set kernel command line: it contains a NUL byte");
  const cmdArea = new Uint8Array(CMDLINE_AREA_BYTES);
  cmdArea.set(text);
  memory.write(CMDLINE_GPA, cmdArea);
  view.setUint32(BOOT_PARAMS.cmdLinePtr, CMDLINE_GPA, true);

  // initrd.
  const result: BootParamsResult = { gpa: ZERO_PAGE_GPA, cmdlineGpa: CMDLINE_GPA };
  const initrd = options.initrd;
  if (initrd && initrd.length > 0) {
    const gpa = placeInitrd({
      sizeBytes: initrd.length,
      kernelEndGpa: kernel.endGpa,
      initrdAddrMax,
      ramBytes,
    });
    memory.write(gpa, initrd);
    view.setUint32(BOOT_PARAMS.ramdiskImage, gpa, true);
    view.setUint32(BOOT_PARAMS.ramdiskSize, initrd.length, true);
    result.initrdGpa = gpa;
  }

  // e820.
  const map = e820Map(ramBytes);
  if (map.length > E820_MAX_ENTRIES) throw new RangeError(`Cannot write ${map.length} e820 entries: max 128`);
  view.setUint8(BOOT_PARAMS.e820Entries, map.length);
  map.forEach((e, i) => {
    const at = BOOT_PARAMS.e820Table + i * 20;
    view.setBigUint64(at, BigInt(e.gpa), true);
    view.setBigUint64(at + 8, BigInt(e.sizeBytes), true);
    view.setUint32(at + 16, e.type, true);
  });

  if (options.acpiRsdpGpa !== undefined) {
    view.setBigUint64(BOOT_PARAMS.acpiRsdpAddr, BigInt(options.acpiRsdpGpa), true);
  }

  memory.write(ZERO_PAGE_GPA, page);
  return result;
}
