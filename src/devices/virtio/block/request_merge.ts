/**
 * Request merging for virtio-blk's io_uring path, QEMU's rule (`virtio_blk_submit_multireq`):
 * the reads, or the writes, that one queue pass takes are staged, up to {@linkcode MERGE_MAX_REQS};
 * at the end of the pass (or when the kind changes, the stage is full, or a request that is not a
 * plain read or write-back write comes) they are sorted by sector, and each run of requests whose
 * sectors follow each other becomes one `IORING_OP_READV` / `WRITEV` over all their buffers. A
 * guest streaming small sequential requests then costs the host one operation per run instead of
 * one per request (the host disk sees 128 KiB instead of 32 × 4 KiB).
 *
 * Each request keeps its own slot, status byte and used entry: a merged operation that fails or
 * comes back short is redone part by part with pread/pwrite, so every request still gets its own
 * status, as unmerged.
 *
 * {@linkcode MergeStage} holds the staged requests of one pass; {@linkcode MergeGroups} the merged
 * operations in flight: their `struct iovec` arrays (native memory, stable until completion) and
 * which request each part belongs to. Both are fixed typed arrays: nothing is allocated per request.
 * @module
 */
import { MAP_ANONYMOUS, MAP_PRIVATE, mapMemory, PROT_RW, unmapMemory, viewAt } from "../../../sys/mman.ts";

/** Requests merged at most into one operation (QEMU's `VIRTIO_BLK_MAX_MERGE_REQS`). */
export const MERGE_MAX_REQS = 32;
/** Buffers of one merged operation at most (its iovec count). */
export const MERGE_MAX_PARTS = 64;
/** Merged operations in flight at most; beyond, runs are submitted unmerged. */
export const MERGE_GROUPS = 64;
/** Buffers the stage holds at most. */
const STAGE_PARTS = 4 * MERGE_MAX_PARTS;
const TWO32 = 4294967296;

/** The requests of one pass waiting to be merged: one kind, each with its buffers. */
export class MergeStage {
  /** The staged requests' kind (the server's K_READ / K_WRITE), -1 while empty. */
  kind = -1;
  /** Staged requests. */
  n = 0;
  /** Staged buffers (all requests). */
  parts = 0;
  readonly slot = new Int32Array(MERGE_MAX_REQS);
  readonly sector = new Float64Array(MERGE_MAX_REQS);
  readonly bytes = new Float64Array(MERGE_MAX_REQS);
  readonly first = new Int32Array(MERGE_MAX_REQS);
  readonly count = new Int32Array(MERGE_MAX_REQS);
  /** Request indices in sector order (after {@linkcode sort}). */
  readonly order = new Int32Array(MERGE_MAX_REQS);
  readonly gpa = new Float64Array(STAGE_PARTS);
  readonly host = new Float64Array(STAGE_PARTS);
  readonly len = new Uint32Array(STAGE_PARTS);

  /** Whether a request of `kind` with `parts` buffers can join (else: flush first). */
  fits(kind: number, parts: number): boolean {
    if (parts > MERGE_MAX_PARTS) return false;
    return this.n === 0 ||
      (kind === this.kind && this.n < MERGE_MAX_REQS && this.parts + parts <= STAGE_PARTS);
  }

  /** Starts a request (its buffers follow with {@linkcode addPart}); caller checked {@linkcode fits}. */
  begin(kind: number, slot: number, sector: number): void {
    const i = this.n++;
    this.kind = kind;
    this.slot[i] = slot;
    this.sector[i] = sector;
    this.bytes[i] = 0;
    this.first[i] = this.parts;
    this.count[i] = 0;
  }

  /** Adds a buffer to the request begun last. */
  addPart(gpa: number, host: number, len: number): void {
    const i = this.n - 1, p = this.parts++;
    this.gpa[p] = gpa;
    this.host[p] = host;
    this.len[p] = len;
    this.count[i]!++;
    this.bytes[i]! += len;
  }

  /** Fills {@linkcode order} with the requests in sector order (insertion sort: n ≤ 32, no allocation). */
  sort(): void {
    const o = this.order, s = this.sector;
    for (let i = 0; i < this.n; i++) {
      let j = i;
      while (j > 0 && s[o[j - 1]!]! > s[i]!) {
        o[j] = o[j - 1]!;
        j--;
      }
      o[j] = i;
    }
  }

  /** Empties the stage. */
  clear(): void {
    this.n = 0;
    this.parts = 0;
    this.kind = -1;
  }
}

/** Merged operations in flight: iovec arrays and the requests and buffers of each; see the module doc. */
export class MergeGroups {
  /** Requests of group g: `slot[g * MERGE_MAX_REQS + i]`, i < `reqs[g]`. */
  readonly reqs = new Int32Array(MERGE_GROUPS);
  readonly slot = new Int32Array(MERGE_GROUPS * MERGE_MAX_REQS);
  /** Buffers of group g: `[g * MERGE_MAX_PARTS + i]`, i < `parts[g]`; `slotOf` names their request. */
  readonly parts = new Int32Array(MERGE_GROUPS);
  readonly gpa = new Float64Array(MERGE_GROUPS * MERGE_MAX_PARTS);
  readonly len = new Uint32Array(MERGE_GROUPS * MERGE_MAX_PARTS);
  readonly off = new Float64Array(MERGE_GROUPS * MERGE_MAX_PARTS);
  readonly slotOf = new Int32Array(MERGE_GROUPS * MERGE_MAX_PARTS);
  /** Bytes of the whole operation. */
  readonly total = new Float64Array(MERGE_GROUPS);
  readonly #free = new Int32Array(MERGE_GROUPS);
  #nFree = MERGE_GROUPS;
  #addr = 0n;
  #base = 0;
  #iov: Uint32Array | undefined;
  readonly #bytes = MERGE_GROUPS * MERGE_MAX_PARTS * 16;

  constructor() {
    for (let i = 0; i < MERGE_GROUPS; i++) this.#free[i] = MERGE_GROUPS - 1 - i;
  }

  /** A free group, emptied, or -1 when every group is in flight. */
  alloc(): number {
    if (this.#nFree === 0) return -1;
    if (!this.#iov) {
      // Native memory the kernel reads the iovecs from; touched only as groups are used.
      this.#addr = mapMemory(this.#bytes, { prot: PROT_RW, flags: MAP_PRIVATE | MAP_ANONYMOUS }, "iovecs");
      this.#base = Number(this.#addr);
      this.#iov = new Uint32Array(viewAt(this.#addr, this.#bytes).buffer);
    }
    const g = this.#free[--this.#nFree]!;
    this.reqs[g] = 0;
    this.parts[g] = 0;
    this.total[g] = 0;
    return g;
  }

  /** Gives group `g` back. */
  release(g: number): void {
    this.#free[this.#nFree++] = g;
  }

  /** Host address of group `g`'s iovec array (for the SQE). */
  iovAddr(g: number): number {
    return this.#base + g * MERGE_MAX_PARTS * 16;
  }

  /** Adds request `slot` to group `g`. */
  addReq(g: number, slot: number): void {
    this.slot[g * MERGE_MAX_REQS + this.reqs[g]!++] = slot;
  }

  /** Adds a buffer of request `slot` to group `g`: its iovec and where it goes in the image. */
  addPart(g: number, slot: number, gpa: number, host: number, len: number, off: number): void {
    const i = g * MERGE_MAX_PARTS + this.parts[g]!++;
    this.gpa[i] = gpa;
    this.len[i] = len;
    this.off[i] = off;
    this.slotOf[i] = slot;
    this.total[g]! += len;
    const w = this.#iov!, k = 4 * i;
    w[k] = host >>> 0;
    w[k + 1] = Math.floor(host / TWO32);
    w[k + 2] = len;
    w[k + 3] = 0;
  }

  /** Unmaps the iovec memory (no group may be in flight). */
  close(): void {
    if (this.#iov) unmapMemory(this.#addr, this.#bytes);
    this.#iov = undefined;
  }
}
