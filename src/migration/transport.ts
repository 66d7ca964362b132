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
