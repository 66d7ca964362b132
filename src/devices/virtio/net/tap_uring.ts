/**
 * An io_uring for a tap's batches (rx_batch.ts, tx_batch.ts), checked to take `RWF_NOWAIT` reads
 * and writes on the tap: a kernel whose tun device lacks `FMODE_NOWAIT` answers them with
 * EOPNOTSUPP, and then the NIC keeps one `readv`/`writev` per frame.
 * @module
 */
import { MAP_ANONYMOUS, MAP_PRIVATE, mapMemory, PROT_RW, unmapMemory, viewAt } from "../../../sys/mman.ts";
import { IORING_OP_READV, Uring } from "../block/uring.ts";

/** `RWF_NOWAIT`: fail with EAGAIN instead of waiting. */
export const RWF_NOWAIT = 0x8;

/**
 * A ring of `entries` on which `RWF_NOWAIT` works for `tapFd` (a zero-length read, which takes no
 * frame, says so).
 * @throws {Error} when io_uring is unavailable or refuses RWF_NOWAIT on the tap
 */
export function tapUring(entries: number, tapFd: number): Uring {
  const ring = new Uring(entries);
  try {
    ring.prep(IORING_OP_READV, tapFd, 0, 0, -1, 0, 0, RWF_NOWAIT);
    ring.submit(1);
    let res = 0;
    ring.reap((_, r) => res = r);
    if (res < 0) throw new Error(`a RWF_NOWAIT read of the tap failed: errno ${-res}`);
    return ring;
  } catch (e) {
    ring.close();
    throw e;
  }
}

/** A batch's ring on the tap and its native iovec area (16 bytes an iovec). */
export interface TapBatchIo {
  ring: Uring;
  iovAddr: bigint;
  iovBytes: number;
  /** The iovec area as u32 words. */
  iov: Uint32Array;
}

/**
 * Maps an iovec area of `iovBytes` beside `ring` (a test's) or a new {@linkcode tapUring}; a ring
 * opened here is closed again when the map fails.
 * @throws {Error} as {@linkcode tapUring}, or when the area cannot be mapped
 */
export function openTapBatchIo(
  entries: number,
  tapFd: number,
  iovBytes: number,
  what: string,
  given?: Uring,
): TapBatchIo {
  const ring = given ?? tapUring(entries, tapFd);
  let iovAddr: bigint;
  try {
    iovAddr = mapMemory(iovBytes, { prot: PROT_RW, flags: MAP_PRIVATE | MAP_ANONYMOUS }, what);
  } catch (e) {
    if (!given) ring.close();
    throw e;
  }
  return { ring, iovAddr, iovBytes, iov: new Uint32Array(viewAt(iovAddr, iovBytes).buffer) };
}

/** Unmaps the iovec area and closes the ring. */
export function closeTapBatchIo(io: TapBatchIo): void {
  unmapMemory(io.iovAddr, io.iovBytes);
  io.ring.close();
}
