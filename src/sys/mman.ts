/**
 * Memory mappings over the shim: anonymous buffers and file mappings (io_uring rings), and views
 * over them. A mapping outlives every view made of it only if the caller unmaps after the views
 * are gone (unmapping under a live view segfaults).
 * @module
 */
import { shim, viewAt } from "../ffi/shim.ts";

export { viewAt };

/** `PROT_READ | PROT_WRITE`. */
export const PROT_RW = 3;
/** `MAP_SHARED`, `MAP_PRIVATE`, `MAP_ANONYMOUS`, `MAP_POPULATE`. */
export const MAP_SHARED = 0x01, MAP_PRIVATE = 0x02, MAP_ANONYMOUS = 0x20, MAP_POPULATE = 0x8000;

/**
 * `mmap(2)` of `lenBytes`.
 * @param fd -1 for an anonymous mapping
 * @returns the address
 * @throws {Error} naming `what` and the errno
 */
export function mapMemory(
  lenBytes: number,
  options: { prot: number; flags: number; fd?: number; offset?: bigint },
  what: string,
): bigint {
  const addr = Number(
    shim().ferry_mmap(
      0n,
      BigInt(lenBytes),
      options.prot,
      options.flags,
      options.fd ?? -1,
      options.offset ?? 0n,
    ),
  );
  if (addr < 0 && addr > -4096) throw new Error(`Cannot map ${what}: errno ${-addr}`);
  return BigInt(addr);
}

/** `munmap(2)` (errors ignored: used on teardown). */
export function unmapMemory(addr: bigint, lenBytes: number): void {
  shim().ferry_munmap(addr, BigInt(lenBytes));
}
