/**
 * Fresh guest RAM filled in one step: a migration destination lands raw pages through
 * userfaultfd's UFFDIO_COPY (shim `ferry_uffd_place`), which backs each missing page and copies
 * into it at once. Backing a page by a fault or `MADV_POPULATE_WRITE` and then writing it costs
 * the kernel a zeroing, a page-table walk per page and a second pass over the bytes; on this host
 * that was about half of a destination's CPU (docs/migration-performance.md, "Placing pages").
 *
 * While a placer is open, its regions are registered in MISSING mode: any touch of a page that is
 * not present (a read too) waits until the placer closes. So the owner reads guest RAM only where
 * {@linkcode residency} says a page is present, and lands every other raw page through
 * {@linkcode PagePlacer.place}.
 * @module
 */
import { ErrnoError } from "../ffi/errno.ts";
import { shim } from "../ffi/shim.ts";
import { layoutRegionIndex, type MemoryLayout, PAGE_SIZE } from "./guest_memory.ts";
import { residencyKnown } from "./host_memory.ts";
import { Userfault } from "./userfault.ts";

/** Places whole pages into the guest RAM of one layout; see the module doc. */
export class PagePlacer {
  #uf: Userfault;
  #layout: MemoryLayout;
  #closed = false;

  private constructor(uf: Userfault, layout: MemoryLayout) {
    this.#uf = uf;
    this.#layout = layout;
  }

  /**
   * Registers every region of `layout` with a new userfaultfd. Undefined when the host cannot:
   * no userfaultfd, or swap (then which pages are present, and so safe to read, is unknown).
   */
  static open(layout: MemoryLayout): PagePlacer | undefined {
    if (!residencyKnown()) return undefined;
    let uf: Userfault;
    try {
      uf = Userfault.open();
    } catch {
      return undefined;
    }
    try {
      for (const r of layout.regions) if (r.hostAddr !== 0n) uf.register(r.hostAddr, r.sizeBytes);
    } catch {
      uf.close();
      return undefined;
    }
    return new PagePlacer(uf, layout);
  }

  /**
   * Places `bytes` (whole pages, e.g. a staging buffer just received) at guest address `gpa`, on a
   * blocking-pool thread; `bytes` must not change until the promise settles. Pages already present
   * are overwritten in place.
   * @throws {RangeError} when the range is not inside one region
   * @throws {ErrnoError} when the kernel refuses (e.g. out of memory)
   */
  async place(gpa: number, bytes: Uint8Array): Promise<void> {
    const hostAddr = this.#hostAddr(gpa, bytes.length);
    const src = BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes as Uint8Array<ArrayBuffer>)));
    const rc = Number(await shim().ferry_uffd_place_async(this.#uf.fd, hostAddr, src, BigInt(bytes.length)));
    if (rc < 0) {
      throw new ErrnoError(`place ${bytes.length} bytes of guest RAM at 0x${gpa.toString(16)}`, -rc);
    }
  }

  #hostAddr(gpa: number, len: number): bigint {
    if (this.#closed) throw new Error("Cannot place guest RAM: the placer is closed");
    const r = this.#layout.regions[layoutRegionIndex(this.#layout, gpa, len)];
    if (!r || r.hostAddr === 0n || len % PAGE_SIZE !== 0 || (gpa - r.gpa) % PAGE_SIZE !== 0) {
      throw new RangeError(
        `Cannot place ${len} bytes at gpa 0x${gpa.toString(16)}: not whole pages of one region`,
      );
    }
    return r.hostAddr + BigInt(gpa - r.gpa);
  }

  /** Unregisters the regions (closing the descriptor): missing pages fault normally again. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#uf.close();
  }
}
