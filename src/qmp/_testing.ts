/**
 * Test helpers for the QMP server (private to src/qmp and tests/): a line-reading client over a real
 * UNIX socket, a temporary socket path, and fake machine/migration backends that record calls.
 * @module
 */
import type { MachineControl, RunState } from "./commands/machine.ts";
import { MachineEvents } from "./commands/machine.ts";
import type { MigrationControl, MigrationParameters } from "./commands/migration.ts";
import { QmpError } from "./protocol.ts";
import type { QmpEventSink } from "./server.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A JSON object as read from the wire. */
export type Json = Record<string, unknown>;

/** A fresh directory under /tmp (short, so socket paths stay under 108 bytes) and a socket path in it. */
export async function tempSocketPath(): Promise<{ dir: string; path: string }> {
  const dir = await Deno.makeTempDir({ dir: "/tmp", prefix: "qmpt" });
  return { dir, path: `${dir}/qmp.sock` };
}

/** A QMP client for tests: reads CRLF-terminated lines and keeps events apart from replies. */
export class TestClient {
  readonly #conn: Deno.UnixConn;
  #pending = "";
  #closed = false;
  #inflight: Promise<Uint8Array | null> | undefined;
  /** Every raw line received (each still ends in CRLF). */
  readonly lines: string[] = [];
  /** Events seen while waiting for replies. */
  readonly events: Json[] = [];

  private constructor(conn: Deno.UnixConn) {
    this.#conn = conn;
  }

  /** Connects to `path` (without reading the greeting). */
  static async connect(path: string): Promise<TestClient> {
    return new TestClient(await Deno.connect({ transport: "unix", path }));
  }

  /** Connects and reads the greeting. */
  static async open(path: string): Promise<{ client: TestClient; greeting: Json }> {
    const client = await TestClient.connect(path);
    return { client, greeting: await client.next() };
  }

  /** The raw connection, for tests that misbehave on purpose. */
  get conn(): Deno.UnixConn {
    return this.#conn;
  }

  /** Writes text as is. */
  async sendRaw(text: string | Uint8Array): Promise<void> {
    const bytes = typeof text === "string" ? encoder.encode(text) : text;
    let off = 0;
    while (off < bytes.length) off += await this.#conn.write(bytes.subarray(off));
  }

  /** Reads the next raw line (with its line ending); rejects on EOF or after `timeoutMs`. */
  async readLine(timeoutMs = 5000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const nl = this.#pending.indexOf("\n");
      if (nl >= 0) {
        const line = this.#pending.slice(0, nl + 1);
        this.#pending = this.#pending.slice(nl + 1);
        this.lines.push(line);
        return line;
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`Cannot read a QMP line: timed out after ${timeoutMs} ms`);
      // One read in flight at a time; a read that outlives a timeout is picked up by the next call.
      this.#inflight ??= this.#readChunk();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((r) => {
        timer = setTimeout(() => r("timeout"), left);
      });
      const chunk = await Promise.race([this.#inflight, timeout]);
      clearTimeout(timer);
      if (chunk === "timeout") continue;
      this.#inflight = undefined;
      if (chunk === null) throw new Error("Cannot read a QMP line: connection closed");
      this.#pending += decoder.decode(chunk, { stream: true });
    }
  }

  async #readChunk(): Promise<Uint8Array | null> {
    const buf = new Uint8Array(65536);
    const n = await this.#conn.read(buf);
    return n === null ? null : buf.subarray(0, n);
  }

  /** Reads the next message (event or reply) and checks it ends in CRLF. */
  async next(timeoutMs = 5000): Promise<Json> {
    const line = await this.readLine(timeoutMs);
    if (!line.endsWith("\r\n")) throw new Error(`QMP line does not end in CRLF: ${JSON.stringify(line)}`);
    return JSON.parse(line) as Json;
  }

  /** Reads messages until a reply (no `event` key), collecting events in {@link TestClient.events}. */
  async reply(timeoutMs = 5000): Promise<Json> {
    for (;;) {
      const m = await this.next(timeoutMs);
      if (!("event" in m)) return m;
      this.events.push(m);
    }
  }

  /** Reads messages until an event named `name`. */
  async event(name: string, timeoutMs = 5000): Promise<Json> {
    const seen = this.events.findIndex((e) => e.event === name);
    if (seen >= 0) return this.events.splice(seen, 1)[0]!;
    for (;;) {
      const m = await this.next(timeoutMs);
      if (m.event === name) return m;
      if ("event" in m) this.events.push(m);
    }
  }

  /** Sends `{"execute":…}` and returns the reply. */
  async execute(name: string, args?: Json, id?: unknown): Promise<Json> {
    const msg: Json = { execute: name };
    if (args !== undefined) msg.arguments = args;
    if (id !== undefined) msg.id = id;
    await this.sendRaw(JSON.stringify(msg) + "\n");
    return await this.reply();
  }

  /** Resolves true if the server closes the connection within `timeoutMs` (reading and dropping data). */
  async closedByPeer(timeoutMs = 5000): Promise<boolean> {
    try {
      for (;;) await this.readLine(timeoutMs);
    } catch (e) {
      return !(e as Error).message.includes("timed out");
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // already closed
    }
  }
}

/** A fake VM: records calls, changes its state and emits the events a real VM would. */
export class FakeMachine implements MachineControl {
  state: RunState = "running";
  readonly calls: string[] = [];
  readonly #events: MachineEvents | undefined;
  /** When set, `stop()` waits for it. */
  stopGate: Promise<void> | undefined;
  /** Threads reported by `cpus()`. */
  threadIds: number[] = [4242, 4243];

  constructor(sink?: QmpEventSink) {
    this.#events = sink ? new MachineEvents(sink) : undefined;
  }

  status(): RunState {
    return this.state;
  }
  async stop(): Promise<void> {
    this.calls.push("stop");
    if (this.stopGate) await this.stopGate;
    this.#set("paused");
  }
  cont(): Promise<void> {
    this.calls.push("cont");
    this.#set("running");
    return Promise.resolve();
  }
  reset(): Promise<void> {
    this.calls.push("reset");
    this.#events?.reset("host-qmp-system-reset");
    return Promise.resolve();
  }
  powerdown(): Promise<void> {
    this.calls.push("powerdown");
    this.#events?.powerdown();
    return Promise.resolve();
  }
  quit(): Promise<void> {
    this.calls.push("quit");
    this.#events?.shutdown("host-qmp-quit");
    this.#set("shutdown");
    return Promise.resolve();
  }
  cpus(): { index: number; threadId: number }[] {
    return this.threadIds.map((threadId, index) => ({ index, threadId }));
  }

  #set(to: RunState): void {
    const from = this.state;
    this.state = to;
    this.#events?.runStateChanged(from, to);
  }
}

/** A fake migration backend with QEMU-like behaviour for the parts QMP sees. */
export class FakeMigration implements MigrationControl {
  readonly calls: string[] = [];
  info: Record<string, unknown> = {};
  params: Record<string, unknown> = {
    "downtime-limit": 300,
    "max-bandwidth": 134217728,
    "max-iterations": 30,
    "convergence-policy": "cancel",
  };

  migrate(uri: string): void {
    if (this.info.status === "active") {
      throw new QmpError("GenericError", "There's a migration process in progress");
    }
    this.calls.push(`migrate ${uri}`);
    this.info = { status: "active", ram: { transferred: 2n ** 60n + 1n, remaining: 0, total: 1073741824 } };
  }
  cancel(): void {
    this.calls.push("cancel");
    if (this.info.status === "active") this.info = { status: "canceled" };
  }
  query(): Record<string, unknown> {
    return this.info;
  }
  setParameters(p: MigrationParameters): void {
    this.calls.push(`set ${JSON.stringify(p)}`);
    Object.assign(this.params, p);
  }
  parameters(): Record<string, unknown> {
    return { ...this.params };
  }
  incoming(uri: string): void {
    this.calls.push(`incoming ${uri}`);
  }
}
