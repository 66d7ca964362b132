/**
 * The two io_uring syscalls over the shim. The rings themselves (mapping, SQEs, CQEs) are driven
 * in TypeScript by `devices/virtio/block/uring.ts`.
 * @module
 */
import { check } from "../ffi/errno.ts";
import { shim } from "../ffi/shim.ts";

/** `IORING_ENTER_GETEVENTS`. */
export const IORING_ENTER_GETEVENTS = 1;

/**
 * `io_uring_setup(2)`: fills `params` (struct io_uring_params, 120 bytes).
 * @returns the ring fd
 * @throws {ErrnoError} e.g. ENOSYS, or EPERM under seccomp
 */
export function uringSetup(entries: number, params: Uint8Array<ArrayBuffer>): number {
  return check(shim().ferry_uring_setup(entries, params), "set up an io_uring");
}

/** `io_uring_enter(2)`. @returns entries submitted, or -errno */
export function uringEnter(fd: number, toSubmit: number, minComplete: number, flags: number): number {
  return Number(shim().ferry_uring_enter(fd, toSubmit, minComplete, flags));
}
