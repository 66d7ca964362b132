/**
 * Parses and loads an x86_64 kernel file: an ELF64 image (Linux `vmlinux`, the probe guest) loaded
 * by its PT_LOAD segments at `p_paddr`, or a bzImage (Linux boot protocol ≥ 2.06 with a 64-bit
 * entry) whose protected-mode part is loaded at `pref_address` or 1 MiB.
 *
 * Every offset read from the file is bounds-checked first: a truncated or foreign file gives a
 * one-line `SyntaxError`, a kernel that does not fit in guest RAM a `RangeError`.
 * @module
 */
import type { GuestMemory } from "../../memory/guest_memory.ts";
import { isUsableRam, KERNEL_LOW_GPA, KERNEL_PREF_GPA, lowRamEnd } from "./layout.ts";

/** ELF `e_machine` for x86_64. */
export const EM_X86_64 = 62;
/** Program header type of a loadable segment. */
export const PT_LOAD = 1;
/** Program header type of a note segment. */
export const PT_NOTE = 4;
/** Xen ELF note type holding the 32-bit PVH entry point (name "Xen"). */
export const XEN_ELFNOTE_PHYS32_ENTRY = 18;

/** "HdrS", the setup header magic at 0x202. */
export const HDRS_MAGIC = 0x5372_6448;
/** Offset of the setup header in a bzImage and in the zero page. */
export const SETUP_HEADER_OFFSET = 0x1f1;
/** `loadflags` bit: the protected-mode kernel is loaded at 0x100000 or above (bzImage). */
export const LOADED_HIGH = 0x01;
/** `loadflags` bit: `heap_end_ptr` is valid. */
export const CAN_USE_HEAP = 0x80;
/** `xloadflags` bit: the kernel has the 64-bit entry at load address + 0x200. */
export const XLF_KERNEL_64 = 0x01;
/** Offset of the 64-bit entry from the protected-mode load address. */
export const BZIMAGE_ENTRY64_OFFSET = 0x200;

/** One PT_LOAD segment. */
export interface ElfSegment {
  /** Physical load address (`p_paddr`). */
  paddr: number;
  /** File offset (`p_offset`). */
  offset: number;
  /** Bytes taken from the file (`p_filesz`). */
  fileBytes: number;
  /** Bytes in memory (`p_memsz`); the tail past `fileBytes` is zeroed. */
  memBytes: number;
}

/** A parsed ELF64 x86_64 kernel. */
export interface ElfKernel {
  kind: "elf";
  /** `e_entry` (physical for Linux vmlinux and the probe guest). */
  entry: number;
  /** The PT_LOAD segments in file order. */
  segments: ElfSegment[];
  /** The PVH 32-bit entry from a `XEN_ELFNOTE_PHYS32_ENTRY` note, when present (informational). */
  pvhEntry?: number;
  /** The whole file (segments are offsets into it). */
  file: Uint8Array;
}

/** The bzImage setup header fields ferry uses (offsets as in the boot protocol). */
export interface BzImageHeader {
  /** 0x1f1; 0 in the file means 4. */
  setupSects: number;
  /** 0x206, e.g. 0x020f for 2.15. */
  protocolVersion: number;
  /** 0x211. */
  loadflags: number;
  /** 0x236. */
  xloadflags: number;
  /** 0x22c: highest address the initrd may end at (inclusive). */
  initrdAddrMax: number;
  /** 0x230. */
  kernelAlignment: number;
  /** 0x234. */
  relocatable: boolean;
  /** 0x238: longest command line, without the NUL. */
  cmdlineSize: number;
  /** 0x248, relative to the protected-mode kernel. */
  payloadOffset: number;
  /** 0x24c. */
  payloadLength: number;
  /** 0x258. */
  prefAddress: number;
  /** 0x260: memory the kernel needs from its run address for decompression and boot. */
  initSize: number;
  /** 0x1f4: protected-mode size in 16-byte units. */
  syssize: number;
  /** End (exclusive) of the setup header: 0x202 + the byte at 0x201. */
  headerEnd: number;
}

/** A parsed bzImage. */
export interface BzImageKernel {
  kind: "bzimage";
  header: BzImageHeader;
  /** File bytes 0x1f1..headerEnd, to be copied into the zero page. */
  setupHeader: Uint8Array;
  /** The protected-mode kernel (everything after the setup sectors). */
  protectedMode: Uint8Array;
}

/** A parsed kernel file. */
export type ParsedKernel = ElfKernel | BzImageKernel;

/** Where a kernel ended up in guest memory. */
export interface LoadedKernel {
  kind: "elf" | "bzimage";
  /** The 64-bit entry point. */
  entry: number;
  /** Lowest byte written. */
  loadGpa: number;
  /** First byte past everything the kernel needs (for bzImage: its run area up to init_size). */
  endGpa: number;
  /** PVH entry of an ELF kernel, when it has one. */
  pvhEntry?: number;
  /** The bzImage header, for the zero page. */
  bzImage?: BzImageKernel;
}

function fail(path: string, detail: string): never {
  throw new SyntaxError(`Cannot load kernel '${path}': ${detail}`);
}

function hex(n: number): string {
  return `0x${n.toString(16)}`;
}

/** Bounds-checked little-endian reads over the kernel file. */
class Reader {
  readonly #view: DataView;
  readonly #path: string;
  readonly length: number;

  constructor(bytes: Uint8Array, path: string) {
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#path = path;
    this.length = bytes.byteLength;
  }

  need(offset: number, size: number, what: string): void {
    if (offset < 0 || size < 0 || offset + size > this.length) {
      fail(
        this.#path,
        `truncated ${what} (needs bytes up to ${hex(offset + size)}, file has ${this.length})`,
      );
    }
  }
  u8(off: number, what: string): number {
    this.need(off, 1, what);
    return this.#view.getUint8(off);
  }
  u16(off: number, what: string): number {
    this.need(off, 2, what);
    return this.#view.getUint16(off, true);
  }
  u32(off: number, what: string): number {
    this.need(off, 4, what);
    return this.#view.getUint32(off, true);
  }
  u64(off: number, what: string): number {
    this.need(off, 8, what);
    const v = this.#view.getBigUint64(off, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      fail(this.#path, `${what} ${"0x" + v.toString(16)} is too large`);
    }
    return Number(v);
  }
}

const ELF_MAGIC = 0x464c_457f; // "\x7fELF" read little-endian

/**
 * Parses a kernel file without touching guest memory.
 * @param bytes the whole file
 * @param path the file name, for error messages
 * @returns the ELF segments or the bzImage header and parts
 * @throws {SyntaxError} for a file that is neither an ELF64 x86_64 nor a 64-bit bzImage, or is truncated
 */
export function parseKernel(bytes: Uint8Array, path: string): ParsedKernel {
  const r = new Reader(bytes, path);
  if (r.length >= 4 && r.u32(0, "ELF magic") === ELF_MAGIC) return parseElf(r, bytes, path);
  if (r.length >= 0x206 && r.u32(0x202, "setup header") === HDRS_MAGIC) return parseBzImage(r, bytes, path);
  fail(path, "not an ELF64 x86_64 or bzImage file");
}

function parseElf(r: Reader, bytes: Uint8Array, path: string): ElfKernel {
  r.need(0, 64, "ELF header");
  const cls = r.u8(4, "ELF class");
  const data = r.u8(5, "ELF data encoding");
  const machine = r.u16(18, "ELF machine");
  if (cls !== 2 || data !== 1 || machine !== EM_X86_64) {
    fail(path, `not an ELF64 x86_64 or bzImage file (ELF class ${cls}, data ${data}, machine ${machine})`);
  }
  const entry = r.u64(24, "ELF entry");
  const phoff = r.u64(32, "ELF program header offset");
  const phentsize = r.u16(54, "ELF program header size");
  const phnum = r.u16(56, "ELF program header count");
  if (phnum === 0xffff) fail(path, "ELF with more than 65534 program headers is not supported");
  if (phentsize < 56) fail(path, `ELF program header size ${phentsize} is below 56`);
  r.need(phoff, phentsize * phnum, "ELF program header table");

  const segments: ElfSegment[] = [];
  let pvhEntry: number | undefined;
  for (let i = 0; i < phnum; i++) {
    const ph = phoff + i * phentsize;
    const type = r.u32(ph, "program header");
    if (type !== PT_LOAD && type !== PT_NOTE) continue;
    const offset = r.u64(ph + 8, "p_offset");
    const paddr = r.u64(ph + 24, "p_paddr");
    const fileBytes = r.u64(ph + 32, "p_filesz");
    const memBytes = r.u64(ph + 40, "p_memsz");
    const align = r.u64(ph + 48, "p_align");
    r.need(offset, fileBytes, `segment ${i} (offset ${hex(offset)}, ${fileBytes} bytes)`);
    if (type === PT_LOAD) {
      if (fileBytes > memBytes) {
        fail(path, `segment ${i} has p_filesz ${fileBytes} above p_memsz ${memBytes}`);
      }
      segments.push({ paddr, offset, fileBytes, memBytes });
    } else {
      pvhEntry ??= findPvhEntry(r, offset, fileBytes, align === 8 ? 8 : 4);
    }
  }
  if (segments.length === 0) fail(path, "ELF has no PT_LOAD segment");
  if (!segments.some((s) => entry >= s.paddr && entry < s.paddr + s.memBytes)) {
    fail(path, `ELF entry ${hex(entry)} is outside every PT_LOAD segment`);
  }
  const out: ElfKernel = { kind: "elf", entry, segments, file: bytes };
  if (pvhEntry !== undefined) out.pvhEntry = pvhEntry;
  return out;
}

/** Walks the notes in `[offset, offset+size)` for Xen's PHYS32_ENTRY. */
function findPvhEntry(r: Reader, offset: number, size: number, align: number): number | undefined {
  const end = offset + size;
  const up = (n: number) => Math.ceil(n / align) * align;
  let p = offset;
  while (p + 12 <= end) {
    const namesz = r.u32(p, "ELF note");
    const descsz = r.u32(p + 4, "ELF note");
    const type = r.u32(p + 8, "ELF note");
    const nameAt = p + 12;
    const descAt = nameAt + up(namesz);
    const next = descAt + up(descsz);
    if (next > end) return undefined; // malformed note segment: not our business, stop looking
    const isXen = namesz === 4 && r.u32(nameAt, "ELF note name") === 0x006e_6558; // "Xen\0"
    if (isXen && type === XEN_ELFNOTE_PHYS32_ENTRY) {
      if (descsz === 4) return r.u32(descAt, "PVH note");
      if (descsz === 8) return r.u64(descAt, "PVH note");
    }
    p = next;
  }
  return undefined;
}

function parseBzImage(r: Reader, bytes: Uint8Array, path: string): BzImageKernel {
  const protocolVersion = r.u16(0x206, "setup header");
  const version = `${protocolVersion >> 8}.${(protocolVersion & 0xff).toString().padStart(2, "0")}`;
  if (protocolVersion < 0x0206) fail(path, `bzImage boot protocol ${version} is older than 2.06`);
  const rawSects = r.u8(0x1f1, "setup header");
  const setupSects = rawSects === 0 ? 4 : rawSects;
  const setupBytes = (setupSects + 1) * 512;
  r.need(0, setupBytes, `bzImage setup code (${setupSects} sectors)`);
  const headerEnd = Math.min(0x202 + r.u8(0x201, "setup header"), setupBytes);
  const loadflags = r.u8(0x211, "setup header");
  const xloadflags = protocolVersion >= 0x020c ? r.u16(0x236, "setup header") : 0;
  if ((xloadflags & XLF_KERNEL_64) === 0) {
    fail(path, `bzImage has no 64-bit entry (boot protocol ${version}, xloadflags ${hex(xloadflags)})`);
  }
  if ((loadflags & LOADED_HIGH) === 0) fail(path, "zImage (not loaded high) is not supported");
  const header: BzImageHeader = {
    setupSects,
    protocolVersion,
    loadflags,
    xloadflags,
    initrdAddrMax: r.u32(0x22c, "setup header"),
    kernelAlignment: r.u32(0x230, "setup header"),
    relocatable: r.u8(0x234, "setup header") !== 0,
    cmdlineSize: r.u32(0x238, "setup header"),
    payloadOffset: r.u32(0x248, "setup header"),
    payloadLength: r.u32(0x24c, "setup header"),
    prefAddress: r.u64(0x258, "setup header"),
    initSize: r.u32(0x260, "setup header"),
    syssize: r.u32(0x1f4, "setup header"),
    headerEnd,
  };
  const pmBytes = r.length - setupBytes;
  if (pmBytes <= 0 || pmBytes < header.syssize * 16) {
    fail(
      path,
      `truncated bzImage (protected-mode kernel has ${Math.max(pmBytes, 0)} bytes, ` +
        `syssize says ${header.syssize * 16})`,
    );
  }
  return {
    kind: "bzimage",
    header,
    setupHeader: bytes.slice(SETUP_HEADER_OFFSET, headerEnd),
    protectedMode: bytes.subarray(setupBytes),
  };
}

/**
 * Copies a parsed kernel into guest memory.
 *
 * ELF: each PT_LOAD at `p_paddr`, the bss tail zeroed. bzImage: the protected-mode kernel at
 * `pref_address` when `[pref_address, +max(size, init_size))` is free RAM, else at 1 MiB; entry is
 * the load address + 0x200.
 * @param memory guest RAM
 * @param kernel from {@linkcode parseKernel}
 * @param options `ramBytes` (for the e820 RAM check) and `path` (for messages)
 * @returns the entry and the address range the kernel occupies
 * @throws {RangeError} when a segment or the kernel's run area is not usable RAM
 */
export function loadKernelImage(
  memory: GuestMemory,
  kernel: ParsedKernel,
  options: { ramBytes: number; path: string },
): LoadedKernel {
  const { ramBytes, path } = options;
  if (kernel.kind === "elf") {
    let low = Infinity;
    let end = 0;
    for (const s of kernel.segments) {
      if (!isUsableRam(ramBytes, s.paddr, s.memBytes) || !memory.regionOf(s.paddr, s.memBytes)) {
        throw new RangeError(
          `Cannot load kernel '${path}': segment at ${
            hex(s.paddr)
          } (${s.memBytes} bytes) is outside usable guest RAM`,
        );
      }
    }
    const file = kernel.file;
    for (const s of kernel.segments) {
      if (s.fileBytes > 0) memory.write(s.paddr, file.subarray(s.offset, s.offset + s.fileBytes));
      if (s.memBytes > s.fileBytes) memory.fill(s.paddr + s.fileBytes, s.memBytes - s.fileBytes, 0);
      low = Math.min(low, s.paddr);
      end = Math.max(end, s.paddr + s.memBytes);
    }
    const out: LoadedKernel = { kind: "elf", entry: kernel.entry, loadGpa: low, endGpa: end };
    if (kernel.pvhEntry !== undefined) out.pvhEntry = kernel.pvhEntry;
    return out;
  }

  const h = kernel.header;
  const pm = kernel.protectedMode;
  const pref = h.prefAddress || KERNEL_PREF_GPA;
  const runEnd = (load: number) => {
    const align = h.kernelAlignment > 0 ? h.kernelAlignment : 1;
    const run = h.relocatable ? Math.max(Math.ceil(load / align) * align, pref) : pref;
    return Math.max(load + pm.length, run + h.initSize);
  };
  let load = KERNEL_LOW_GPA;
  if (h.prefAddress > 0 && isUsableRam(ramBytes, h.prefAddress, runEnd(h.prefAddress) - h.prefAddress)) {
    load = h.prefAddress;
  }
  const end = runEnd(load);
  if (!isUsableRam(ramBytes, load, end - load) || !memory.regionOf(load, pm.length)) {
    throw new RangeError(
      `Cannot load kernel '${path}': it needs RAM from ${hex(load)} to ${hex(end)} ` +
        `(init_size ${h.initSize}), guest RAM below 4 GiB ends at ${hex(lowRamEnd(ramBytes))}`,
    );
  }
  memory.write(load, pm);
  return {
    kind: "bzimage",
    entry: load + BZIMAGE_ENTRY64_OFFSET,
    loadGpa: load,
    endGpa: end,
    bzImage: kernel,
  };
}
