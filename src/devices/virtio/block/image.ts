/**
 * A disk image file opened for a virtio-blk drive, with QEMU-like image locking: a read-write
 * drive holds `flock(LOCK_EX|LOCK_NB)`, a read-only drive `flock(LOCK_SH|LOCK_NB)`, so two running
 * VMs never write one image (a second opener is refused with a clear error), while several
 * read-only users may share one. The lock is handed over during migration: the source calls
 * {@linkcode BlockImage.releaseLock} at switchover (after flushing, so the destination reads every
 * completed write), the destination opens with `lock: "deferred"` and calls
 * {@linkcode BlockImage.acquireLock} before resuming, and a source whose migration failed takes it
 * back with `acquireLock()`.
 *
 * The fd is process-wide: the I/O Worker does the I/O on the same fd number (see block.ts).
 * @module
 */
import { check, ErrnoError } from "../../../ffi/errno.ts";
import {
  closeFd,
  fileSize,
  flockFd,
  fsyncFd,
  LOCK_EX,
  LOCK_NB,
  LOCK_SH,
  LOCK_UN,
  O_DIRECT,
  O_RDONLY,
  O_RDWR,
  openFd,
} from "../../../sys/fd.ts";

const EWOULDBLOCK = 11;
/** Bytes per virtio-blk sector. */
export const SECTOR_BYTES = 512;

/** `-drive` options that concern the image. */
export interface BlockImageOptions {
  /** The drive id (for messages), e.g. `"rootfs"`. */
  driveId: string;
  path: string;
  readonly: boolean;
  /** Open with O_DIRECT (`direct=on`). */
  direct: boolean;
  /**
   * `"now"`: take the lock while opening (refuse if held). `"deferred"`: open without it (an
   * incoming migration's destination, while the source still runs); call `acquireLock()` later.
   * @default "now"
   */
  lock?: "now" | "deferred";
}

/** An open, locked disk image; see the module doc. */
export class BlockImage {
  readonly driveId: string;
  readonly path: string;
  readonly readonly: boolean;
  readonly direct: boolean;
  /** The fd requests use (O_DIRECT when `direct`). */
  readonly fd: number;
  /** A buffered fd for requests O_DIRECT cannot take (unaligned buffers); -1 when not direct. */
  readonly bufferedFd: number;
  readonly sizeBytes: number;
  #locked = false;
  #closed = false;

  /**
   * Opens (and by default locks) the image.
   * @throws {Error} naming the drive and file when it cannot be opened or is locked by another user
   */
  constructor(options: BlockImageOptions) {
    this.driveId = options.driveId;
    this.path = options.path;
    this.readonly = options.readonly;
    this.direct = options.direct;
    const mode = options.readonly ? O_RDONLY : O_RDWR;
    const what = `image '${options.path}' of drive '${options.driveId}'`;
    this.fd = openFd(options.path, mode | (options.direct ? O_DIRECT : 0), what);
    let buffered = -1;
    try {
      if (options.direct) {
        buffered = openFd(options.path, mode, what);
      }
      this.bufferedFd = buffered;
      this.sizeBytes = fileSize(this.fd, what);
      if ((options.lock ?? "now") === "now") this.acquireLock();
    } catch (e) {
      closeFd(this.fd);
      closeFd(buffered);
      throw e;
    }
  }

  /** Whole sectors in the image. */
  get capacitySectors(): number {
    return Math.floor(this.sizeBytes / SECTOR_BYTES);
  }

  /** Whether this process holds the image lock. */
  get lockHeld(): boolean {
    return this.#locked;
  }

  /**
   * Takes the image lock (exclusive for read-write, shared for read-only), without waiting.
   * @throws {Error} when another process (or another open of the image) holds a conflicting lock
   */
  acquireLock(): void {
    if (this.#locked) return;
    const rc = flockFd(this.fd, (this.readonly ? LOCK_SH : LOCK_EX) | LOCK_NB);
    if (rc === -EWOULDBLOCK) {
      throw new Error(
        `Cannot lock image '${this.path}' of drive '${this.driveId}': another process holds it ` +
          `(is another VM using this image? use readonly=on to share it read-only)`,
      );
    }
    check(rc, `lock image '${this.path}' of drive '${this.driveId}'`);
    this.#locked = true;
  }

  /** Flushes the image to stable storage, then releases the lock (migration switchover). */
  releaseLock(): void {
    if (!this.#locked) return;
    this.flush();
    check(flockFd(this.fd, LOCK_UN), `unlock image '${this.path}' of drive '${this.driveId}'`);
    this.#locked = false;
  }

  /** fdatasync(2) of the image (a no-op for read-only images). */
  flush(): void {
    if (this.readonly) return;
    const rc = fsyncFd(this.fd);
    if (rc < 0) throw new ErrnoError(`flush image '${this.path}' of drive '${this.driveId}'`, -rc);
  }

  /** Closes the fds (releasing the lock). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#locked = false;
    closeFd(this.fd);
    closeFd(this.bufferedFd);
  }
}
