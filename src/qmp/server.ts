/**
 * The QMP server: a UNIX socket that greets each client, runs the commands registered with
 * {@link QmpServer.register} and broadcasts events to every connected client.
 *
 * Each connection is served by its own read loop; its commands run one at a time, in order, and the
 * loop reads nothing while a command runs, so a client cannot queue unbounded input. Output goes through
 * a per-client queue capped at `maxQueuedOutputBytes`: a client that stops reading while events pile up
 * is dropped instead of holding memory or stalling anyone else.
 * @module
 */
import { logger } from "../util/log.ts";
import { JsonSplitter, type SplitFrame } from "./json_splitter.ts";
import { parseQmpJson } from "./json_parser.ts";
import {
  encodeLine,
  encodeReplyLine,
  errorReply,
  eventMessage,
  FERRY_VERSION,
  greeting,
  QmpError,
  type QmpVersionNumber,
  returnReply,
  versionInfo,
} from "./protocol.ts";
import { type ArgSchema, type ArgsOf, checkArgs } from "./schema.ts";

const log = logger("qmp");

/** The directory part of a socket path (`node:path`'s `dirname` for the forms a path can take). */
function dirname(path: string): string {
  const trimmed = path.replace(/\/+$/, "");
  const slash = trimmed.lastIndexOf("/");
  if (slash < 0) return ".";
  return slash === 0 ? "/" : trimmed.slice(0, slash).replace(/\/+$/, "") || "/";
}
const encoder = new TextEncoder();

/** Options of {@link QmpServer}. */
export interface QmpServerOptions {
  /** Path of the UNIX socket (`-qmp unix:PATH,server`). */
  path: string;
  /**
   * When true, `listen()` resolves only after the first client has connected (QEMU's `server,wait`).
   * @default false
   */
  wait?: boolean;
  /**
   * Version reported in the greeting and by `query-version`.
   * @default FERRY_VERSION
   */
  version?: QmpVersionNumber;
  /**
   * Largest accepted input message in bytes; longer ones are refused and skipped unbuffered.
   * @default 1048576
   */
  maxMessageBytes?: number;
  /**
   * Output bytes that may wait for one client before that client is dropped.
   * @default 4194304
   */
  maxQueuedOutputBytes?: number;
  /**
   * Clients served at once. While that many are connected ferry accepts no more: further clients
   * wait in the socket's listen backlog, as with QEMU and StratoVirt, and are greeted in turn when a
   * connected client leaves. Nobody is ever sent a first line that is not the greeting.
   * @default 16
   */
  maxClients?: number;
}

/** What a command handler gets besides its arguments. */
export interface CommandContext {
  /** The connection the command came from (1, 2, … in connection order). */
  readonly clientId: number;
  /**
   * Runs `fn` after the reply has been written to the client (or after 1 s if it will not drain),
   * before the next command of this client. `quit` uses it to answer `{}` before exiting.
   */
  afterReply(fn: () => void | Promise<void>): void;
}

/** A command: its argument schema and its handler. */
export interface CommandDef<S extends ArgSchema> {
  /** Accepted arguments; anything else is refused before the handler runs. */
  readonly args: S;
  /**
   * Runs the command. Its result is the `return` value (`undefined` becomes `{}`); a thrown
   * {@link QmpError} becomes its error class, anything else a `GenericError` with the message.
   */
  readonly handler: (args: ArgsOf<S>, ctx: CommandContext) => unknown;
}

/** Buffer use of one connected client (see {@link QmpServer.clients}). */
export interface QmpClientInfo {
  /** The client's id, as in {@link CommandContext.clientId}. */
  id: number;
  /** Bytes of an incomplete input message held for this client. */
  inputBufferedBytes: number;
  /** Bytes of replies and events not yet written to this client. */
  outputQueuedBytes: number;
}

/** Anything that can send QMP events; the machine and migration sides depend only on this. */
export interface QmpEventSink {
  /** Sends `{"event":name,"data":data,"timestamp":…}` to every connected client. */
  emit(name: string, data?: Record<string, unknown>): void;
}

type AnyCommand = CommandDef<ArgSchema>;

const DRAIN_TIMEOUT_MS = 1000;
const SUN_PATH_MAX = 107; // sockaddr_un.sun_path is 108 bytes including the NUL

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function toQmpError(e: unknown): QmpError {
  if (e instanceof QmpError) return e;
  return new QmpError("GenericError", e instanceof Error ? e.message : String(e), { cause: e });
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** One connected client: its input splitter, its output queue and its read loop. */
class QmpConnection {
  readonly id: number;
  readonly #conn: Deno.Conn;
  readonly #splitter: JsonSplitter;
  readonly #maxQueued: number;
  #queue: Uint8Array[] = [];
  #queuedBytes = 0;
  #writing = false;
  #closed = false;
  #drainWaiters: (() => void)[] = [];

  constructor(
    id: number,
    conn: Deno.Conn,
    options: { maxMessageBytes: number; maxQueuedOutputBytes: number },
  ) {
    this.id = id;
    this.#conn = conn;
    this.#splitter = new JsonSplitter({ maxMessageBytes: options.maxMessageBytes });
    this.#maxQueued = options.maxQueuedOutputBytes;
  }

  get closed(): boolean {
    return this.#closed;
  }

  info(): QmpClientInfo {
    return {
      id: this.id,
      inputBufferedBytes: this.#splitter.bufferedBytes,
      outputQueuedBytes: this.#queuedBytes,
    };
  }

  /** Queues one line; drops the client when its unread output would pass the cap. */
  send(line: string): void {
    if (this.#closed) return;
    const bytes = encoder.encode(line);
    if (this.#queuedBytes + bytes.length > this.#maxQueued) {
      log.warn("Dropping QMP client %d: %d bytes of output not read", this.id, this.#queuedBytes);
      this.close();
      return;
    }
    this.#queue.push(bytes);
    this.#queuedBytes += bytes.length;
    if (!this.#writing) void this.#pump();
  }

  /** Resolves when everything queued so far is written (or the client is gone, or `timeoutMs` passed). */
  drained(timeoutMs: number): Promise<void> {
    if (this.#closed || this.#queuedBytes === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, timeoutMs);
      this.#drainWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue = [];
    this.#queuedBytes = 0;
    try {
      this.#conn.close();
    } catch {
      // already closed by the runtime
    }
    this.#wakeDrainWaiters();
  }

  /** Reads until EOF, handing each frame to `onFrame` and awaiting it before reading on. */
  async run(onFrame: (frame: SplitFrame, client: QmpConnection) => Promise<void>): Promise<void> {
    const buf = new Uint8Array(64 * 1024);
    try {
      while (!this.#closed) {
        const n = await this.#conn.read(buf);
        if (n === null) break;
        for (const frame of this.#splitter.push(buf.subarray(0, n))) {
          if (this.#closed) break;
          await onFrame(frame, this);
        }
      }
    } catch (e) {
      if (!this.#closed) {
        log.debug("QMP client %d read failed: %s", this.id, e instanceof Error ? e.message : e);
      }
    } finally {
      this.close();
    }
  }

  async #pump(): Promise<void> {
    this.#writing = true;
    try {
      while (this.#queue.length > 0 && !this.#closed) {
        const chunks = this.#queue;
        this.#queue = [];
        const data = chunks.length === 1 ? chunks[0]! : concat(chunks);
        let off = 0;
        while (off < data.length) off += await this.#conn.write(data.subarray(off));
        this.#queuedBytes -= data.length;
      }
    } catch (e) {
      if (!this.#closed) {
        log.debug("QMP client %d write failed: %s", this.id, e instanceof Error ? e.message : e);
      }
      this.close();
    } finally {
      this.#writing = false;
      if (this.#queuedBytes === 0 || this.#closed) this.#wakeDrainWaiters();
    }
  }

  #wakeDrainWaiters(): void {
    const waiters = this.#drainWaiters;
    this.#drainWaiters = [];
    for (const w of waiters) w();
  }
}

function concat(chunks: Uint8Array[]): Uint8Array {
  let total = 0;
  for (const c of chunks) total += c.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/**
 * ferry's QMP server on a UNIX socket.
 *
 * @example
 * ```ts
 * const qmp = new QmpServer({ path: "/run/ferry/qmp.sock" });
 * registerMachineCommands(qmp, machine);
 * registerMigrationCommands(qmp, migration);
 * await qmp.listen();
 * qmp.emit("STOP");
 * await qmp.close();
 * ```
 */
export class QmpServer implements QmpEventSink {
  readonly #path: string;
  readonly #wait: boolean;
  readonly #version: QmpVersionNumber;
  readonly #maxMessageBytes: number;
  readonly #maxQueuedOutputBytes: number;
  readonly #maxClients: number;
  readonly #commands = new Map<string, AnyCommand>();
  readonly #clients = new Set<QmpConnection>();
  #listener: Deno.Listener | undefined;
  #acceptLoop: Promise<void> | undefined;
  #socketIno: number | null = null;
  #nextClientId = 1;
  #closed = false;
  #firstClient: { resolve: () => void; reject: (e: Error) => void } | undefined;
  #slotFree: (() => void) | undefined;

  /** @param options where to listen and the limits; see {@link QmpServerOptions} */
  constructor(options: QmpServerOptions) {
    this.#path = options.path;
    this.#wait = options.wait ?? false;
    this.#version = options.version ?? FERRY_VERSION;
    this.#maxMessageBytes = options.maxMessageBytes ?? 1024 * 1024;
    this.#maxQueuedOutputBytes = options.maxQueuedOutputBytes ?? 4 * 1024 * 1024;
    this.#maxClients = options.maxClients ?? 16;
    this.#registerBuiltins();
  }

  /** The socket path. */
  get path(): string {
    return this.#path;
  }

  /**
   * Adds a command. Arguments are checked against `def.args` before `def.handler` runs.
   * @param name the `execute` name, e.g. `"query-status"`
   * @param def schema and handler
   * @throws Error when `name` is already registered
   */
  register<S extends ArgSchema>(name: string, def: CommandDef<S>): void {
    if (this.#commands.has(name)) {
      throw new Error(`Cannot register QMP command '${name}': already registered`);
    }
    this.#commands.set(name, def as unknown as AnyCommand);
  }

  /** Names of the registered commands, in registration order (what `query-commands` lists). */
  commands(): string[] {
    return [...this.#commands.keys()];
  }

  /** Buffer use of each connected client, for monitoring and tests. */
  clients(): QmpClientInfo[] {
    return [...this.#clients].map((c) => c.info());
  }

  /**
   * Creates the socket (mode 0600, replacing a stale file) unless {@link QmpServer.bind} did, and
   * starts accepting clients.
   * With `wait: true` it resolves only once the first client is connected and greeted.
   * @throws Error when the path is too long, is a directory, or another server is listening on it
   */
  async listen(): Promise<void> {
    if (this.#acceptLoop) throw new Error(`Cannot listen on QMP socket '${this.#path}': already listening`);
    if (this.#closed) throw new Error(`Cannot listen on QMP socket '${this.#path}': server closed`);
    this.#listener ??= await this.#bind();
    const first = this.#wait
      ? new Promise<void>((resolve, reject) => {
        this.#firstClient = { resolve, reject };
      })
      : undefined;
    this.#acceptLoop = this.#accept(this.#listener);
    log.info("QMP listening on '%s'", this.#path);
    if (first) await first;
  }

  /**
   * Creates the socket without accepting anyone yet: clients that connect wait in the listen backlog
   * until {@link QmpServer.listen} is called. ferry binds before it starts the guest and accepts
   * after, so no client sees the guest half-started (`prelaunch`, then a `RESUME`), as with QEMU,
   * whose monitor is served only once the VM runs.
   * @throws Error as {@link QmpServer.listen}
   */
  async bind(): Promise<void> {
    if (this.#listener) throw new Error(`Cannot bind QMP socket '${this.#path}': already bound`);
    if (this.#closed) throw new Error(`Cannot bind QMP socket '${this.#path}': server closed`);
    this.#listener = await this.#bind();
  }

  /**
   * Sends an event to every connected client. `data` is always present on the wire (`{}` when empty).
   * @param name e.g. `"STOP"`, `"SHUTDOWN"`
   * @param data the event's `data`
   */
  emit(name: string, data: Record<string, unknown> = {}): void {
    if (this.#closed) return;
    let line: string;
    try {
      line = encodeLine(eventMessage(name, data));
    } catch (e) {
      log.error("Cannot encode QMP event '%s': %s", name, e instanceof Error ? e.message : e);
      return;
    }
    for (const c of this.#clients) c.send(line);
  }

  /**
   * Stops accepting, disconnects every client and removes the socket file (if it is still ours).
   * Commands still running finish in the background; their replies are dropped.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#firstClient?.reject(new Error(`Cannot wait for a QMP client on '${this.#path}': server closed`));
    this.#firstClient = undefined;
    try {
      this.#listener?.close();
    } catch {
      // already closed
    }
    for (const c of this.#clients) c.close();
    this.#clients.clear();
    this.#wakeAccept();
    await this.#acceptLoop;
    this.#removeSocketFile();
  }

  /** Same as {@link QmpServer.close}. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ---------------------------------------------------------------------------------------------

  /**
   * Binds in a fresh 0700 directory beside the target, sets 0600, then renames onto the path: no
   * moment exists where the socket is reachable with looser permissions, and a stale file is
   * replaced atomically.
   */
  async #bind(): Promise<Deno.Listener> {
    const path = this.#path;
    if (encoder.encode(path).length > SUN_PATH_MAX) {
      throw new Error(`Cannot listen on QMP socket '${path}': path longer than ${SUN_PATH_MAX} bytes`);
    }
    await this.#checkExisting(path);
    const dir = await Deno.makeTempDir({ dir: dirname(path), prefix: ".qmp" });
    const tmp = `${dir}/s`;
    try {
      if (encoder.encode(tmp).length > SUN_PATH_MAX) {
        // The private directory pushes the path over the limit: bind in place, then chmod.
        await Deno.remove(path).catch(() => {});
        const listener = Deno.listen({ transport: "unix", path });
        await Deno.chmod(path, 0o600);
        this.#socketIno = (await Deno.lstat(path)).ino;
        return listener;
      }
      const listener = Deno.listen({ transport: "unix", path: tmp });
      try {
        await Deno.chmod(tmp, 0o600);
        await Deno.rename(tmp, path);
        this.#socketIno = (await Deno.lstat(path)).ino;
      } catch (e) {
        listener.close();
        throw e;
      }
      return listener;
    } catch (e) {
      throw new Error(`Cannot listen on QMP socket '${path}': ${e instanceof Error ? e.message : e}`, {
        cause: e,
      });
    } finally {
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  }

  /** Refuses a directory or a live socket; anything else at the path is stale and will be replaced. */
  async #checkExisting(path: string): Promise<void> {
    let st: Deno.FileInfo;
    try {
      st = await Deno.lstat(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return;
      throw e;
    }
    if (st.isDirectory) throw new Error(`Cannot listen on QMP socket '${path}': it is a directory`);
    if (!st.isSocket) return;
    let live = false;
    try {
      const probe = await Deno.connect({ transport: "unix", path });
      probe.close();
      live = true;
    } catch {
      // refused: nobody is listening, the file is stale
    }
    if (live) throw new Error(`Cannot listen on QMP socket '${path}': another process is listening on it`);
    log.info("Replacing stale QMP socket '%s'", path);
  }

  #removeSocketFile(): void {
    if (this.#socketIno === null) return;
    try {
      if (Deno.lstatSync(this.#path).ino === this.#socketIno) Deno.removeSync(this.#path);
    } catch {
      // already gone
    }
    this.#socketIno = null;
  }

  /** Resolves once fewer than `maxClients` are connected (or the server closes). */
  #waitForSlot(): Promise<void> {
    if (this.#closed || this.#clients.size < this.#maxClients) return Promise.resolve();
    log.info("QMP has %d clients; further clients wait until one leaves", this.#clients.size);
    return new Promise((resolve) => (this.#slotFree = resolve));
  }

  #wakeAccept(): void {
    const wake = this.#slotFree;
    this.#slotFree = undefined;
    wake?.();
  }

  async #accept(listener: Deno.Listener): Promise<void> {
    while (!this.#closed) {
      // At the limit, stop accepting: new clients queue in the kernel's listen backlog.
      await this.#waitForSlot();
      if (this.#closed) break;
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch (e) {
        if (this.#closed || e instanceof Deno.errors.BadResource) break;
        log.warn("Cannot accept a QMP client: %s", e instanceof Error ? e.message : e);
        await delay(100); // e.g. EMFILE: do not spin
        continue;
      }
      if (this.#closed) {
        conn.close();
        break;
      }
      const client = new QmpConnection(this.#nextClientId++, conn, {
        maxMessageBytes: this.#maxMessageBytes,
        maxQueuedOutputBytes: this.#maxQueuedOutputBytes,
      });
      this.#clients.add(client);
      log.debug("QMP client %d connected", client.id);
      client.send(encodeLine(greeting(this.#version)));
      this.#firstClient?.resolve();
      this.#firstClient = undefined;
      void client.run((frame, c) => this.#onFrame(frame, c)).finally(() => {
        this.#clients.delete(client);
        log.debug("QMP client %d disconnected", client.id);
        this.#wakeAccept();
      });
    }
  }

  async #onFrame(frame: SplitFrame, client: QmpConnection): Promise<void> {
    if (frame.kind === "refused") {
      client.send(encodeLine(errorReply(new QmpError("GenericError", frame.desc))));
      return;
    }
    let parsed: ReturnType<typeof parseQmpJson>;
    try {
      parsed = parseQmpJson(frame.bytes);
    } catch (e) {
      client.send(encodeLine(errorReply(new QmpError("GenericError", (e as Error).message))));
      return;
    }
    const after: (() => void | Promise<void>)[] = [];
    const ctx: CommandContext = { clientId: client.id, afterReply: (fn) => void after.push(fn) };
    const reply = await this.#execute(parsed.value, parsed.idText, ctx);
    client.send(reply);
    if (after.length === 0) return;
    await client.drained(DRAIN_TIMEOUT_MS);
    for (const fn of after) {
      try {
        await fn();
      } catch (e) {
        log.error("QMP after-reply action failed: %s", e instanceof Error ? e.message : e);
      }
    }
  }

  /**
   * Runs one parsed message and returns the encoded reply line.
   * @param idText the source text of the message's `id`, echoed as is
   */
  async #execute(message: unknown, idText: string | undefined, ctx: CommandContext): Promise<string> {
    if (!isPlainObject(message)) {
      return encodeLine(errorReply(new QmpError("GenericError", "QMP input must be a JSON object")));
    }
    let name = "";
    try {
      if (!Object.hasOwn(message, "execute")) {
        throw new QmpError("GenericError", "QMP input lacks member 'execute'");
      }
      for (const key of Object.keys(message)) {
        if (key !== "execute" && key !== "arguments" && key !== "id") {
          throw new QmpError("GenericError", `QMP input member '${key}' is unexpected`);
        }
      }
      if (typeof message.execute !== "string") {
        throw new QmpError("GenericError", "QMP input member 'execute' must be a string");
      }
      name = message.execute;
      // Absent means no arguments; present must be an object: `"arguments": null` is refused (QEMU).
      const args = Object.hasOwn(message, "arguments") ? message.arguments : {};
      if (!isPlainObject(args)) {
        throw new QmpError("GenericError", "QMP input member 'arguments' must be an object");
      }
      const command = this.#commands.get(name);
      if (!command) throw new QmpError("CommandNotFound", `The command ${name} has not been found`);
      const checked = checkArgs(command.args, args);
      log.debug("QMP client %d: %s %o", ctx.clientId, name, checked);
      const result = await command.handler(checked, ctx);
      return encodeReplyLine(returnReply(result ?? {}), idText);
    } catch (e) {
      const error = toQmpError(e);
      if (!(e instanceof QmpError)) log.warn("QMP command '%s' failed: %s", name, error.desc);
      return encodeReplyLine(errorReply(error), idText);
    }
  }

  #registerBuiltins(): void {
    this.register("qmp_capabilities", {
      args: { enable: { type: "str[]", required: false } },
      handler: ({ enable }) => {
        const first = enable?.[0];
        if (first !== undefined) throw new QmpError("GenericError", `Capability '${first}' not available`);
        return {};
      },
    });
    this.register("query-version", { args: {}, handler: () => versionInfo(this.#version) });
    this.register("query-commands", { args: {}, handler: () => this.commands().map((name) => ({ name })) });
  }
}
