/**
 * The connections behind `tcp:` and `unix:` migration URIs (uri.ts; `file:` is snapshot_file.ts): the source
 * connects, the destination listens and accepts exactly one connection. With TLS credentials
 * (tls.ts) both sides speak TLS over tcp; a plaintext side refuses a TLS peer at its first read.
 * @module
 */
import {
  connectTlsMigration,
  listenTlsMigration,
  sniffTls,
  type TlsCreds,
  type TlsMigrationListener,
} from "./tls.ts";
import type { SocketMigrationUri } from "./uri.ts";
import {
  findAcceptedUnix,
  findConnectedUnix,
  setSendBuffer,
  socketFds,
  UNIX_SEND_BUFFER_BYTES,
} from "./socket_fd.ts";
import { PageSplicer, type ReferenceSink } from "./splice.ts";

export { type MigrationUri, parseMigrationUri } from "./uri.ts";

/** TLS for one migration: the credentials and the name the destination's certificate must carry. */
export interface MigrationTls {
  creds: TlsCreds;
  /** `tls-hostname`; empty or absent: the uri's host. */
  hostname?: string;
}

/**
 * A plaintext connection that refuses a TLS peer at its first read: the bytes of a TLS record
 * where a migration header belongs mean the other side was given tls-creds and this one was not.
 */
class PlainConn {
  #conn: Deno.Conn;
  #peer: "source" | "destination";
  #first = true;
  #splicer: PageSplicer | undefined;

  constructor(conn: Deno.Conn, peer: "source" | "destination") {
    this.#conn = conn;
    this.#peer = peer;
  }

  async read(p: Uint8Array): Promise<number | null> {
    const n = await this.#conn.read(p);
    if (this.#first && n !== null && n > 0) {
      this.#first = false;
      if (sniffTls(p.subarray(0, n))) {
        const hint = this.#peer === "destination"
          ? "set the tls-creds migration parameter on this source too"
          : "this destination has no tls-creds (set them with migrate-set-parameters before migrate-incoming)";
        throw new Error(`the ${this.#peer} speaks TLS and this side does not: ${hint}`);
      }
    }
    return n;
  }

  write(p: Uint8Array): Promise<number> {
    if (this.#splicer?.queued) {
      return Promise.reject(new Error("internal: a write would overtake pages still queued by reference"));
    }
    return this.#conn.write(p);
  }

  /**
   * Lets this connection write pages by reference through `fd`, its socket (the source of a
   * plaintext unix migration; socket_fd.ts found it). Best effort: without a pipe it copies.
   */
  sendByReference(fd: number): void {
    try {
      this.#splicer = PageSplicer.open(fd);
    } catch { /* out of descriptors: writes copy, as before */ }
  }

  /** The by-reference writer, when {@linkcode sendByReference} set one up. */
  get byReference(): ReferenceSink | undefined {
    return this.#splicer;
  }

  closeWrite(): Promise<void> {
    return this.#conn.closeWrite();
  }

  close(): void {
    if (this.#splicer) this.#splicer.close(() => this.#conn.close());
    else this.#conn.close();
  }

  setNoDelay(on = true): void {
    if ("setNoDelay" in this.#conn) (this.#conn as Deno.TcpConn).setNoDelay(on);
  }
}

/** Wraps a plaintext connection in {@linkcode PlainConn}; migration uses only read/write/close. */
function plainConn(conn: Deno.Conn, peer: "source" | "destination"): Deno.Conn {
  return new PlainConn(conn, peer) as unknown as Deno.Conn;
}

/**
 * A unix migration connection gets a larger send buffer (socket_fd.ts): RAM moves in far fewer
 * wake-ups. TCP keeps the kernel's autotuning. Best effort: an fd that cannot be told apart is left
 * as it is.
 */
function enlargeSendBuffer(fd: number | undefined): void {
  if (fd !== undefined) setSendBuffer(fd, UNIX_SEND_BUFFER_BYTES);
}

/** Default time allowed for the source's connect. */
export const CONNECT_TIMEOUT_MS = 10_000;

/**
 * Connects to a destination. TCP connections get `TCP_NODELAY` (control messages are small and
 * each waits for an answer).
 * @throws {Error} naming the uri, with the cause
 */
export async function connectMigration(
  target: SocketMigrationUri,
  options: { timeoutMs?: number; signal?: AbortSignal; tls?: MigrationTls; byReference?: boolean } = {},
): Promise<Deno.Conn> {
  const tls = options.tls;
  const before = target.kind === "unix" ? socketFds() : undefined;
  if (tls && target.kind !== "tcp") {
    throw new TypeError(
      `Cannot migrate to '${target.uri}' with tls-creds '${tls.creds.id}': TLS needs a tcp: uri`,
    );
  }
  const connecting: Promise<Deno.Conn> = tls && target.kind === "tcp"
    ? connectTlsMigration(target.host, target.port, tls.creds, tls.hostname || target.host)
    : target.kind === "tcp"
    ? Deno.connect({ hostname: target.host, port: target.port }).then((c) => plainConn(c, "destination"))
    : Deno.connect({ transport: "unix", path: target.path }).then((c) => plainConn(c, "destination"));
  const timeoutMs = options.timeoutMs ?? CONNECT_TIMEOUT_MS;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onAbort: (() => void) | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`Cannot connect to '${target.uri}': timed out after ${timeoutMs} ms`)),
      timeoutMs,
    );
    onAbort = () => reject(options.signal!.reason);
    options.signal?.addEventListener("abort", onAbort, { once: true });
  });
  try {
    const conn = await Promise.race([connecting, guard]);
    if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
    if (before) {
      // A unix source gets a larger send buffer and, with `byReference` (capability
      // zero-copy-send), sends a paused guest's pages by reference (over loopback TCP splicing
      // measured no faster: docs/migration-performance.md, "Pages by reference").
      const fd = findConnectedUnix(before);
      enlargeSendBuffer(fd);
      if (fd !== undefined && options.byReference && conn instanceof PlainConn) conn.sendByReference(fd);
    }
    return conn;
  } catch (e) {
    // A late connect after a timeout or abort must not leak.
    connecting.then((c) => c.close(), () => {});
    if (e instanceof Error && e.message.startsWith("Cannot connect")) throw e;
    if (options.signal?.aborted && e === options.signal.reason) throw e;
    throw new Error(`Cannot connect to '${target.uri}': ${(e as Error).message}`, { cause: e });
  } finally {
    clearTimeout(timer);
    if (onAbort) options.signal?.removeEventListener("abort", onAbort);
  }
}

/** A destination's listening socket that accepts exactly one connection. */
export class MigrationListener {
  #listener: Deno.Listener | TlsMigrationListener;
  #target: SocketMigrationUri;
  #closed = false;
  #tls: boolean;

  /**
   * Listens on `target` in plaintext.
   * @throws {Error} naming the uri (address in use, path missing, …)
   */
  constructor(target: SocketMigrationUri, tlsListener?: TlsMigrationListener) {
    this.#target = target;
    this.#tls = tlsListener !== undefined;
    try {
      this.#listener = tlsListener ??
        (target.kind === "tcp"
          ? Deno.listen({ hostname: target.host, port: target.port })
          : Deno.listen({ transport: "unix", path: target.path }));
    } catch (e) {
      throw new Error(`Cannot listen on '${target.uri}': ${(e as Error).message}`, { cause: e });
    }
  }

  /**
   * Listens on `target`, speaking TLS with `creds` when given (server endpoint, tcp only).
   * @throws {Error} naming the uri; {TypeError} for TLS over unix: or client credentials
   */
  static async open(target: SocketMigrationUri, creds?: TlsCreds): Promise<MigrationListener> {
    if (!creds) return new MigrationListener(target);
    if (target.kind !== "tcp") {
      throw new TypeError(
        `Cannot receive a migration on '${target.uri}' with tls-creds '${creds.id}': TLS needs a tcp: uri`,
      );
    }
    try {
      return new MigrationListener(target, await listenTlsMigration(target.host, target.port, creds));
    } catch (e) {
      if (e instanceof TypeError) throw e;
      throw new Error(`Cannot listen on '${target.uri}': ${(e as Error).message}`, { cause: e });
    }
  }

  /** The bound address (the real port when the uri said port 0). */
  get addr(): Deno.Addr {
    return this.#listener.addr;
  }

  /**
   * Accepts one connection, then stops listening (and removes a unix socket file).
   * @param signal aborts the wait
   */
  async acceptOne(signal?: AbortSignal): Promise<Deno.Conn> {
    try {
      return await this.accept(signal);
    } finally {
      this.close();
    }
  }

  /**
   * Accepts one connection and keeps listening (multifd channels arrive on the same listener).
   * @param signal aborts the wait (and closes the listener)
   */
  async accept(signal?: AbortSignal): Promise<Deno.Conn> {
    const onAbort = () => this.close();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      if (signal?.aborted) throw signal.reason;
      const before = this.#target.kind === "unix" ? socketFds() : undefined;
      const conn = await this.#listener.accept();
      if (this.#tls) return conn;
      if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
      if (before && this.#target.kind === "unix") {
        enlargeSendBuffer(findAcceptedUnix(before, this.#target.path));
      }
      return plainConn(conn, "source");
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      throw new Error(`Cannot accept a migration on '${this.#target.uri}': ${(e as Error).message}`, {
        cause: e,
      });
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  /** Stops listening; idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    if (this.#target.kind === "unix") {
      try {
        Deno.removeSync(this.#target.path);
      } catch { /* gone already */ }
    }
  }
}

/**
 * How long an established migration connection may make no progress (a write the peer does not
 * take, a read that gets nothing) before the migration fails. A cut link never resets the
 * connection: without this the side still sending would wait until TCP gives up (~15 minutes).
 */
export const STALL_TIMEOUT_MS = 10_000;

/** The connection made no progress for the stall timeout. */
export class StallError extends Error {
  override name = "StallError";
}

/** Options of {@linkcode StallGuard}. */
export interface StallGuardOptions {
  /** Who is on the other end, for messages ("source", "destination"). */
  peer: string;
  /** Fail a read that gets nothing for this long; 0 = wait forever. @default {0} */
  readTimeoutMs?: number;
  /** Fail a write the peer takes nothing of for this long; 0 = wait forever. @default {0} */
  writeTimeoutMs?: number;
}

/** Direction of a guarded operation: index into {@linkcode StallGuard}'s per-direction state. */
const READ = 0, WRITE = 1;
const STALLED_WHAT = ["received nothing from", "could not send anything to"];

/**
 * A connection whose single reads and writes fail with {@linkcode StallError} when they make no
 * progress in time; the connection is closed then, so the stuck operation ends too. Each write
 * or read returns as soon as some bytes moved, so a slow but moving link never trips it.
 *
 * One timer watches both directions, re-armed only when it fires while something is in flight:
 * a timer per operation cost a migration's main thread ~40 ms on each side (Deno's timers are
 * Node.js `Timeout` objects, with an async id and a priority queue each). A direction stalls when
 * it has an operation in flight and none of its operations started or ended for its timeout.
 * {@linkcode close} stops the timer; a guard left open lets it lapse (it keeps no process alive).
 */
export class StallGuard {
  #conn: Deno.Conn;
  #opts: Required<StallGuardOptions>;
  #stalled: StallError | undefined;
  /** Per direction: guarded operations in flight, when it last made progress, its timeout. */
  readonly #pending = [0, 0];
  readonly #progress = [0, 0];
  readonly #limitMs = [0, 0];
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** When the armed timer fires (performance.now() ms). */
  #due = Infinity;
  /**
   * Rejects with the stall: every guarded operation races it, so it fails with the stall whatever
   * the connection does with it on close (a TLS read ends with EOF then, a Deno one with an error).
   */
  #stallSignal: Promise<never> | undefined;
  #signalStall: ((e: StallError) => void) | undefined;

  /** The connection's by-reference writer (PlainConn), its writes guarded like {@linkcode write}. */
  readonly byReference: ReferenceSink | undefined;

  constructor(conn: Deno.Conn, options: StallGuardOptions) {
    this.#conn = conn;
    this.#opts = { readTimeoutMs: 0, writeTimeoutMs: 0, ...options };
    const ref = (conn as { byReference?: ReferenceSink }).byReference;
    if (ref) {
      const guard = (p: Uint8Array) => this.#guard(WRITE, ref.write(p), this.#opts.writeTimeoutMs);
      this.byReference = {
        write: guard,
        get queued() {
          return ref.queued;
        },
      };
    }
  }

  /** Changes the read timeout for reads started from now on (0 = wait forever). */
  setReadTimeout(ms: number): void {
    this.#opts.readTimeoutMs = ms;
  }

  /** The stall that closed the connection, if any. */
  get stalled(): StallError | undefined {
    return this.#stalled;
  }

  read(p: Uint8Array): Promise<number | null> {
    return this.#guard(READ, this.#conn.read(p), this.#opts.readTimeoutMs);
  }

  write(p: Uint8Array): Promise<number> {
    return this.#guard(WRITE, this.#conn.write(p), this.#opts.writeTimeoutMs);
  }

  /** Stops watching (the owner is done with the connection). */
  close(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#due = Infinity;
  }

  #guard<T>(dir: number, op: Promise<T>, ms: number): Promise<T> {
    if (this.#stalled) {
      op.catch(() => {});
      return Promise.reject(this.#stalled);
    }
    if (ms <= 0) return op;
    const now = performance.now();
    if (this.#pending[dir]!++ === 0) this.#progress[dir] = now;
    this.#limitMs[dir] = ms;
    if (now + ms < this.#due) this.#arm(now, ms);
    const settled = op.then(
      (v) => {
        this.#settled(dir);
        return v;
      },
      (e) => {
        this.#settled(dir);
        throw this.#stalled ?? e;
      },
    );
    return Promise.race([settled, this.#stallSignal ??= this.#newStallSignal()]);
  }

  #newStallSignal(): Promise<never> {
    const p = new Promise<never>((_, reject) => (this.#signalStall = reject));
    p.catch(() => {}); // observed through the races; unobserved when nothing stalls
    return p;
  }

  #settled(dir: number): void {
    this.#pending[dir]!--;
    this.#progress[dir] = performance.now();
  }

  #arm(now: number, ms: number): void {
    clearTimeout(this.#timer);
    this.#due = now + ms;
    const timer = setTimeout(this.#check, ms);
    Deno.unrefTimer(timer);
    this.#timer = timer;
  }

  readonly #check = (): void => {
    this.#timer = undefined;
    this.#due = Infinity;
    const now = performance.now();
    let next = Infinity;
    for (const dir of [READ, WRITE]) {
      if (this.#pending[dir] === 0) continue;
      const due = this.#progress[dir]! + this.#limitMs[dir]!;
      if (now >= due) return this.#stall(dir);
      next = Math.min(next, due - now);
    }
    if (next < Infinity) this.#arm(now, next);
  };

  #stall(dir: number): void {
    this.#stalled = new StallError(
      `the connection stalled: ${STALLED_WHAT[dir]} the ${this.#opts.peer} for ${
        this.#limitMs[dir]! / 1000
      } s`,
    );
    try {
      this.#conn.close();
    } catch { /* already closed */ }
    this.#signalStall?.(this.#stalled);
  }
}
