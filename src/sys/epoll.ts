/**
 * An epoll set over the shim: a thread (the I/O Worker) blocks in `wait` on the fds it serves.
 * Each registered fd carries a caller-chosen 64-bit token, returned by `wait`.
 * @module
 */
import { check } from "../ffi/errno.ts";
import { shim } from "../ffi/shim.ts";

/** `EPOLLIN`. */
export const EPOLLIN = 0x001;
/** `EPOLLET`. */
export const EPOLLET = 1 << 31;
const EPOLL_CTL_ADD = 1, EPOLL_CTL_MOD = 3;
const EINTR = 4;

/** One epoll set; see the module doc. */
export class Epoll {
  readonly fd: number;
  /** Where {@linkcode wait} puts the tokens of the fds that are ready (reused: no allocation per wait). */
  readonly tokens: BigUint64Array<ArrayBuffer>;
  readonly #tokenBytes: Uint8Array<ArrayBuffer>;
  #closed = false;

  /**
   * @param what for errors, e.g. `"the I/O Worker's epoll set"`
   * @param maxEvents the most events one {@linkcode wait} reports
   */
  constructor(what: string, maxEvents = 64) {
    this.fd = check(shim().ferry_epoll_create(), `create ${what}`);
    this.tokens = new BigUint64Array(maxEvents);
    this.#tokenBytes = new Uint8Array(this.tokens.buffer);
  }

  /**
   * Watches `fd` for `events`; `wait` reports it as `token`.
   * @throws {ErrnoError} naming `what`
   */
  add(fd: number, events: number, token: bigint, what: string): void {
    check(shim().ferry_epoll_ctl(this.fd, EPOLL_CTL_ADD, fd, events >>> 0, token), `watch ${what}`);
  }

  /**
   * Changes the events watched on `fd` (registered with {@linkcode add}); an fd that is ready for
   * the new events is reported by the next {@linkcode wait}.
   * @throws {ErrnoError} naming `what`
   */
  modify(fd: number, events: number, token: bigint, what: string): void {
    check(shim().ferry_epoll_ctl(this.fd, EPOLL_CTL_MOD, fd, events >>> 0, token), `rewatch ${what}`);
  }

  /**
   * Waits for events; the first n entries of {@linkcode tokens} are the ready fds' tokens.
   * @param timeoutMs -1 blocks, 0 polls
   * @returns n (0 on timeout or EINTR)
   * @throws {Error} on other errors
   */
  wait(timeoutMs: number): number {
    const n = Number(shim().ferry_epoll_wait(this.fd, this.#tokenBytes, this.tokens.length, timeoutMs));
    if (n === -EINTR) return 0;
    if (n < 0) throw new Error(`Cannot wait on epoll set ${this.fd}: errno ${-n}`);
    return n;
  }

  /** Closes the set. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    shim().ferry_close(this.fd);
  }
}
