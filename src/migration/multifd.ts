/**
 * multifd (QEMU's capability name): guest RAM over `multifd-channels` extra connections, each
 * driven by its own Worker on both sides ({@link ./multifd_worker.ts}); the Workers share guest RAM
 * through the host mapping of the {@linkcode MemoryLayout} (as the vCPU and I/O Workers do). The
 * main connection keeps hello, config, state, digest and complete.
 *
 * ```
 * main:      hello config ←ack  channel(id, main)  ……… sync(1) ……… sync(n)  state* digest complete
 * channel i: channel(id, i)  ram* sync(1)  ram* sync(2) … sync(n)
 * ```
 *
 * Every pass ends with a sync: each channel sends `sync(n)` after its share of the pass, then the
 * main connection does. The destination's channel Workers stop reading at `sync(n)` until the main
 * connection's `sync(n)` arrived and every channel reached it, so a page sent again in pass n+1 on
 * one channel never lands before its pass-n copy on another, and state is restored only after all
 * RAM landed. A channel that fails (closed, stalled for the stall timeout, bad input) fails the
 * migration on both sides; the source rolls back.
 *
 * The destination accepts the channels on the migration listener (same address), in any order:
 * each names the migration id (from the main connection) and its index in its first message. Deno
 * cannot pass a connection to a Worker, so the destination Worker reads the accepted socket's
 * descriptor directly (non-blocking reads with epoll), straight into guest RAM.
 * @module
 */
import type { GuestMemory, MemoryLayout } from "../memory/guest_memory.ts";
import type { MigrationCapabilities, MigrationParameters } from "./parameters.ts";
import type { MigrationListener } from "./transport.ts";
import { type MessageWriter, ProtocolError } from "./stream.ts";
import { workerUrl } from "../util/bundled.ts";
import { newSocketFds, socketFds } from "./socket_fd.ts";

/** Index in the `channel` message that marks the main connection. */
export const MAIN_CHANNEL = 0xffff;
/** Bytes of a migration id. */
export const MIGRATION_ID_BYTES = 16;
/** Bytes of the `channel` payload: id, u16 index, u16 channel count. */
export const CHANNEL_BYTES = MIGRATION_ID_BYTES + 4;
/** Bytes of the `sync` payload: u32 sync count. */
export const SYNC_BYTES = 4;
/** RAM messages queued per channel before the sender waits. */
const CREDITS_PER_CHANNEL = 2;

/** Config attributes naming multifd, checked apart from the VM's own attributes. */
const ATTR_MULTIFD = "capability multifd";
const ATTR_CHANNELS = "multifd-channels";

/** The `channel` payload. */
export interface ChannelHello {
  id: Uint8Array;
  /** 0..count-1, or {@linkcode MAIN_CHANNEL}. */
  index: number;
  count: number;
}

/** Encodes the `channel` payload. */
export function encodeChannel(h: ChannelHello): Uint8Array {
  const b = new Uint8Array(CHANNEL_BYTES);
  b.set(h.id.subarray(0, MIGRATION_ID_BYTES));
  const v = new DataView(b.buffer);
  v.setUint16(MIGRATION_ID_BYTES, h.index, true);
  v.setUint16(MIGRATION_ID_BYTES + 2, h.count, true);
  return b;
}

/** Decodes the `channel` payload. */
export function decodeChannel(b: Uint8Array): ChannelHello {
  if (b.length !== CHANNEL_BYTES) {
    throw new ProtocolError(
      `Cannot decode multifd channel message: ${b.length} bytes, need ${CHANNEL_BYTES}`,
    );
  }
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    id: b.slice(0, MIGRATION_ID_BYTES),
    index: v.getUint16(MIGRATION_ID_BYTES, true),
    count: v.getUint16(MIGRATION_ID_BYTES + 2, true),
  };
}

/** Encodes the `sync` payload. */
export function encodeSync(n: number): Uint8Array {
  const b = new Uint8Array(SYNC_BYTES);
  new DataView(b.buffer).setUint32(0, n, true);
  return b;
}

/** Decodes the `sync` payload. */
export function decodeSync(b: Uint8Array): number {
  if (b.length !== SYNC_BYTES) {
    throw new ProtocolError(`Cannot decode sync: ${b.length} bytes, need ${SYNC_BYTES}`);
  }
  return new DataView(b.buffer, b.byteOffset, SYNC_BYTES).getUint32(0, true);
}

/** The channel count when capability `multifd` is on, else 0. */
export function multifdChannels(
  caps: Readonly<MigrationCapabilities>,
  params: Readonly<MigrationParameters>,
): number {
  return caps.multifd ? params["multifd-channels"] : 0;
}

/** Source: the config attributes announcing multifd (none when off). */
export function multifdAttributes(channels: number): Record<string, string> {
  return channels > 0 ? { [ATTR_MULTIFD]: "on", [ATTR_CHANNELS]: String(channels) } : {};
}

/**
 * Destination: takes the multifd attributes out of the source's config attributes and checks them
 * against this side (both must have the capability, with the same channel count).
 * @param config the source's config attributes (the multifd ones are removed)
 * @param channels this side's channel count, 0 when the capability is off
 * @throws {Error} naming both sides' settings
 */
export function checkMultifd(config: Record<string, string>, channels: number): void {
  const on = config[ATTR_MULTIFD] === "on";
  const theirs = on ? Number(config[ATTR_CHANNELS]) : 0;
  delete config[ATTR_MULTIFD];
  delete config[ATTR_CHANNELS];
  if (on !== channels > 0) {
    throw new Error(
      `Cannot accept migration: capability multifd is ${on ? "on" : "off"} on the source and ${
        channels > 0 ? "on" : "off"
      } on the destination (set it on both sides)`,
    );
  }
  if (on && theirs !== channels) {
    throw new Error(
      `Cannot accept migration: multifd-channels is ${theirs} on the source and ${channels} on the destination`,
    );
  }
}

/** Guest RAM usable from a Worker: every region a host mapping. */
function workerLayout(memory: GuestMemory): MemoryLayout {
  const layout = memory.layout;
  for (const r of layout.regions) {
    if (r.hostAddr === 0n) throw new TypeError("Cannot use multifd: guest RAM is not in host memory");
  }
  return { regions: layout.regions.map((r) => ({ ...r })) };
}

type WorkerReply =
  | { type: "ready" }
  | { type: "sent" }
  | { type: "synced"; n: number }
  | { type: "hello"; id: Uint8Array; index: number; count: number }
  | { type: "landed"; zeroPages: number; rawPages: number; bytes: number }
  | { type: "error"; message: string };

/** One Worker and its connection, as seen from the main thread. */
class Channel {
  readonly worker: Worker;
  index: number;
  #waiters: { want: (r: WorkerReply) => boolean; resolve: (r: WorkerReply) => void }[] = [];
  #pending: WorkerReply[] = [];
  onReply: (r: WorkerReply) => void = () => {};
  failure: Error | undefined;
  onFailure: (e: Error) => void = () => {};

  constructor(index: number) {
    this.index = index;
    this.worker = new Worker(workerUrl("./multifd_worker.ts", import.meta.url), {
      type: "module",
      name: `multifd-${index}`,
    });
    this.worker.onmessage = (e: MessageEvent<WorkerReply>) => this.#reply(e.data);
    this.worker.onerror = (e) => {
      e.preventDefault();
      this.#reply({ type: "error", message: e.message });
    };
  }

  #reply(r: WorkerReply): void {
    if (r.type === "error") {
      if (this.failure) return;
      this.failure = new Error(`multifd channel ${this.index}: ${r.message}`);
      this.onFailure(this.failure);
      return;
    }
    this.onReply(r);
  }

  post(msg: unknown, transfer: Transferable[] = []): void {
    this.worker.postMessage(msg, transfer);
  }

  close(): void {
    this.worker.terminate();
  }

  /** Waits for the next reply accepted by `want` (one that came earlier counts). */
  next<T extends WorkerReply>(want: (r: WorkerReply) => r is T): Promise<T> {
    const i = this.#pending.findIndex(want);
    if (i >= 0) return Promise.resolve(this.#pending.splice(i, 1)[0] as T);
    return new Promise((resolve) => {
      this.#waiters.push({ want, resolve: resolve as (r: WorkerReply) => void });
    });
  }

  /** Hands a reply to its waiter, or keeps it for a later `next`. */
  dispatch(r: WorkerReply): void {
    const i = this.#waiters.findIndex((w) => w.want(r));
    if (i < 0) {
      this.#pending.push(r);
      return;
    }
    this.#waiters.splice(i, 1)[0]!.resolve(r);
  }
}

/**
 * Channel Workers started ahead of the connections, so that their modules load while the main
 * connection says hello (a Worker takes a few hundred ms to start on a busy host).
 */
export class MultifdWorkers {
  /** @internal */
  readonly channels: Channel[] = [];

  /** Starts `count` Workers. */
  constructor(count: number) {
    for (let i = 0; i < count; i++) this.channels.push(new Channel(i));
  }

  /** Ends the Workers; idempotent. */
  close(): void {
    for (const c of this.channels) c.close();
  }

  /** The Workers {@linkcode prewarmMultifd} started, when they are `count`; else new ones. */
  static take(count: number): MultifdWorkers {
    const w = warm;
    if (w && w.channels.length === count) {
      warm = undefined;
      return w;
    }
    return new MultifdWorkers(count);
  }
}

let warm: MultifdWorkers | undefined;

/**
 * Starts `count` channel Workers now (0: ends them), so that the next migration (either side)
 * finds them loaded instead of paying a few hundred ms in its setup. The VMM calls it when
 * `multifd` or `multifd-channels` is set.
 */
export function prewarmMultifd(count: number): void {
  if (warm?.channels.length === count) return;
  warm?.close();
  warm = count > 0 ? new MultifdWorkers(count) : undefined;
}

/** `workers` when they fit `count`, else new ones (those are closed). */
function takeWorkers(workers: MultifdWorkers | undefined, count: number): Channel[] {
  if (workers && workers.channels.length === count) return workers.channels;
  workers?.close();
  return new MultifdWorkers(count).channels;
}

/** A promise that rejects when any channel fails (and rejects nothing meanwhile). */
class FailureLatch {
  failure: Error | undefined;
  #reject!: (e: Error) => void;
  readonly failed: Promise<never>;
  #listeners: ((e: Error) => void)[] = [];

  constructor() {
    this.failed = new Promise<never>((_, reject) => (this.#reject = reject));
    this.failed.catch(() => {});
  }

  fail(e: Error): void {
    if (this.failure) return;
    this.failure = e;
    this.#reject(e);
    for (const l of this.#listeners) l(e);
  }

  listen(l: (e: Error) => void): void {
    this.#listeners.push(l);
  }

  race<T>(p: Promise<T>): Promise<T> {
    return Promise.race([p, this.failed]);
  }
}

/** Options of {@linkcode MultifdSender.open}. */
export interface MultifdSenderOptions {
  /** The migration uri (the channels connect to the same address). */
  uri: string;
  memory: GuestMemory;
  channels: number;
  /** The main connection: it carries `channel(id, main)` and the `sync` messages. */
  writer: MessageWriter;
  stallTimeoutMs: number;
  connectTimeoutMs: number;
  /** Aborting closes every channel. */
  signal?: AbortSignal;
  /** Workers started earlier ({@linkcode MultifdWorkers}). */
  workers?: MultifdWorkers;
}

/** Source side: spreads RAM messages over the channels. */
export class MultifdSender {
  #channels: Channel[];
  #credits: number[];
  #writer: MessageWriter;
  #latch = new FailureLatch();
  #creditWaiters: (() => void)[] = [];
  #syncs = 0;
  #next = 0;
  #closed = false;
  #regions: GuestMemory["regions"];

  private constructor(channels: Channel[], writer: MessageWriter, memory: GuestMemory) {
    this.#channels = channels;
    this.#credits = channels.map(() => CREDITS_PER_CHANNEL);
    this.#writer = writer;
    this.#regions = memory.regions;
    for (const c of channels) {
      c.onFailure = (e) => this.#latch.fail(e);
      c.onReply = (r) => {
        if (r.type === "sent") {
          this.#credits[c.index]!++;
          this.#wakeCredit();
          return;
        }
        c.dispatch(r);
      };
    }
    this.#latch.listen(() => this.#wakeCredit());
  }

  /**
   * Sends `channel(id, main)` on the main connection, then opens every channel (each Worker
   * connects and sends `channel(id, i)`).
   * @throws {Error} `multifd channel i: …` when a channel cannot connect
   */
  static async open(o: MultifdSenderOptions): Promise<MultifdSender> {
    const layout = workerLayout(o.memory);
    const id = crypto.getRandomValues(new Uint8Array(MIGRATION_ID_BYTES));
    await o.writer.send("channel", encodeChannel({ id, index: MAIN_CHANNEL, count: o.channels }));
    const channels = takeWorkers(o.workers, o.channels);
    const s = new MultifdSender(channels, o.writer, o.memory);
    const onAbort = () => s.close();
    o.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await s.#latch.race(Promise.all(channels.map((c) => {
        const ready = c.next((r): r is { type: "ready" } => r.type === "ready");
        c.post({
          type: "init",
          role: "source",
          uri: o.uri,
          layout,
          index: c.index,
          count: o.channels,
          id,
          stallMs: o.stallTimeoutMs,
          connectMs: o.connectTimeoutMs,
        });
        return ready;
      })));
    } catch (e) {
      s.close();
      throw e;
    }
    return s;
  }

  /** The first channel failure, if any. */
  get failure(): Error | undefined {
    return this.#latch.failure;
  }

  /**
   * The channels record every run they send in these switch-over digest tables
   * (`MigrationDigest.tables`), so the checksums run on the channel Workers.
   */
  recordInto(tables: readonly Uint32Array[]): void {
    for (const c of this.#channels) c.post({ type: "digest", tables });
  }

  #wakeCredit(): void {
    const ws = this.#creditWaiters;
    this.#creditWaiters = [];
    for (const w of ws) w();
  }

  /** Queues one RAM message on the next channel with room; waits while every channel is full. */
  async send(table: Uint8Array, parts: readonly Uint8Array[]): Promise<void> {
    for (;;) {
      if (this.#latch.failure) throw this.#latch.failure;
      const n = this.#channels.length;
      for (let k = 0; k < n; k++) {
        const i = (this.#next + k) % n;
        if (this.#credits[i]! > 0) {
          this.#credits[i]!--;
          this.#next = (i + 1) % n;
          this.#channels[i]!.post({ type: "batch", table, parts: this.#locate(parts) });
          return;
        }
      }
      await new Promise<void>((resolve) => this.#creditWaiters.push(resolve));
    }
  }

  /** (region, offset, length) triples of views into guest RAM. */
  #locate(parts: readonly Uint8Array[]): number[] {
    const out: number[] = [];
    for (const p of parts) {
      const ri = this.#regions.findIndex((r) => r.bytes.buffer === p.buffer);
      if (ri < 0) throw new RangeError("Cannot send over multifd: a RAM part is not a guest RAM view");
      out.push(ri, p.byteOffset - this.#regions[ri]!.bytes.byteOffset, p.length);
    }
    return out;
  }

  /**
   * Ends a pass: every channel sends `sync(n)` after its queued messages, then the main connection
   * does. Resolves once all of it was written.
   */
  async sync(): Promise<void> {
    const n = ++this.#syncs;
    await this.#latch.race(Promise.all(this.#channels.map((c) => {
      const done = c.next((r): r is { type: "synced"; n: number } => r.type === "synced" && r.n === n);
      c.post({ type: "sync", n });
      return done;
    })));
    await this.#latch.race(this.#writer.send("sync", encodeSync(n)));
  }

  /** Closes every channel (Workers end, connections close); idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const c of this.#channels) c.close();
    this.#latch.fail(new Error("multifd channels closed"));
  }
}

/** Options of {@linkcode MultifdReceiver.accept}. */
export interface MultifdReceiverOptions {
  listener: MigrationListener;
  memory: GuestMemory;
  /** The main connection's `channel` message. */
  main: ChannelHello;
  channels: number;
  stallTimeoutMs: number;
  /** Whether to back RAM ahead of the landing (`MigrationVm.populate` is present). */
  populate: boolean;
  /** Every landed RAM message: its counts. */
  onLanded: (zeroPages: number, rawPages: number, bytes: number) => void;
  /** The switch-over digest tables (`MigrationDigest.tables`): the Workers record what lands. */
  digestTables: readonly Uint32Array[];
  signal?: AbortSignal;
  /** Workers started earlier ({@linkcode MultifdWorkers}). */
  workers?: MultifdWorkers;
}

/** Destination side: accepts the channels and lands what they carry. */
export class MultifdReceiver {
  #channels: Channel[] = [];
  #conns: Deno.Conn[] = [];
  #latch = new FailureLatch();
  #closed = false;

  /** The first channel failure, if any. */
  get failure(): Error | undefined {
    return this.#latch.failure;
  }

  /** Calls `l` once on the first channel failure. */
  onFailure(l: (e: Error) => void): void {
    this.#latch.listen(l);
  }

  /**
   * Accepts `channels` connections on the listener, each checked by its `channel` message (same
   * migration id as the main connection, each index once).
   * @throws {Error} naming the channel, e.g. a wrong migration id or a timeout
   */
  static async accept(o: MultifdReceiverOptions): Promise<MultifdReceiver> {
    const r = new MultifdReceiver();
    try {
      await r.#accept(o);
    } catch (e) {
      r.close();
      throw e;
    }
    return r;
  }

  async #accept(o: MultifdReceiverOptions): Promise<void> {
    if (o.main.index !== MAIN_CHANNEL || o.main.count !== o.channels) {
      throw new ProtocolError(
        `Cannot accept multifd: the source announced ${o.main.count} channels, the destination has ${o.channels}`,
      );
    }
    const layout = workerLayout(o.memory);
    const workers = takeWorkers(o.workers, o.channels);
    const seen = new Set<number>();
    for (let i = 0; i < o.channels; i++) {
      const before = socketFds();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const conn = await Promise.race([
        o.listener.accept(o.signal),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new Error(
                  `Cannot accept multifd channel: ${i} of ${o.channels} connected within ${
                    o.stallTimeoutMs / 1000
                  } s`,
                ),
              ),
            o.stallTimeoutMs,
          );
        }),
      ]).finally(() => clearTimeout(timer));
      this.#conns.push(conn);
      const fresh = newSocketFds(before);
      if (fresh.length !== 1) {
        throw new Error(`Cannot accept multifd channel: cannot find its socket (${fresh.length} candidates)`);
      }
      const c = workers[i]!;
      this.#channels.push(c);
      c.onFailure = (e) => this.#latch.fail(e);
      c.onReply = (m) => {
        if (m.type === "landed") {
          o.onLanded(m.zeroPages, m.rawPages, m.bytes);
          return;
        }
        c.dispatch(m);
      };
      const hello = c.next((m): m is Extract<WorkerReply, { type: "hello" }> => m.type === "hello");
      c.post({
        type: "init",
        role: "destination",
        fd: fresh[0]!,
        layout,
        stallMs: o.stallTimeoutMs,
        populate: o.populate,
        tables: o.digestTables,
      });
      const h = await this.#latch.race(hello);
      if (!sameId(h.id, o.main.id)) {
        throw new ProtocolError("Cannot accept multifd channel: it belongs to another migration");
      }
      if (h.index >= o.channels || seen.has(h.index) || h.count !== o.channels) {
        throw new ProtocolError(
          `Cannot accept multifd channel: index ${h.index} of ${h.count} (have ${o.channels}, ${
            [...seen].join(",") || "none"
          } seen)`,
        );
      }
      seen.add(h.index);
      c.index = h.index;
      if (c.failure) this.#latch.fail(c.failure);
    }
  }

  /**
   * The main connection's `sync(n)`: waits until every channel reached its `sync(n)` (all RAM of
   * the pass landed), then lets the channels read on.
   * @throws {Error} when a channel failed or its sync count differs
   */
  async sync(n: number): Promise<void> {
    await this.#latch.race(Promise.all(this.#channels.map(async (c) => {
      const r = await c.next((m): m is { type: "synced"; n: number } => m.type === "synced");
      if (r.n !== n) {
        throw new ProtocolError(`Cannot sync multifd channel ${c.index}: it is at sync ${r.n}, main at ${n}`);
      }
    })));
    for (const c of this.#channels) c.post({ type: "go" });
  }

  /** Ends the Workers and closes the channel connections; idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const c of this.#channels) c.close();
    for (const conn of this.#conns) {
      try {
        conn.close();
      } catch { /* closed */ }
    }
  }
}

function sameId(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
