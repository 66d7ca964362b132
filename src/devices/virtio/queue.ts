/**
 * The split virtqueue (virtio 1.x §2.7) from the device side, with no device knowledge:
 * take descriptor chains from the available ring, give them back on the used ring, decide
 * whether the driver wants an interrupt (with or without `VIRTIO_F_EVENT_IDX`).
 *
 * A hostile guest must never hang or crash ferry: every index is bounded by the queue size,
 * chains are bounded in length (a loop ends as an error), indirect tables are bounded and never
 * nested, every buffer must lie in guest RAM, and device-writable buffers must follow readable
 * ones. A bad chain comes back from {@linkcode Virtqueue.pop} with `error` set (the device
 * returns it with length 0); a queue whose rings are unusable throws {@linkcode QueueError}
 * (the transport then marks the device NEEDS_RESET).
 *
 * Every write ferry makes to guest RAM here goes through `GuestMemory.write*`, which marks the
 * VMM dirty bitmap (STYLE.md c.10).
 * @module
 */
import type { GuestMemory } from "../../memory/guest_memory.ts";
import type { QueueRegs } from "./queue_state.ts";

/** Descriptor flags. */
export const VIRTQ_DESC_F_NEXT = 1, VIRTQ_DESC_F_WRITE = 2, VIRTQ_DESC_F_INDIRECT = 4;
/** Available ring flag: the driver does not want interrupts. */
export const VIRTQ_AVAIL_F_NO_INTERRUPT = 1;
/** Used ring flag: the device needs no notification now. */
export const VIRTQ_USED_F_NO_NOTIFY = 1;
/** Bytes per descriptor. */
export const VIRTQ_DESC_BYTES = 16;
/** Largest byte count of one chain (the used ring's `len` is 32-bit). */
export const MAX_CHAIN_BYTES = 0xffff_ffff;
/** Largest indirect table (entries). */
export const MAX_INDIRECT_ENTRIES = 32768;

/** One buffer of a chain. */
export interface Segment {
  gpa: number;
  len: number;
  /** Device-writable. */
  writable: boolean;
}

/** A chain taken from the available ring. */
export interface DescriptorChain {
  /** Head descriptor index: what goes back on the used ring. */
  head: number;
  /** Readable segments first, then writable ones. Zero-length buffers are dropped. */
  segments: Segment[];
  readableBytes: number;
  writableBytes: number;
  /** Why the chain is unusable; the device should return it with length 0. */
  error?: string;
}

/** The queue's rings are unusable (bad index or addresses): stop using it. */
export class QueueError extends Error {
  override name = "QueueError";
}

const fenceWord = new Int32Array(new SharedArrayBuffer(4));

/** A full memory barrier between ring accesses (an atomic RMW orders plain accesses around it). */
export function memoryFence(): void {
  Atomics.add(fenceWord, 0, 0);
}

/** Options for {@linkcode Virtqueue}. */
export interface VirtqueueOptions {
  memory: GuestMemory;
  regs: QueueRegs;
  /** `VIRTIO_F_EVENT_IDX` was negotiated. */
  eventIdx: boolean;
}

/** A DataView over `[gpa, gpa+len)` when it lies in one RAM region. */
function ringView(mem: GuestMemory, gpa: number, len: number): DataView | undefined {
  if (len <= 0 || !Number.isSafeInteger(gpa)) return undefined;
  const r = mem.regionOf(gpa, len);
  if (!r) return undefined;
  return new DataView(r.bytes.buffer, r.bytes.byteOffset + (gpa - r.gpa), len);
}

/**
 * The 16-bit words of a ring's view (little-endian host, as x86). Undefined without a view, or at
 * an odd address (then `check` refuses the queue: rings are 2-, 4- and 16-byte aligned).
 */
function wordView(dv: DataView | undefined): Uint16Array | undefined {
  if (!dv || dv.byteOffset % 2 !== 0) return undefined;
  return new Uint16Array(dv.buffer, dv.byteOffset, dv.byteLength >> 1);
}

/** Marks `chain` unusable with the reason. */
function failChain(chain: DescriptorChain, why: string): DescriptorChain {
  chain.error = why;
  return chain;
}

/** A split virtqueue over guest memory; see the module doc. */
export class Virtqueue {
  readonly regs: QueueRegs;
  readonly #mem: GuestMemory;
  readonly #eventIdx: boolean;
  readonly #size: number;
  readonly #desc: number;
  readonly #avail: number;
  readonly #used: number;
  /**
   * Direct views of the rings (each lies in one RAM region; the available ring as words only), so
   * that ring accesses allocate nothing; undefined when a ring is not in RAM (then
   * {@linkcode check} refuses the queue).
   */
  readonly #dDesc: DataView | undefined;
  readonly #dUsed: DataView | undefined;
  /**
   * The available and used rings as 16-bit words, for the fields both sides change while the other
   * reads them (indices, flags, event indices): each is read and written in one access
   * (`Atomics`). A `DataView` u16 access may be two byte accesses in V8's unoptimised code, and a
   * torn available index read as the driver crossed a multiple of 256 (0x26ff → 0x2700 read as
   * 0x27ff) made the device take up to 255 chains the driver had not offered.
   */
  readonly #uAvail: Uint16Array | undefined;
  readonly #uUsed: Uint16Array | undefined;

  /** Takes a snapshot of the queue's size and addresses (call {@linkcode check} before use). */
  constructor(options: VirtqueueOptions) {
    this.regs = options.regs;
    this.#mem = options.memory;
    this.#eventIdx = options.eventIdx;
    this.#size = options.regs.size;
    this.#desc = options.regs.descGpa;
    this.#avail = options.regs.driverGpa;
    this.#used = options.regs.deviceGpa;
    const n = this.#size;
    this.#dDesc = ringView(this.#mem, this.#desc, 16 * n);
    this.#dUsed = ringView(this.#mem, this.#used, 6 + 8 * n);
    this.#uAvail = wordView(ringView(this.#mem, this.#avail, 6 + 2 * n));
    this.#uUsed = wordView(this.#dUsed);
  }

  get size(): number {
    return this.#size;
  }

  /**
   * Whether this view still describes its queue: same size and ring addresses in the registers
   * (the driver may rewrite them after a reset) and the same event-idx choice.
   */
  matches(eventIdx: boolean): boolean {
    const r = this.regs;
    return eventIdx === this.#eventIdx && r.size === this.#size && r.descGpa === this.#desc &&
      r.driverGpa === this.#avail && r.deviceGpa === this.#used;
  }

  /**
   * Validates size and ring placement.
   * @returns why the queue cannot be used, or undefined
   */
  check(): string | undefined {
    const n = this.#size;
    if (n === 0 || (n & (n - 1)) !== 0 || n > this.regs.maxSize) {
      return `size ${n} is not a power of two 1..${this.regs.maxSize}`;
    }
    if (this.#desc % 16 || this.#avail % 2 || this.#used % 4) return "ring addresses are misaligned";
    if (!this.#mem.regionOf(this.#desc, 16 * n)) {
      return `descriptor table at 0x${this.#desc.toString(16)} is not in RAM`;
    }
    if (!this.#mem.regionOf(this.#avail, 6 + 2 * n)) {
      return `available ring at 0x${this.#avail.toString(16)} is not in RAM`;
    }
    if (!this.#mem.regionOf(this.#used, 6 + 8 * n)) {
      return `used ring at 0x${this.#used.toString(16)} is not in RAM`;
    }
    return undefined;
  }

  /**
   * How many chains the driver has made available and the device not yet taken.
   * @throws {QueueError} when the driver's index is more than a ring ahead
   */
  pending(): number {
    const idx = this.#availU16(2);
    const n = (idx - this.regs.nextAvail) & 0xffff;
    if (n > this.#size) {
      throw new QueueError(
        `available index ${idx} is ${n} entries ahead of ${this.regs.nextAvail} in a ring of ${this.#size}`,
      );
    }
    return n;
  }

  /**
   * Takes the next available chain.
   * @returns the chain (check `error`), or undefined when none is pending
   * @throws {QueueError} on a bogus available index or head
   */
  pop(): DescriptorChain | undefined {
    if (this.pending() === 0) return undefined;
    memoryFence(); // read ring entries only after the index
    const next = this.regs.nextAvail;
    const at = 4 + 2 * (next % this.#size);
    const head = this.#availU16(at);
    this.regs.nextAvail = next + 1;
    if (head >= this.#size) {
      throw new QueueError(`available ring entry ${next} names descriptor ${head} of ${this.#size}`);
    }
    return this.#walk(head);
  }

  #walk(head: number): DescriptorChain {
    const chain: DescriptorChain = { head, segments: [], readableBytes: 0, writableBytes: 0 };
    let table = this.#desc, tableSize = this.#size, limit = this.#size, count = 0;
    let indirect = false, idx = head, total = 0;
    for (;;) {
      if (idx >= tableSize) {
        return failChain(chain, `descriptor index ${idx} is outside a table of ${tableSize}`);
      }
      if (++count > limit) return failChain(chain, `chain is longer than ${limit} descriptors (a loop?)`);
      let dv: DataView, o: number;
      if (!indirect && this.#dDesc) {
        dv = this.#dDesc;
        o = VIRTQ_DESC_BYTES * idx;
      } else {
        const d = this.#mem.slice(table + VIRTQ_DESC_BYTES * idx, VIRTQ_DESC_BYTES);
        dv = new DataView(d.buffer, d.byteOffset, VIRTQ_DESC_BYTES);
        o = 0;
      }
      const addr = dv.getUint32(o, true) + dv.getUint32(o + 4, true) * 4294967296;
      const len = dv.getUint32(o + 8, true);
      const flags = dv.getUint16(o + 12, true);
      const nextIdx = dv.getUint16(o + 14, true);
      if (flags & VIRTQ_DESC_F_INDIRECT) {
        if (indirect) return failChain(chain, "indirect descriptor inside an indirect table");
        if (flags & VIRTQ_DESC_F_NEXT) return failChain(chain, "indirect descriptor with NEXT set");
        if (len === 0 || len % VIRTQ_DESC_BYTES !== 0 || len / VIRTQ_DESC_BYTES > MAX_INDIRECT_ENTRIES) {
          return failChain(
            chain,
            `indirect table length ${len} is not a multiple of 16 up to ${MAX_INDIRECT_ENTRIES} entries`,
          );
        }
        if (addr % 16 !== 0 || !this.#mem.regionOf(addr, len)) {
          return failChain(chain, `indirect table at 0x${addr.toString(16)} is not in RAM`);
        }
        indirect = true;
        table = addr;
        tableSize = limit = len / VIRTQ_DESC_BYTES;
        count = 0;
        idx = 0;
        continue;
      }
      if (len > 0) {
        const writable = (flags & VIRTQ_DESC_F_WRITE) !== 0;
        if (!writable && chain.writableBytes > 0) {
          return failChain(chain, "readable buffer after a writable one");
        }
        if (!Number.isSafeInteger(addr) || !this.#mem.regionOf(addr, len)) {
          return failChain(chain, `buffer 0x${addr.toString(16)}+${len} is not in RAM`);
        }
        total += len;
        if (total > MAX_CHAIN_BYTES) {
          return failChain(chain, `chain holds more than ${MAX_CHAIN_BYTES} bytes`);
        }
        this.#pushSegment(chain, addr, len, writable);
      }
      if (!(flags & VIRTQ_DESC_F_NEXT)) return chain;
      idx = nextIdx;
    }
  }

  #pushSegment(chain: DescriptorChain, gpa: number, len: number, writable: boolean): void {
    // A buffer may span two RAM regions only if they are contiguous; regionOf() above required one region.
    chain.segments.push({ gpa, len, writable });
    if (writable) chain.writableBytes += len;
    else chain.readableBytes += len;
  }

  /** Puts `head` on the used ring with `len` bytes written (the index is published by {@linkcode flushUsed}). */
  pushUsed(head: number, len: number): void {
    const off = 4 + 8 * (this.regs.nextUsed % this.#size);
    const dv = this.#dUsed;
    if (dv) {
      dv.setUint32(off, head, true);
      dv.setUint32(off + 4, len >>> 0, true);
      this.#mem.markDirty(this.#used + off, 8);
    } else {
      this.#mem.writeU32(this.#used + off, head);
      this.#mem.writeU32(this.#used + off + 4, len >>> 0);
    }
    this.regs.nextUsed = this.regs.nextUsed + 1;
  }

  /** Publishes the used index (after the entries, with a fence between). */
  flushUsed(): void {
    memoryFence();
    this.#setUsedU16(2, this.regs.nextUsed);
    memoryFence();
  }

  /**
   * Tells the driver that the device is processing and needs no notification: without event idx,
   * sets `VIRTQ_USED_F_NO_NOTIFY` in the used ring's flags (with event idx, leaving `avail_event`
   * behind does the same).
   */
  disableNotification(): void {
    if (!this.#eventIdx) this.#setUsedU16(0, VIRTQ_USED_F_NO_NOTIFY);
  }

  /**
   * Writes a u16 of the used ring at byte `off` (even) in one store and marks it dirty, without
   * allocating.
   */
  #setUsedU16(off: number, v: number): void {
    if (this.#uUsed) {
      Atomics.store(this.#uUsed, off >> 1, v & 0xffff);
      this.#mem.markDirty(this.#used + off, 2);
    } else this.#mem.writeU16(this.#used + off, v);
  }

  /** Reads a u16 of the available ring at byte `off` (even) in one load, without allocating. */
  #availU16(off: number): number {
    return this.#uAvail ? Atomics.load(this.#uAvail, off >> 1) : this.#mem.readU16(this.#avail + off);
  }

  /**
   * Asks to be notified at the next available entry: with event idx writes `avail_event`,
   * without it clears `VIRTQ_USED_F_NO_NOTIFY`.
   * @returns true when more chains arrived meanwhile, so the caller should keep processing
   */
  enableNotification(): boolean {
    if (this.#eventIdx) this.#setUsedU16(4 + 8 * this.#size, this.regs.nextAvail);
    else this.#setUsedU16(0, 0);
    memoryFence();
    return this.pending() > 0;
  }

  /** Whether the driver wants an interrupt for the entries used since the last call. */
  needsInterrupt(): boolean {
    const now = this.regs.nextUsed, old = this.regs.signalledUsed;
    this.regs.signalledUsed = now;
    memoryFence();
    if (this.#eventIdx) {
      const event = this.#availU16(4 + 2 * this.#size);
      return ((now - event - 1) & 0xffff) < ((now - old) & 0xffff);
    }
    if (now === old) return false;
    return (this.#availU16(0) & VIRTQ_AVAIL_F_NO_INTERRUPT) === 0;
  }
}

/**
 * Copies `len` bytes of the chain's readable part starting at byte `offset` into a new array.
 * @throws {RangeError} when the readable part is shorter
 */
export function readFromChain(
  memory: GuestMemory,
  chain: DescriptorChain,
  offset: number,
  len: number,
): Uint8Array {
  const out = new Uint8Array(len);
  let pos = 0, skip = offset;
  for (const s of chain.segments) {
    if (s.writable || pos >= len) break;
    if (skip >= s.len) {
      skip -= s.len;
      continue;
    }
    const n = Math.min(s.len - skip, len - pos);
    out.set(memory.slice(s.gpa + skip, n), pos);
    pos += n;
    skip = 0;
  }
  if (pos < len) {
    throw new RangeError(
      `Cannot read ${len} bytes at ${offset} of a chain with ${chain.readableBytes} readable`,
    );
  }
  return out;
}

/**
 * Writes `bytes` into the chain's writable part starting at byte `offset` (through
 * `GuestMemory.write`, so the pages are marked dirty).
 * @returns bytes written (fewer when the writable part is shorter)
 */
export function writeToChain(
  memory: GuestMemory,
  chain: DescriptorChain,
  offset: number,
  bytes: Uint8Array,
): number {
  let pos = 0, skip = offset;
  for (const s of chain.segments) {
    if (!s.writable) continue;
    if (pos >= bytes.length) break;
    if (skip >= s.len) {
      skip -= s.len;
      continue;
    }
    const n = Math.min(s.len - skip, bytes.length - pos);
    memory.write(s.gpa + skip, bytes.subarray(pos, pos + n));
    pos += n;
    skip = 0;
  }
  return pos;
}

/** The writable segments of a chain covering `len` bytes from writable byte `offset`. */
export function writableRanges(chain: DescriptorChain, offset: number, len: number): Segment[] {
  const out: Segment[] = [];
  let skip = offset, left = len;
  for (const s of chain.segments) {
    if (!s.writable || left === 0) continue;
    if (skip >= s.len) {
      skip -= s.len;
      continue;
    }
    const n = Math.min(s.len - skip, left);
    out.push({ gpa: s.gpa + skip, len: n, writable: true });
    left -= n;
    skip = 0;
  }
  return out;
}

/** The readable segments of a chain covering `len` bytes from readable byte `offset`. */
export function readableRanges(chain: DescriptorChain, offset: number, len: number): Segment[] {
  const out: Segment[] = [];
  let skip = offset, left = len;
  for (const s of chain.segments) {
    if (s.writable || left === 0) continue;
    if (skip >= s.len) {
      skip -= s.len;
      continue;
    }
    const n = Math.min(s.len - skip, left);
    out.push({ gpa: s.gpa + skip, len: n, writable: false });
    left -= n;
    skip = 0;
  }
  return out;
}
