/**
 * Host addresses of guest RAM, for the I/O Worker's native calls that take raw pointers (io_uring
 * SQEs, `struct iovec`): each region's host base is computed once, and a guest range maps to a
 * Number (host addresses are below 2^53) with no allocation.
 * @module
 */
import type { GuestMemory } from "../../memory/guest_memory.ts";

/** Guest-physical → host-virtual translation over one {@linkcode GuestMemory}. */
export class HostMemory {
  readonly memory: GuestMemory;
  readonly #base: number[];
  /** One DataView per region: small reads and writes on the request path allocate nothing. */
  readonly #views: DataView[];

  constructor(memory: GuestMemory) {
    this.memory = memory;
    // A mapped region has its host address; a buffer-backed one (unit tests) the buffer's.
    this.#base = memory.regions.map((r) =>
      r.hostAddr !== 0n
        ? Number(r.hostAddr)
        : Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(r.bytes)))
    );
    this.#views = memory.regions.map((r) =>
      new DataView(r.bytes.buffer, r.bytes.byteOffset, r.bytes.byteLength)
    );
  }

  /**
   * The little-endian u32 at `gpa` (a request header field), read without allocating.
   * @throws {RangeError} outside RAM
   */
  u32(gpa: number): number {
    const i = this.#region(gpa, 4);
    return this.#views[i]!.getUint32(gpa - this.memory.regions[i]!.gpa, true);
  }

  /**
   * Writes byte `v` at `gpa` (a status byte) and marks its page dirty, as `GuestMemory.writeU8` does.
   * @throws {RangeError} outside RAM
   */
  setU8(gpa: number, v: number): void {
    const i = this.#region(gpa, 1);
    this.#views[i]!.setUint8(gpa - this.memory.regions[i]!.gpa, v);
    this.memory.markDirty(gpa, 1);
  }

  #region(gpa: number, len: number): number {
    const regions = this.memory.regions;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i]!;
      if (gpa >= r.gpa && gpa + len <= r.gpa + r.sizeBytes) return i;
    }
    throw new RangeError(`Cannot reach guest memory at 0x${gpa.toString(16)} length ${len}: not RAM`);
  }

  /**
   * Host address of `[gpa, gpa+len)`, which must lie in one region.
   * @throws {RangeError} outside RAM
   */
  addr(gpa: number, len: number): number {
    const regions = this.memory.regions;
    for (let i = 0; i < regions.length; i++) {
      const r = regions[i]!;
      if (gpa >= r.gpa && gpa + len <= r.gpa + r.sizeBytes) return this.#base[i]! + (gpa - r.gpa);
    }
    throw new RangeError(`Cannot reach guest memory at 0x${gpa.toString(16)} length ${len}: not RAM`);
  }
}

/**
 * A fixed array of `struct iovec` (two u64 each) for readv/writev, filled without allocation.
 */
export class IovecArray {
  readonly capacity: number;
  readonly bytes: Uint8Array<ArrayBuffer>;
  readonly #w: Uint32Array;
  count = 0;

  constructor(capacity: number) {
    this.capacity = capacity;
    const buf = new ArrayBuffer(16 * capacity);
    this.#w = new Uint32Array(buf);
    this.bytes = new Uint8Array(buf);
  }

  /** Appends one entry (caller checks {@linkcode capacity}). */
  push(addr: number, len: number): void {
    const w = 4 * this.count++;
    this.#w[w] = addr >>> 0;
    this.#w[w + 1] = Math.floor(addr / 4294967296);
    this.#w[w + 2] = len >>> 0;
    this.#w[w + 3] = 0;
  }
}
