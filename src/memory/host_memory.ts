/**
 * Guest RAM backing: anonymous host mappings owned explicitly (V8 never frees a view over
 * native memory, and unmapping under a live view segfaults: DESIGN.md §3). `free()` is called
 * only when the VM and every Worker holding a view are gone.
 * @module
 */
import { check } from "../ffi/errno.ts";
import { shim, viewAt } from "../ffi/shim.ts";
import {
  GuestMemory,
  layoutRegionIndex,
  type MemoryLayout,
  newDirtyBitmap,
  PAGE_SIZE,
} from "./guest_memory.ts";

const PROT_RW = 3;
const MAP_PRIVATE = 0x02, MAP_ANONYMOUS = 0x20, MAP_NORESERVE = 0x4000;
const MADV_DONTFORK = 10;
const MADV_HUGEPAGE = 14;
const MADV_POPULATE_WRITE = 23;
/** Huge-page size: populated ranges are widened to it (a THP fault backs as much anyway). */
const HUGE_BYTES = 2 * 1024 * 1024;

/**
 * Maps host memory for each `{gpa, sizeBytes}` range and returns the layout.
 * @param options.hugePages advise transparent huge pages now (a booting VM); a migration
 *   destination passes false, lands the incoming pages in 4 KiB pages and calls
 *   {@linkcode adviseHugePages} once the guest is in (docs/migration-performance.md, "Landing").
 */
export function allocateRam(
  ranges: { gpa: number; sizeBytes: number }[],
  options: { hugePages: boolean } = { hugePages: true },
): MemoryLayout {
  const regions = ranges.map((r, slot) => {
    if (r.sizeBytes % PAGE_SIZE !== 0) {
      throw new RangeError(`Cannot map RAM region of ${r.sizeBytes} bytes: not a multiple of ${PAGE_SIZE}`);
    }
    const addr = check(
      shim().ferry_mmap(
        0n,
        BigInt(r.sizeBytes),
        PROT_RW,
        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
        -1,
        0n,
      ),
      `map ${r.sizeBytes} bytes of guest RAM`,
    );
    shim().ferry_madvise(BigInt(addr), BigInt(r.sizeBytes), MADV_DONTFORK);
    if (options.hugePages) adviseRegion(BigInt(addr), r.sizeBytes);
    return {
      gpa: r.gpa,
      sizeBytes: r.sizeBytes,
      slot,
      hostAddr: BigInt(addr),
      vmmDirty: newDirtyBitmap(r.sizeBytes),
    };
  });
  return { regions };
}

/** Bytes each `-mem-prealloc` request backs; two run at a time (one per core here). */
const PREALLOC_CHUNK_BYTES = 64 * 1024 * 1024;
const PREALLOC_THREADS = 2;

/**
 * Backs every page of the layout with host memory (`-mem-prealloc`, MADV_POPULATE_WRITE on
 * blocking-pool threads, contents kept). A destination that does this before its source connects
 * no longer pays the host's backing cost inside the migration (docs/migration-performance.md).
 * @throws {Error} naming the errno when the host cannot back the memory (e.g. out of memory)
 */
export async function preallocRam(layout: MemoryLayout): Promise<void> {
  const jobs: { addr: bigint; len: number }[] = [];
  for (const r of layout.regions) {
    if (r.hostAddr === 0n) continue;
    for (let off = 0; off < r.sizeBytes; off += PREALLOC_CHUNK_BYTES) {
      jobs.push({ addr: r.hostAddr + BigInt(off), len: Math.min(PREALLOC_CHUNK_BYTES, r.sizeBytes - off) });
    }
  }
  const run = async () => {
    for (let j = jobs.shift(); j; j = jobs.shift()) {
      const rc = Number(await shim().ferry_madvise_async(j.addr, BigInt(j.len), MADV_POPULATE_WRITE));
      if (rc < 0) {
        throw new Error(`Cannot preallocate guest RAM (-mem-prealloc): madvise failed, errno ${-rc}`);
      }
    }
  };
  await Promise.all(Array.from({ length: PREALLOC_THREADS }, run));
}

/**
 * Transparent huge pages where the host allows them (THP "madvise" mode): fewer faults and TLB
 * misses for a running guest, and reads of never-written memory hit the huge zero page.
 */
function adviseRegion(addr: bigint, sizeBytes: number): void {
  shim().ferry_madvise(addr, BigInt(sizeBytes), MADV_HUGEPAGE);
}

/**
 * Advises transparent huge pages for all guest RAM of a layout mapped with `hugePages: false`,
 * once a migration has landed: later faults get huge pages and khugepaged may collapse the
 * landed 4 KiB pages in the background. Best effort (a host without THP ignores it).
 */
export function adviseHugePages(layout: MemoryLayout): void {
  for (const r of layout.regions) {
    if (r.hostAddr !== 0n) adviseRegion(r.hostAddr, r.sizeBytes);
  }
}

/** A `GuestMemory` over host mappings (usable in any thread of this process). */
export function hostGuestMemory(layout: MemoryLayout): GuestMemory {
  return new GuestMemory(layout, viewAt);
}

/** Unmaps the layout's host memory. */
export function freeRam(layout: MemoryLayout): void {
  for (const r of layout.regions) {
    if (r.hostAddr !== 0n) shim().ferry_munmap(r.hostAddr, BigInt(r.sizeBytes));
  }
}

let swapActive: boolean | undefined;

/** True when the host has swap: a swapped-out page is not resident yet not zero. */
function hostHasSwap(): boolean {
  if (swapActive === undefined) {
    try {
      swapActive = Deno.readTextFileSync("/proc/swaps").trim().split("\n").length > 1;
    } catch {
      swapActive = true; // unknown: assume the worst
    }
  }
  return swapActive;
}

/**
 * Whether {@linkcode residency} can answer on this host (it cannot when the host has swap: a
 * swapped-out page is not resident yet not zero).
 */
export function residencyKnown(): boolean {
  return !hostHasSwap();
}

/**
 * Which pages of `[gpa, gpa + pageCount pages)` the host has ever backed with memory (mincore),
 * one byte per page, bit 0 set when resident. A page that was never resident in an anonymous
 * mapping reads as zero, so migration can skip reading it. Returns undefined when the answer
 * could mislead (the host has swap) or the range is not one region's RAM.
 */
export function residency(layout: MemoryLayout, gpa: number, pageCount: number): Uint8Array | undefined {
  if (hostHasSwap()) return undefined;
  const r = layout.regions[layoutRegionIndex(layout, gpa, pageCount * PAGE_SIZE)];
  if (!r || r.hostAddr === 0n) return undefined;
  const vec = new Uint8Array(pageCount);
  const rc = shim().ferry_mincore(r.hostAddr + BigInt(gpa - r.gpa), BigInt(pageCount * PAGE_SIZE), vec);
  return Number(rc) < 0 ? undefined : vec;
}

/** How far ahead of the landing position the destination backs guest RAM. */
const POPULATE_AHEAD_BYTES = 32 * 1024 * 1024;

/**
 * Backs guest RAM ahead of where a migration lands raw pages, on a thread of its own
 * (MADV_POPULATE_WRITE, 2 MiB aligned; contents kept). On this host a fresh page costs the
 * kernel ~10-30× more to back while `recv` faults it in than the copy itself, so backing runs on
 * the other core while the main thread reads the socket (docs/migration-performance.md). Only
 * ranges next to arriving raw pages are backed: a sparse source leaves a sparse destination (at
 * most {@linkcode POPULATE_AHEAD_BYTES} more per island of data). Best effort: on a kernel
 * without MADV_POPULATE_WRITE (< 5.14) the pages fault in as before.
 */
export class Populator {
  #layout: MemoryLayout;
  /** Per region: backed (or requested) up to this byte offset, from `#from`. */
  #from: number[];
  #to: number[];
  #busy = false;
  #broken = false;

  constructor(layout: MemoryLayout) {
    this.#layout = layout;
    this.#from = layout.regions.map(() => 0);
    this.#to = layout.regions.map(() => 0);
  }

  /** Raw pages `[gpa, gpa + pageCount pages)` are about to land: keep backing ahead of them. */
  ahead(gpa: number, pageCount: number): void {
    if (this.#busy || this.#broken) return;
    const end = gpa + pageCount * PAGE_SIZE;
    const ri = layoutRegionIndex(this.#layout, gpa, end - gpa);
    if (ri < 0) return;
    const r = this.#layout.regions[ri]!;
    if (r.hostAddr === 0n) return;
    const off = gpa - r.gpa;
    // A jump outside the window restarts it here.
    if (off < this.#from[ri]! || off > this.#to[ri]!) this.#from[ri] = this.#to[ri] = floorHuge(off);
    const want = Math.min(r.sizeBytes, ceilHuge(end - r.gpa + POPULATE_AHEAD_BYTES));
    if (this.#to[ri]! >= want - POPULATE_AHEAD_BYTES / 2 && this.#to[ri]! >= end - r.gpa) return;
    const from = this.#to[ri]!;
    this.#to[ri] = want;
    this.#busy = true;
    shim().ferry_madvise_async(r.hostAddr + BigInt(from), BigInt(want - from), MADV_POPULATE_WRITE).then(
      (rc) => {
        this.#busy = false;
        if (Number(rc) < 0) this.#broken = true;
      },
      () => {
        this.#busy = false;
        this.#broken = true;
      },
    );
  }
}

function floorHuge(x: number): number {
  return Math.floor(x / HUGE_BYTES) * HUGE_BYTES;
}
function ceilHuge(x: number): number {
  return Math.ceil(x / HUGE_BYTES) * HUGE_BYTES;
}
