/**
 * userfaultfd(2) over the shim's thin primitives (shim/uffd.zig): a registered range of guest RAM
 * whose missing pages, when touched by the guest, by KVM inside the kernel (page-table walks, the
 * PVM switch page) or by any VMM thread, block the toucher until someone supplies them with
 * {@linkcode Userfault.copy} or {@linkcode Userfault.zero}. Post-copy migration stands on it.
 *
 * Measured on this host (tests/uffd_pvm_test.ts): PVM resolves every kind of access through it —
 * guest loads and stores in native mode, KVM's own reads of guest page tables and of the PVM VIF
 * page, and VMM reads from another thread.
 * @module
 */
import { ABI } from "../ffi/abi.ts";
import { check, ErrnoError } from "../ffi/errno.ts";
import { shim } from "../ffi/shim.ts";

const O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000;
/** `UFFDIO_REGISTER_MODE_MISSING`. */
const MODE_MISSING = 1n;
/** `UFFD_EVENT_PAGEFAULT`. */
const EVENT_PAGEFAULT = 0x12;
/** `UFFD_FEATURE_THREAD_ID`: each fault names the thread that faulted. */
const FEATURE_THREAD_ID = 1n << 8n;
/** `UFFD_PAGEFAULT_FLAG_WRITE`. */
const FLAG_WRITE = 1n;
const EAGAIN = 11, EEXIST = 17;
const MSG_BYTES = ABI["uffd_msg"];

/** One page fault read from the descriptor. */
export interface PageFault {
  /** Host virtual address of the faulting byte (not page-aligned). */
  address: bigint;
  /** The access was a write. */
  write: boolean;
  /** Thread id of the faulting thread (0 unless opened with `threadIds`). */
  tid: number;
}

/**
 * One userfaultfd in MISSING mode. Nonblocking: {@linkcode readFaults} returns at once and
 * {@linkcode wait} waits on a blocking-pool thread, so the main thread stays free.
 *
 * @example
 * ```ts
 * const uf = Userfault.open();
 * uf.register(region.hostAddr, region.sizeBytes);
 * for (const f of uf.readFaults()) uf.copy(f.address & ~4095n, pageBytes);
 * ```
 */
export class Userfault {
  #fd: number;
  #closed = false;
  #msgs = new Uint8Array(MSG_BYTES * 64);
  #out = new BigUint64Array(2);

  private constructor(fd: number) {
    this.#fd = fd;
  }

  /**
   * Opens a userfaultfd (the syscall, or /dev/userfaultfd) and does the API handshake.
   * @param options `threadIds`: ask the kernel to name the faulting thread in each fault
   * @throws {ErrnoError} when the host has neither, or the kernel refuses the API
   */
  static open(options: { threadIds?: boolean } = {}): Userfault {
    const fd = check(shim().ferry_uffd_open(O_CLOEXEC | O_NONBLOCK), "open a userfaultfd");
    const uf = new Userfault(fd);
    try {
      const features = options.threadIds ? FEATURE_THREAD_ID : 0n;
      check(shim().ferry_uffd_api(fd, features, uf.#out), "negotiate the userfaultfd API");
    } catch (e) {
      uf.close();
      throw e;
    }
    return uf;
  }

  /**
   * Wraps a descriptor opened (and negotiated) by {@linkcode open} in another thread of this
   * process; the opener keeps ownership (only it closes).
   */
  static adopt(fd: number): Userfault {
    return new Userfault(fd);
  }

  /** The descriptor (for logs). */
  get fd(): number {
    return this.#fd;
  }

  /**
   * Registers `[hostAddr, hostAddr + len)` in MISSING mode: from now on a touch of a page that is
   * not present waits for this descriptor. Pages already present are unaffected.
   */
  register(hostAddr: bigint, len: number): void {
    const ioctls = new BigUint64Array(1);
    check(
      shim().ferry_uffd_register(this.#fd, hostAddr, BigInt(len), MODE_MISSING, ioctls),
      `register ${len} bytes at 0x${hostAddr.toString(16)} with userfaultfd`,
    );
    // The range must support UFFDIO_COPY (bit 3) and UFFDIO_ZEROPAGE (bit 4).
    if ((ioctls[0]! & 0x18n) !== 0x18n) {
      this.unregister(hostAddr, len);
      throw new Error(
        `Cannot serve faults at 0x${hostAddr.toString(16)}: userfaultfd lacks COPY or ZEROPAGE`,
      );
    }
  }

  /** Unregisters `[hostAddr, hostAddr + len)`: its missing pages fault normally again. */
  unregister(hostAddr: bigint, len: number): void {
    check(shim().ferry_uffd_unregister(this.#fd, hostAddr, BigInt(len)), "unregister a userfaultfd range");
  }

  /**
   * Places `bytes` (whole pages) at `hostAddr` atomically and wakes whoever waits on them.
   * @returns false when the page was already present (nothing written)
   */
  copy(hostAddr: bigint, bytes: Uint8Array): boolean {
    const src = Deno.UnsafePointer.value(Deno.UnsafePointer.of(bytes as Uint8Array<ArrayBuffer>));
    const rc = Number(shim().ferry_uffd_copy(this.#fd, hostAddr, BigInt(src), BigInt(bytes.length), 0n));
    if (rc === -EEXIST) return false;
    check(rc, `copy ${bytes.length} bytes to 0x${hostAddr.toString(16)} through userfaultfd`);
    return true;
  }

  /**
   * Maps zero pages at `[hostAddr, hostAddr + len)` and wakes the waiters.
   * @returns false when a page was already present
   */
  zero(hostAddr: bigint, len: number): boolean {
    const rc = Number(shim().ferry_uffd_zeropage(this.#fd, hostAddr, BigInt(len), 0n));
    if (rc === -EEXIST) return false;
    check(rc, `zero ${len} bytes at 0x${hostAddr.toString(16)} through userfaultfd`);
    return true;
  }

  /** Wakes threads waiting on `[hostAddr, hostAddr + len)` (their page arrived meanwhile). */
  wake(hostAddr: bigint, len: number): void {
    check(shim().ferry_uffd_wake(this.#fd, hostAddr, BigInt(len)), "wake userfaultfd waiters");
  }

  /** The page faults pending now (none when nothing waits). */
  readFaults(): PageFault[] {
    const out: PageFault[] = [];
    for (;;) {
      const n = Number(shim().ferry_uffd_read(this.#fd, this.#msgs, 64));
      if (n === -EAGAIN) return out;
      if (n < 0) throw new ErrnoError("read userfaultfd events", -n);
      const v = new DataView(this.#msgs.buffer);
      for (let i = 0; i < n; i++) {
        const o = i * MSG_BYTES;
        if (v.getUint8(o + ABI["uffd_msg.event"]) !== EVENT_PAGEFAULT) continue;
        const flags = v.getBigUint64(o + ABI["uffd_msg.pagefault.flags"], true);
        out.push({
          address: v.getBigUint64(o + ABI["uffd_msg.pagefault.address"], true),
          write: (flags & FLAG_WRITE) !== 0n,
          tid: v.getUint32(o + ABI["uffd_msg.pagefault.feat.ptid"], true),
        });
      }
      if (n < 64) return out;
    }
  }

  /**
   * Waits (off the main thread) until a fault is pending or `timeoutMs` passed.
   * @returns true when readable
   */
  async wait(timeoutMs: number): Promise<boolean> {
    if (this.#closed) return false;
    return Number(await shim().ferry_poll_in_async(this.#fd, timeoutMs)) > 0;
  }

  /** Waits in this thread (a Worker serving faults). */
  waitSync(timeoutMs: number): boolean {
    return Number(shim().ferry_poll_in(this.#fd, timeoutMs)) > 0;
  }

  /**
   * Closes the descriptor. Registered ranges are unregistered by the kernel and any thread still
   * waiting is woken to fault again normally (a missing page then reads as zero).
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    shim().ferry_close(this.#fd);
  }
}

/** madvise(MADV_DONTNEED): drops pages so that they are missing again (and fault through uffd). */
export function discardPages(hostAddr: bigint, len: number): void {
  check(shim().ferry_madvise(hostAddr, BigInt(len), 4), `discard ${len} bytes of guest RAM`);
}
