/**
 * An io_uring for a tap's batches (rx_batch.ts, tx_batch.ts), checked to take `RWF_NOWAIT` reads
 * and writes on the tap: a kernel whose tun device lacks `FMODE_NOWAIT` answers them with
 * EOPNOTSUPP, and then the NIC keeps one `readv`/`writev` per frame.
 * @module
 */
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
