/**
 * An io_uring (io_uring(7)) driven from TypeScript over its mapped rings: the shim gives only the
 * two syscalls (shim/uring.zig) and `mmap`; filling SQEs, publishing the SQ tail and reaping CQEs
 * happen here, on `Uint32Array` views of the kernel's ring memory, with no allocation per
 * operation (64-bit fields are written as two 32-bit words from a Number).
 *
 * One ring belongs to one thread (the I/O Worker). The ring fd is pollable: it is readable while
 * the completion queue holds entries, so the I/O Worker's `epoll_wait` wakes for completions.
 * @module
 */
import { closeFd } from "../../../sys/fd.ts";
import { MAP_POPULATE, MAP_SHARED, mapMemory, PROT_RW, unmapMemory, viewAt } from "../../../sys/mman.ts";
import { IORING_ENTER_GETEVENTS, uringEnter, uringSetup } from "../../../sys/uring.ts";

/** Opcodes (include/uapi/linux/io_uring.h). */
export const IORING_OP_READV = 1,
  IORING_OP_WRITEV = 2,
  IORING_OP_FSYNC = 3,
  IORING_OP_READ = 22,
  IORING_OP_WRITE = 23;
/** `sqe.flags`: the next SQE starts only after this one succeeded. */
export const IOSQE_IO_LINK = 1 << 2;
/** `fsync_flags`: fdatasync. */
export const IORING_FSYNC_DATASYNC = 1;

const IORING_FEAT_SINGLE_MMAP = 1;
const IORING_OFF_SQ_RING = 0n, IORING_OFF_CQ_RING = 0x8000000n, IORING_OFF_SQES = 0x10000000n;
const EINTR = 4, EAGAIN = 11, EBUSY = 16;
const SQE_WORDS = 16, CQE_WORDS = 4;
const TWO32 = 4294967296;

interface Mapping {
  addr: bigint;
  len: number;
}

/** A ring of `entries` submission slots (and twice as many completion slots). */
export class Uring {
  readonly fd: number;
  readonly entries: number;
  readonly cqEntries: number;
  readonly #maps: Mapping[] = [];
  readonly #sq: Uint32Array;
  readonly #cq: Uint32Array;
  readonly #cqSigned: Int32Array;
  readonly #sqes: Uint32Array;
  readonly #sqHead: number;
  readonly #sqTail: number;
  readonly #sqMask: number;
  readonly #cqHead: number;
  readonly #cqTail: number;
  readonly #cqMask: number;
  readonly #cqes: number;
  #tail = 0;
  #unsubmitted = 0;
  #closed = false;

  /**
   * Sets up a ring and maps it.
   * @throws {ErrnoError} when io_uring_setup or mmap fails (e.g. ENOSYS, EPERM under seccomp)
   */
  constructor(entries: number) {
    const params = new Uint32Array(30); // struct io_uring_params, 120 bytes
    this.fd = uringSetup(entries, new Uint8Array(params.buffer));
    try {
      this.entries = params[0]!;
      this.cqEntries = params[1]!;
      const features = params[5]!;
      // sq_off at byte 40: head, tail, ring_mask, ring_entries, flags, dropped, array; cq_off at 80.
      const sqOff = params.subarray(10, 20), cqOff = params.subarray(20, 30);
      const sqBytes = sqOff[6]! + this.entries * 4;
      const cqBytes = cqOff[5]! + this.cqEntries * 16;
      const single = (features & IORING_FEAT_SINGLE_MMAP) !== 0;
      const sqMap = this.#map(single ? Math.max(sqBytes, cqBytes) : sqBytes, IORING_OFF_SQ_RING);
      const cqMap = single ? sqMap : this.#map(cqBytes, IORING_OFF_CQ_RING);
      const sqesMap = this.#map(this.entries * 64, IORING_OFF_SQES);
      this.#sq = new Uint32Array(viewAt(sqMap.addr, sqMap.len).buffer);
      this.#cq = new Uint32Array(viewAt(cqMap.addr, cqMap.len).buffer);
      this.#cqSigned = new Int32Array(this.#cq.buffer);
      this.#sqes = new Uint32Array(viewAt(sqesMap.addr, sqesMap.len).buffer);
      this.#sqHead = sqOff[0]! / 4;
      this.#sqTail = sqOff[1]! / 4;
      this.#sqMask = this.#sq[sqOff[2]! / 4]!;
      this.#cqHead = cqOff[0]! / 4;
      this.#cqTail = cqOff[1]! / 4;
      this.#cqMask = this.#cq[cqOff[2]! / 4]!;
      this.#cqes = cqOff[5]! / 4;
      // The SQ index array maps slot i to SQE i, once and for all.
      const array = sqOff[6]! / 4;
      for (let i = 0; i < this.entries; i++) this.#sq[array + i] = i;
      this.#tail = Atomics.load(this.#sq, this.#sqTail);
    } catch (e) {
      this.close();
      throw e;
    }
  }

  #map(len: number, offset: bigint): Mapping {
    const addr = mapMemory(
      len,
      { prot: PROT_RW, flags: MAP_SHARED | MAP_POPULATE, fd: this.fd, offset },
      "the io_uring rings",
    );
    const m = { addr, len };
    this.#maps.push(m);
    return m;
  }

  /** Free submission slots (before the next {@linkcode submit}). */
  get sqSpace(): number {
    return this.entries - ((this.#tail - Atomics.load(this.#sq, this.#sqHead)) >>> 0);
  }

  /**
   * Fills the next SQE (caller checked {@linkcode sqSpace}).
   * @param addr host address of the buffer (a Number: below 2^53)
   * @param off file offset in bytes
   * @param userData a small integer returned in the CQE
   */
  prep(
    op: number,
    fd: number,
    addr: number,
    len: number,
    off: number,
    userData: number,
    flags = 0,
    opFlags = 0,
  ): void {
    const w = (this.#tail & this.#sqMask) * SQE_WORDS;
    const e = this.#sqes;
    e[w] = op | (flags << 8); // opcode, flags, ioprio 0
    e[w + 1] = fd;
    e[w + 2] = off >>> 0;
    e[w + 3] = Math.floor(off / TWO32);
    e[w + 4] = addr >>> 0;
    e[w + 5] = Math.floor(addr / TWO32);
    e[w + 6] = len;
    e[w + 7] = opFlags;
    e[w + 8] = userData;
    e[w + 9] = 0;
    for (let i = 10; i < SQE_WORDS; i++) e[w + i] = 0;
    this.#tail = (this.#tail + 1) >>> 0;
    this.#unsubmitted++;
  }

  /** Completions posted and not yet reaped. */
  get completed(): number {
    return (Atomics.load(this.#cq, this.#cqTail) - Atomics.load(this.#cq, this.#cqHead)) >>> 0;
  }

  /** SQEs filled and not yet handed to the kernel. */
  get unsubmitted(): number {
    return this.#unsubmitted;
  }

  /**
   * Publishes the filled SQEs and enters the kernel; with `waitFor` > 0 also waits for that many
   * completions.
   * @throws {Error} when io_uring_enter fails for a reason other than EINTR/EAGAIN/EBUSY
   */
  submit(waitFor = 0): void {
    Atomics.store(this.#sq, this.#sqTail, this.#tail);
    for (;;) {
      const n = this.#unsubmitted;
      if (n === 0 && waitFor === 0) return;
      const rc = uringEnter(this.fd, n, waitFor, waitFor > 0 ? IORING_ENTER_GETEVENTS : 0);
      if (rc >= 0) {
        this.#unsubmitted -= rc;
        if (this.#unsubmitted === 0 || rc === 0) return;
        continue;
      }
      if (rc === -EINTR) continue;
      if (rc === -EAGAIN || rc === -EBUSY) {
        // Completion queue pressure: the caller reaps and submits again.
        return;
      }
      throw new Error(`Cannot submit to the io_uring: io_uring_enter errno ${-rc}`);
    }
  }

  /**
   * Hands every pending completion to `onCqe` (user data, result: bytes or -errno) and frees it.
   * @returns how many were reaped
   */
  reap(onCqe: (userData: number, res: number) => void): number {
    let head = Atomics.load(this.#cq, this.#cqHead);
    const tail = Atomics.load(this.#cq, this.#cqTail);
    let n = 0;
    while (head !== tail) {
      const w = this.#cqes + (head & this.#cqMask) * CQE_WORDS;
      const userData = this.#cq[w]!;
      const res = this.#cqSigned[w + 2]!;
      head = (head + 1) >>> 0;
      n++;
      Atomics.store(this.#cq, this.#cqHead, head); // free the slot before the callback may submit
      onCqe(userData, res);
    }
    return n;
  }

  /** Unmaps the rings and closes the fd. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const m of this.#maps) unmapMemory(m.addr, m.len);
    this.#maps.length = 0;
    closeFd(this.fd);
  }
}
