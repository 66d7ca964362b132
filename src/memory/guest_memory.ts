/**
 * Guest physical memory as seen by the VMM: a few RAM regions, each a typed-array view over host
 * memory, plus ferry's own dirty bitmap of the pages the VMM wrote (KVM's dirty log never sees
 * them: DESIGN.md §1).
 *
 * A `GuestMemory` is built from a {@linkcode MemoryLayout}, plain data that can be posted to a
 * Worker: each thread makes its own views over the same host memory and shares the VMM dirty
 * bitmap (a SharedArrayBuffer updated with `Atomics.or`).
 *
 * Rule (STYLE.md c.10): device code writes guest RAM only through `write*` methods, which mark
 * the VMM bitmap; reads may use `slice()` views.
 * @module
 */

/** Bytes per page tracked by dirty logging. */
export const PAGE_SIZE = 4096;
const PAGE_SHIFT = 12;

/** One RAM region, as plain data (postable to a Worker). */
export interface RegionLayout {
  /** Guest physical address of the first byte. */
  gpa: number;
  /** Length in bytes, a multiple of {@linkcode PAGE_SIZE}. */
  sizeBytes: number;
  /** KVM memory slot number. */
  slot: number;
  /** Host virtual address of the mapping (0n for a region backed by `buffer`). */
  hostAddr: bigint;
  /** One bit per page: pages the VMM wrote since the last `takeVmmDirty()`. */
  vmmDirty: SharedArrayBuffer;
  /** For unit tests and fakes: the backing buffer instead of a host mapping. */
  buffer?: ArrayBuffer | SharedArrayBuffer;
}

/** The whole guest RAM layout. */
export interface MemoryLayout {
  regions: RegionLayout[];
}

/** Index in `layout.regions` of the region that holds all of `[gpa, gpa + len)`, or -1. */
export function layoutRegionIndex(layout: MemoryLayout, gpa: number, len: number): number {
  return layout.regions.findIndex((r) => gpa >= r.gpa && gpa + len <= r.gpa + r.sizeBytes);
}

/** A region with its views in this thread. */
export interface Region extends RegionLayout {
  bytes: Uint8Array;
  dirtyWords: Int32Array;
}

/** Makes the bitmap buffer for a region of `sizeBytes`. */
export function newDirtyBitmap(sizeBytes: number): SharedArrayBuffer {
  const pages = Math.ceil(sizeBytes / PAGE_SIZE);
  return new SharedArrayBuffer(Math.ceil(pages / 32) * 4);
}

/** Maps host memory into a view; supplied by the FFI layer (kept out of this file for fakes). */
export type HostViewFactory = (hostAddr: bigint, sizeBytes: number) => Uint8Array;

/** Guest physical memory with VMM-write tracking. */
export class GuestMemory {
  readonly regions: readonly Region[];
  readonly layout: MemoryLayout;

  /**
   * @param layout the regions
   * @param hostView turns a host address into a view (FFI); unused for regions with `buffer`
   */
  constructor(layout: MemoryLayout, hostView?: HostViewFactory) {
    this.layout = layout;
    this.regions = layout.regions.map((r) => {
      let bytes: Uint8Array;
      if (r.buffer) bytes = new Uint8Array(r.buffer, 0, r.sizeBytes);
      else if (hostView) bytes = hostView(r.hostAddr, r.sizeBytes);
      else throw new TypeError(`Cannot view region at gpa 0x${r.gpa.toString(16)}: no host view factory`);
      return { ...r, bytes, dirtyWords: new Int32Array(r.vmmDirty) };
    });
  }

  /** Total RAM in bytes. */
  get sizeBytes(): number {
    let n = 0;
    for (const r of this.regions) n += r.sizeBytes;
    return n;
  }

  /** The region holding `[gpa, gpa+len)`, or undefined when the range is not all RAM of one region. */
  regionOf(gpa: number, len: number): Region | undefined {
    for (const r of this.regions) {
      if (gpa >= r.gpa && len >= 0 && gpa + len <= r.gpa + r.sizeBytes) return r;
    }
    return undefined;
  }

  #find(gpa: number, len: number): Region {
    const r = this.regionOf(gpa, len);
    if (!r) {
      throw new RangeError(`Cannot access guest memory at 0x${gpa.toString(16)} length ${len}: not RAM`);
    }
    return r;
  }

  /** A read-only-by-convention view of `len` bytes at `gpa` (throws `RangeError` outside RAM). */
  slice(gpa: number, len: number): Uint8Array {
    const r = this.#find(gpa, len);
    const off = gpa - r.gpa;
    return r.bytes.subarray(off, off + len);
  }

  /** Copies `bytes` to `gpa` and marks the pages dirty. */
  write(gpa: number, bytes: Uint8Array): void {
    const r = this.#find(gpa, bytes.length);
    r.bytes.set(bytes, gpa - r.gpa);
    this.#mark(r, gpa - r.gpa, bytes.length);
  }

  /** Fills `len` bytes at `gpa` with `value` and marks the pages dirty. */
  fill(gpa: number, len: number, value = 0): void {
    const r = this.#find(gpa, len);
    r.bytes.fill(value, gpa - r.gpa, gpa - r.gpa + len);
    this.#mark(r, gpa - r.gpa, len);
  }

  readU8(gpa: number): number {
    return this.slice(gpa, 1)[0]!;
  }
  readU16(gpa: number): number {
    const b = this.slice(gpa, 2);
    return b[0]! | (b[1]! << 8);
  }
  readU32(gpa: number): number {
    const b = this.slice(gpa, 4);
    return (b[0]! | (b[1]! << 8) | (b[2]! << 16) | (b[3]! << 24)) >>> 0;
  }
  readU64(gpa: number): bigint {
    return BigInt(this.readU32(gpa)) | (BigInt(this.readU32(gpa + 4)) << 32n);
  }
  writeU8(gpa: number, v: number): void {
    this.write(gpa, Uint8Array.of(v & 0xff));
  }
  writeU16(gpa: number, v: number): void {
    this.write(gpa, Uint8Array.of(v & 0xff, (v >>> 8) & 0xff));
  }
  writeU32(gpa: number, v: number): void {
    this.write(gpa, Uint8Array.of(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff));
  }
  writeU64(gpa: number, v: bigint): void {
    this.writeU32(gpa, Number(v & 0xffffffffn));
    this.writeU32(gpa + 4, Number((v >> 32n) & 0xffffffffn));
  }

  #mark(r: Region, off: number, len: number): void {
    if (len <= 0) return;
    const first = off >>> PAGE_SHIFT;
    const last = (off + len - 1) >>> PAGE_SHIFT;
    for (let p = first; p <= last; p++) Atomics.or(r.dirtyWords, p >>> 5, 1 << (p & 31));
  }

  /**
   * Marks pages dirty for a write made outside `write*` (e.g. a whole-RAM copy by the loader).
   * @param gpa first byte
   * @param len length in bytes
   */
  markDirty(gpa: number, len: number): void {
    const r = this.#find(gpa, len);
    this.#mark(r, gpa - r.gpa, len);
  }

  /**
   * ORs the VMM bitmap of region `index` into `into` (a bitmap of the same size, e.g. KVM's log)
   * and clears the VMM bitmap.
   */
  takeVmmDirty(index: number, into: Uint32Array): void {
    const r = this.regions[index];
    if (!r) throw new RangeError(`Cannot read dirty bitmap of region ${index}: no such region`);
    const n = Math.min(r.dirtyWords.length, into.length);
    for (let i = 0; i < n; i++) {
      if (r.dirtyWords[i] !== 0) into[i] = (into[i]! | Atomics.exchange(r.dirtyWords, i, 0)) >>> 0;
    }
  }
}
