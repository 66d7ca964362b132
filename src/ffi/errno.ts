/**
 * Negative errno in, typed error out: every shim result passes through {@linkcode check}.
 * @module
 */

const NAMES: Record<number, string> = {
  1: "EPERM",
  2: "ENOENT",
  3: "ESRCH",
  4: "EINTR",
  5: "EIO",
  6: "ENXIO",
  7: "E2BIG",
  9: "EBADF",
  11: "EAGAIN",
  12: "ENOMEM",
  13: "EACCES",
  14: "EFAULT",
  16: "EBUSY",
  17: "EEXIST",
  19: "ENODEV",
  20: "ENOTDIR",
  21: "EISDIR",
  22: "EINVAL",
  24: "EMFILE",
  25: "ENOTTY",
  27: "EFBIG",
  28: "ENOSPC",
  30: "EROFS",
  32: "EPIPE",
  34: "ERANGE",
  38: "ENOSYS",
  95: "EOPNOTSUPP",
  110: "ETIMEDOUT",
};

/** The symbolic name of an errno number, e.g. `22` → `"EINVAL"`. */
export function errnoName(errno: number): string {
  return NAMES[errno] ?? `errno ${errno}`;
}

/** A failed system call: `.errno` (positive) and `.op` (what was being done). */
export class ErrnoError extends Error {
  override name = "ErrnoError";
  readonly errno: number;
  readonly op: string;
  constructor(op: string, errno: number) {
    super(`Cannot ${op}: ${errnoName(errno)} (${errno})`);
    this.errno = errno;
    this.op = op;
  }
}

/**
 * Returns `rc` as a number when it is `>= 0`; throws {@linkcode ErrnoError} for `-errno`.
 * @param rc a shim result
 * @param op the action, for the message: `"set memory slot 0"`
 */
export function check(rc: number | bigint, op: string): number {
  const n = Number(rc);
  if (n < 0) throw new ErrnoError(op, -n);
  return n;
}
