/**
 * File descriptors over the shim, for the layers above (devices, machine) so they make no raw shim
 * calls. Functions take fd numbers: fds are process-wide, so they travel to Workers in plans as
 * plain data. Results are bytes or `-errno` where a caller decides what an error means (a guest
 * request completes with an error status); the rest throw an `ErrnoError` naming the action.
 * @module
 */
import { check } from "../ffi/errno.ts";
import { cString, shim } from "../ffi/shim.ts";

/** `open(2)` flags ferry uses. */
export const O_RDONLY = 0, O_RDWR = 2, O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000, O_DIRECT = 0o40000;
/** `flock(2)` operations. */
export const LOCK_SH = 1, LOCK_EX = 2, LOCK_NB = 4, LOCK_UN = 8;
const EINTR = 4;

/**
 * Opens `path` (`O_CLOEXEC` is added).
 * @param what for the error, e.g. `"image 'disk.img' of drive 'rootfs'"`
 * @throws {ErrnoError} `Cannot open <what>: ENOENT (2)`
 */
export function openFd(path: string, flags: number, what: string): number {
  return check(shim().ferry_open(cString(path), flags | O_CLOEXEC, 0), `open ${what}`);
}

/** Closes an fd (ignoring errors: used on teardown); a negative fd is ignored. */
export function closeFd(fd: number): void {
  if (fd >= 0) shim().ferry_close(fd);
}

/** Size in bytes of an open file (`fstat`). @throws {ErrnoError} naming `what` */
export function fileSize(fd: number, what: string): number {
  return check(shim().ferry_fstat_size(fd), `stat ${what}`);
}

/** `fsync(2)`. @returns 0 or -errno */
export function fsyncFd(fd: number): number {
  return Number(shim().ferry_fsync(fd));
}

/** `flock(2)`. @returns 0 or -errno (-EWOULDBLOCK with `LOCK_NB` when another holds it) */
export function flockFd(fd: number, op: number): number {
  return Number(shim().ferry_flock(fd, op));
}

/** `read(2)` into `buf`, retrying EINTR. @returns bytes or -errno */
export function readFd(fd: number, buf: Uint8Array): number {
  for (;;) {
    const rc = Number(shim().ferry_read(fd, buf, BigInt(buf.length)));
    if (rc !== -EINTR) return rc;
  }
}

/** `write(2)` of `buf`, retrying EINTR. @returns bytes or -errno */
export function writeFd(fd: number, buf: Uint8Array): number {
  for (;;) {
    const rc = Number(shim().ferry_write(fd, buf, BigInt(buf.length)));
    if (rc !== -EINTR) return rc;
  }
}

/** `readv(2)` into the `count` buffers described by `iov` (struct iovec[]), retrying EINTR. */
export function readvFd(fd: number, iov: Uint8Array<ArrayBuffer>, count: number): number {
  for (;;) {
    const rc = Number(shim().ferry_readv(fd, iov, count));
    if (rc !== -EINTR) return rc;
  }
}

/** `writev(2)` from the `count` buffers described by `iov` (struct iovec[]), retrying EINTR. */
export function writevFd(fd: number, iov: Uint8Array<ArrayBuffer>, count: number): number {
  for (;;) {
    const rc = Number(shim().ferry_writev(fd, iov, count));
    if (rc !== -EINTR) return rc;
  }
}

/** `pread(2)` once (no retry: callers loop over short transfers). @returns bytes or -errno */
export function preadFd(fd: number, buf: Uint8Array, offset: number): number {
  return Number(shim().ferry_pread(fd, buf, BigInt(buf.length), BigInt(offset)));
}

/** `pwrite(2)` once (no retry: callers loop over short transfers). @returns bytes or -errno */
export function pwriteFd(fd: number, buf: Uint8Array, offset: number): number {
  return Number(shim().ferry_pwrite(fd, buf, BigInt(buf.length), BigInt(offset)));
}

/** The calling thread's id (`gettid`). */
export function threadId(): number {
  return Number(shim().ferry_gettid());
}
