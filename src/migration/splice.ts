/**
 * A paused guest's pages into the migration socket by reference (shim/splice.zig): vmsplice(2)
 * puts them into a pipe as page references, splice(2) moves those into the socket, and the
 * destination's read copies them straight out of the source's guest RAM. A copying write makes the
 * kernel allocate socket buffer pages and copy every page into them, which was most of a paused
 * source's CPU (docs/migration-performance.md, "Pages by reference"). The pages must not change
 * until the peer has read them: only the in-place path of a paused guest uses this
 * (stream.ts, `sendPagesInPlaceQueued`), and a source that resumes its guest has given up on
 * that destination.
 * @module
 */
import { check, ErrnoError } from "../ffi/errno.ts";
import { shim } from "../ffi/shim.ts";

/** What the pipe asks for: 256 page references per fill (capped by /proc/sys/fs/pipe-max-size). */
const PIPE_BYTES = 1024 * 1024;
/** How long one shim call waits for room in the socket before it returns (so close() is seen). */
const STEP_MS = 100;

/** Writes bytes by reference into a connection (the source's side of a plaintext unix socket). */
export interface ReferenceSink {
  /**
   * Hands over some of `p` by reference; resolves with the bytes taken once any byte moved into
   * the socket (0: only earlier {@linkcode queued} bytes moved; `p` may be empty to move those).
   */
  write(p: Uint8Array): Promise<number>;
  /** Bytes taken but not yet in the socket: they must go before anything else is written. */
  readonly queued: number;
}

/**
 * The pipe between a process's memory and one socket. Owns the pipe, not the socket: {@linkcode
 * close} waits for a shim call in flight (≤ {@linkcode STEP_MS}) before it lets the owner close
 * the socket, so the call never reaches a descriptor number that was reused.
 */
export class PageSplicer implements ReferenceSink {
  #sock: number;
  #pipe: Int32Array;
  #capacity: bigint;
  #queued = 0;
  #progress = new BigUint64Array(2);
  #inFlight: Promise<unknown> | undefined;
  #closed = false;

  private constructor(sock: number, pipe: Int32Array, capacity: number) {
    this.#sock = sock;
    this.#pipe = pipe;
    this.#capacity = BigInt(capacity);
  }

  /**
   * A splicer for socket `sock` (a connected stream socket this process writes to).
   * @throws {ErrnoError} when no pipe can be made
   */
  static open(sock: number): PageSplicer {
    const pipe = new Int32Array(2);
    const capacity = check(shim().ferry_pipe(pipe, PIPE_BYTES), "create a pipe for the migration socket");
    return new PageSplicer(sock, pipe, capacity);
  }

  get queued(): number {
    return this.#queued;
  }

  async write(p: Uint8Array): Promise<number> {
    const before = this.#queued;
    for (;;) {
      if (this.#closed) throw new Deno.errors.BadResource("the migration connection is closed");
      const call = shim().ferry_splice_out_async(
        this.#sock,
        this.#pipe[0]!,
        this.#pipe[1]!,
        this.#capacity,
        p as Uint8Array<ArrayBuffer>,
        BigInt(p.length),
        BigInt(this.#queued),
        STEP_MS,
        this.#progress,
      );
      this.#inFlight = call;
      let rc: number;
      try {
        rc = Number(await call);
      } finally {
        this.#inFlight = undefined;
      }
      const taken = Number(this.#progress[0]);
      this.#queued = Number(this.#progress[1]);
      if (rc < 0) {
        this.#queued = 0;
        throw new ErrnoError("send guest pages by reference", -rc);
      }
      if (taken > 0 || this.#queued < before) return taken;
      // Nothing moved for STEP_MS: wait again (the caller's stall guard bounds the whole wait).
    }
  }

  /** Stops; calls `then` (the socket's close) once no shim call is in flight, and closes the pipe. */
  close(then: () => void): void {
    if (this.#closed) return;
    this.#closed = true;
    const finish = () => {
      for (const fd of this.#pipe) shim().ferry_close(fd);
      then();
    };
    if (this.#inFlight) this.#inFlight.then(finish, finish);
    else finish();
  }
}
