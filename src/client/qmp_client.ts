/**
 * A small QMP client (used by `ferry qmp`/`ferry migrate` and by the tests): connects to a UNIX
 * socket, reads the greeting, sends
 * commands and collects replies and events.
 * @module
 */

/** A parsed QMP message. */
export type QmpMessage = Record<string, unknown>;

/** A QMP connection. */
export class QmpClient {
  readonly greeting: QmpMessage;
  readonly events: QmpMessage[] = [];
  readonly #conn: Deno.UnixConn;
  readonly #lines: AsyncIterator<string>;
  #eventWaiters: { name: string; pred: (e: QmpMessage) => boolean; resolve: (e: QmpMessage) => void }[] = [];
  #replyWaiter: ((m: QmpMessage) => void) | undefined;
  #pump: Promise<void>;
  #closed = false;

  private constructor(conn: Deno.UnixConn, lines: AsyncIterator<string>, greeting: QmpMessage) {
    this.#conn = conn;
    this.#lines = lines;
    this.greeting = greeting;
    this.#pump = this.#run();
  }

  /** Connects, retrying until the socket exists or `timeoutMs` passes. */
  static async connect(path: string, timeoutMs = 10000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const conn = await Deno.connect({ transport: "unix", path });
        const lines = readLines(conn);
        const first = await lines.next();
        if (first.done) throw new Error("QMP socket closed before the greeting");
        return new QmpClient(conn, lines, JSON.parse(first.value));
      } catch (e) {
        if (Date.now() > deadline) throw new Error(`Cannot connect to QMP at ${path}`, { cause: e });
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }

  async #run(): Promise<void> {
    try {
      for (;;) {
        const r = await this.#lines.next();
        if (r.done) break;
        const m = JSON.parse(r.value) as QmpMessage;
        if ("event" in m) {
          this.events.push(m);
          this.#eventWaiters = this.#eventWaiters.filter((w) => {
            if (w.name === m.event && w.pred(m)) {
              w.resolve(m);
              return false;
            }
            return true;
          });
        } else if (this.#replyWaiter) {
          const w = this.#replyWaiter;
          this.#replyWaiter = undefined;
          w(m);
        }
      }
    } catch {
      // connection closed
    }
    this.#closed = true;
  }

  /** Sends one command and returns the whole reply (`{"return":..}` or `{"error":..}`). */
  async execute(command: string, args?: Record<string, unknown>, timeoutMs = 30000): Promise<QmpMessage> {
    if (this.#closed) throw new Error(`Cannot execute ${command}: QMP connection closed`);
    const reply = new Promise<QmpMessage>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`No reply to ${command} in ${timeoutMs} ms`)), timeoutMs);
      this.#replyWaiter = (m) => {
        clearTimeout(t);
        resolve(m);
      };
    });
    const msg = args ? { execute: command, arguments: args } : { execute: command };
    await this.#conn.write(new TextEncoder().encode(JSON.stringify(msg) + "\n"));
    return reply;
  }

  /** Like execute, but returns `return` and throws on an error reply. */
  async call(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const r = await this.execute(command, args);
    if ("error" in r) throw new Error(`${command} failed: ${JSON.stringify(r.error)}`);
    return r.return;
  }

  /** Waits for an event (already received ones count). */
  waitEvent(
    name: string,
    pred: (e: QmpMessage) => boolean = () => true,
    timeoutMs = 30000,
  ): Promise<QmpMessage> {
    const seen = this.events.find((e) => e.event === name && pred(e));
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`No ${name} event in ${timeoutMs} ms`)), timeoutMs);
      this.#eventWaiters.push({
        name,
        pred,
        resolve: (e) => {
          clearTimeout(t);
          resolve(e);
        },
      });
    });
  }

  async close(): Promise<void> {
    try {
      this.#conn.close();
    } catch { /* closed */ }
    await this.#pump;
  }
}

async function* readLines(conn: Deno.Conn): AsyncGenerator<string> {
  const dec = new TextDecoder();
  let buf = "";
  const chunk = new Uint8Array(65536);
  for (;;) {
    const n = await conn.read(chunk);
    if (n === null) return;
    buf += dec.decode(chunk.subarray(0, n), { stream: true });
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, i).replace(/\r$/, "");
      buf = buf.slice(i + 1);
      if (line.trim()) yield line;
    }
  }
}
