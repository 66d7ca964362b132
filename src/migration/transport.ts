/**
 * Migration URIs (`tcp:HOST:PORT`, `unix:PATH`) and the connections behind them: the source
 * connects, the destination listens and accepts exactly one connection.
 * @module
 */

/** A parsed migration URI. */
export type MigrationUri =
  | { kind: "tcp"; uri: string; host: string; port: number }
  | { kind: "unix"; uri: string; path: string };

/**
 * Parses `tcp:HOST:PORT` (HOST may be `[v6]`) or `unix:PATH`.
 * @param uri the QMP `migrate` uri or the `-incoming` value
 * @param options `listen: true` allows port 0 (an ephemeral port, for tests)
 * @throws {TypeError} naming the uri
 */
export function parseMigrationUri(uri: string, options: { listen?: boolean } = {}): MigrationUri {
  if (uri.startsWith("unix:")) {
    const path = uri.slice(5);
    if (path === "") throw new TypeError(`Cannot parse migration uri '${uri}': empty path`);
    if (path.includes("\0")) throw new TypeError(`Cannot parse migration uri '${uri}': NUL in path`);
    return { kind: "unix", uri, path };
  }
  if (uri.startsWith("tcp:")) {
    const rest = uri.slice(4);
    const colon = rest.lastIndexOf(":");
    if (colon < 0) throw new TypeError(`Cannot parse migration uri '${uri}': want tcp:HOST:PORT`);
    let host = rest.slice(0, colon);
    const portText = rest.slice(colon + 1);
    if (host.startsWith("[") && host.endsWith("]")) host = host.slice(1, -1);
    else if (host.includes(":")) {
      throw new TypeError(`Cannot parse migration uri '${uri}': write an IPv6 host as [ADDR]`);
    }
    if (host === "") throw new TypeError(`Cannot parse migration uri '${uri}': empty host`);
    if (!/^[0-9]{1,5}$/.test(portText)) {
      throw new TypeError(`Cannot parse migration uri '${uri}': bad port '${portText}'`);
    }
    const port = Number(portText);
    const min = options.listen ? 0 : 1;
    if (port < min || port > 65535) {
      throw new TypeError(`Cannot parse migration uri '${uri}': port ${port} is outside ${min}..65535`);
    }
    return { kind: "tcp", uri, host, port };
  }
  throw new TypeError(`Cannot parse migration uri '${uri}': want tcp:HOST:PORT or unix:PATH`);
}

/** Default time allowed for the source's connect. */
export const CONNECT_TIMEOUT_MS = 10_000;

/**
 * Connects to a destination. TCP connections get `TCP_NODELAY` (control messages are small and
 * each waits for an answer).
 * @throws {Error} naming the uri, with the cause
 */
export async function connectMigration(
  target: MigrationUri,
  options: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<Deno.Conn> {
  const connecting: Promise<Deno.Conn> = target.kind === "tcp"
    ? Deno.connect({ hostname: target.host, port: target.port })
    : Deno.connect({ transport: "unix", path: target.path });
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
  #listener: Deno.Listener;
  #target: MigrationUri;
  #closed = false;

  /**
   * Listens on `target`.
   * @throws {Error} naming the uri (address in use, path missing, …)
   */
  constructor(target: MigrationUri) {
    this.#target = target;
    try {
      this.#listener = target.kind === "tcp"
        ? Deno.listen({ hostname: target.host, port: target.port })
        : Deno.listen({ transport: "unix", path: target.path });
    } catch (e) {
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
    const onAbort = () => this.close();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      if (signal?.aborted) throw signal.reason;
      const conn = await this.#listener.accept();
      if ("setNoDelay" in conn) (conn as Deno.TcpConn).setNoDelay(true);
      return conn;
    } catch (e) {
      if (signal?.aborted) throw signal.reason;
      throw new Error(`Cannot accept a migration on '${this.#target.uri}': ${(e as Error).message}`, {
        cause: e,
      });
    } finally {
      signal?.removeEventListener("abort", onAbort);
      this.close();
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

/**
 * A connection whose single reads and writes fail with {@linkcode StallError} when they make no
 * progress in time; the connection is closed then, so the stuck operation ends too. Each write
 * or read returns as soon as some bytes moved, so a slow but moving link never trips it.
 */
export class StallGuard {
  #conn: Deno.Conn;
  #opts: Required<StallGuardOptions>;
  #stalled: StallError | undefined;

  constructor(conn: Deno.Conn, options: StallGuardOptions) {
    this.#conn = conn;
    this.#opts = { readTimeoutMs: 0, writeTimeoutMs: 0, ...options };
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
    return this.#guard(this.#conn.read(p), this.#opts.readTimeoutMs, "received nothing from");
  }

  write(p: Uint8Array): Promise<number> {
    return this.#guard(this.#conn.write(p), this.#opts.writeTimeoutMs, "could not send anything to");
  }

  #guard<T>(op: Promise<T>, ms: number, what: string): Promise<T> {
    if (this.#stalled) {
      op.catch(() => {});
      return Promise.reject(this.#stalled);
    }
    if (ms <= 0) return op;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stall = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.#stalled = new StallError(
          `the connection stalled: ${what} the ${this.#opts.peer} for ${ms / 1000} s`,
        );
        try {
          this.#conn.close();
        } catch { /* already closed */ }
        reject(this.#stalled);
      }, ms);
    });
    return Promise.race([op, stall]).finally(() => clearTimeout(timer));
  }
}
