/**
 * eventfd helpers over the shim: the doorbells between KVM (ioeventfd/irqfd), vCPU Workers and the
 * I/O Worker. An eventfd is a process-wide fd number, so it travels in plans as plain data.
 * @module
 */
import { check } from "../ffi/errno.ts";
import { shim } from "../ffi/shim.ts";
import { readFd, writeFd } from "./fd.ts";

export { closeFd } from "./fd.ts";

const EFD_NONBLOCK = 0o4000, EFD_CLOEXEC = 0o2000000;
const oneBytes = new Uint8Array(new BigUint64Array([1n]).buffer);
const sink = new Uint8Array(8);

/**
 * Creates a non-blocking eventfd.
 * @param what for the error message, e.g. `"queue 0 of virtio-blk/rootfs"`
 */
export function createEventfd(what: string): number {
  return check(shim().ferry_eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC), `create eventfd for ${what}`);
}

/** Adds 1 to the eventfd's counter (wakes its reader; for an irqfd, injects the interrupt). */
export function signalEventfd(fd: number): void {
  writeFd(fd, oneBytes);
}

/**
 * Reads and clears the counter.
 * @returns the count, 0 when nothing was pending (EAGAIN)
 */
export function drainEventfd(fd: number): number {
  const n = readFd(fd, sink);
  if (n !== 8) return 0;
  return Number(new DataView(sink.buffer).getBigUint64(0, true));
}
