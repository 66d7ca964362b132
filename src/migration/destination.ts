/**
 * The destination side (`-incoming`): listen, accept exactly one connection, then a strict
 * receiver state machine:
 *
 * ```
 * hello → config ──(mismatch: nack, fail)──► ack → ram* → state* → complete
 *                                         → restoreState → resume → resumed
 * ```
 *
 * Input is hostile until proven otherwise: every message is bounds-checked before allocation,
 * every RAM run is checked against this VM's RAM before any byte is written, and any bad input,
 * truncation, unexpected order or a `cancel` fails the migration with a clear error (sent back as
 * a `nack` when the connection still works). The VM is never resumed after a failure.
 *
 * From a `file:` uri (a snapshot, snapshot_file.ts) the same machine reads the file one-way: no
 * `ack`, `nack` or `resumed` is sent, the configuration and digest are checked here against what
 * the file carries, and the file must end right after `complete` (reaching its end checks its CRC).
 * @module
 */
import { logger } from "../util/log.ts";
import { PAGE_SIZE } from "../memory/guest_memory.ts";
import type { MigrationVm, RamPlacer, Section } from "./vm_port.ts";
import type { MigrationStatusTracker } from "./status.ts";
import { type MigrationInfo, RamCounters } from "./stats.ts";
import { checkCompatibility } from "./compat.ts";
import { MigrationListener, STALL_TIMEOUT_MS, StallGuard } from "./transport.ts";
import { type MigrationUri, parseMigrationUri } from "./uri.ts";
import { SnapshotFileSource } from "./snapshot_file.ts";
import {
  decodeComplete,
  decodeConfig,
  decodeHello,
  decodeReason,
  decodeSection,
  encodeReason,
  HEADER_BYTES,
  MAX_CONFIG_BYTES,
  MAX_REASON_BYTES,
  MAX_SECTIONS,
  type MessageHeader,
  MessageReader,
  MessageWriter,
  ProtocolError,
} from "./stream.ts";
import { receiveRamBatch } from "./ram.ts";
import { settleWithin } from "./_async.ts";
import type { TlsCreds } from "./tls.ts";
import { DEFAULT_MIGRATION_CAPABILITIES, type MigrationCapabilities } from "./parameters.ts";
import { PostcopyDestination } from "./postcopy_destination.ts";
import { decodeDirtyBitmaps } from "./postcopy_wire.ts";
import { pausePostcopyGuest, postcopyInfo, PostcopyPausedError } from "./postcopy.ts";
import {
  checkMultifd,
  decodeChannel,
  decodeSync,
  MultifdReceiver,
  MultifdWorkers,
  SYNC_BYTES,
} from "./multifd.ts";
import {
  compareDigests,
  decodeDigest,
  DIGEST_BYTES,
  MigrationDigest,
  type SwitchoverDigest,
} from "./digest.ts";

const log = logger("migration:incoming");

/** Options of {@linkcode receiveMigration}. */
export interface ReceiveMigrationOptions {
  /** Stops waiting (listening or receiving); the migration fails. */
  signal?: AbortSignal;
  /** Called once listening, with the bound address (the real port for `tcp:HOST:0`). */
  onListening?: (addr: Deno.Addr) => void;
  /**
   * Once connected, fail when the source sends nothing (or takes nothing) for this long, e.g. a
   * cut link. Waiting for the connection itself has no limit. @default {STALL_TIMEOUT_MS}
   */
  stallTimeoutMs?: number;
  /** Speak TLS with these server credentials (tls.ts); plaintext when absent. */
  tls?: TlsCreds;
  /** Capability `multifd` with this many channels (multifd.ts); 0 or absent = off. */
  multifdChannels?: number;
  /** This side's capabilities (`postcopy-ram` must be on to accept post-copy). */
  capabilities?: Readonly<MigrationCapabilities>;
}

/** Largest total of all section payloads. */
const MAX_TOTAL_STATE_BYTES = 256 * 1024 * 1024;

/**
 * Receives one incoming migration into `vm` (QMP `-incoming`). Resolves once the guest runs here
 * and the source was told; rejects with the reason otherwise (the caller exits non-zero). The VM
 * is resumed only after every byte of state arrived and `restoreState` succeeded.
 *
 * @param vm the freshly built, paused destination VM (same command line as the source)
 * @param uri `tcp:HOST:PORT` or `unix:PATH`, or `file:PATH` to restore a snapshot (one-way: the
 *   configuration and digest checks run here against what the file carries, nothing is sent back)
 * @param status the VM's status tracker (`query-migrate` works meanwhile)
 * @throws {TypeError} for a bad uri; {Error} for any migration failure
 * @example
 * ```ts
 * await receiveMigration(vm, "tcp:0.0.0.0:4446", status); // guest now runs here
 * ```
 */
export async function receiveMigration(
  vm: MigrationVm,
  uri: string | MigrationUri,
  status: MigrationStatusTracker,
  options: ReceiveMigrationOptions = {},
): Promise<void> {
  const target = typeof uri === "string" ? parseMigrationUri(uri, { listen: true }) : uri;
  if (target.kind === "file" && options.tls) {
    throw new TypeError(`Cannot restore from '${target.uri}' with tls-creds: TLS needs a tcp: uri`);
  }
  const incoming = new IncomingMigration(
    vm,
    options.stallTimeoutMs ?? STALL_TIMEOUT_MS,
    options.capabilities ?? DEFAULT_MIGRATION_CAPABILITIES,
  );
  status.transition("setup");
  status.attachInfo(() => incoming.info());
  let listener: MigrationListener | undefined;
  let conn: Deno.Conn | undefined;
  // multifd: the channel Workers load while the destination waits for its source.
  const multifd = options.multifdChannels ?? 0;
  const workers = multifd > 0 ? MultifdWorkers.take(multifd) : undefined;
  let file: SnapshotFileSource | undefined;
  try {
    if (target.kind === "file") {
      file = await SnapshotFileSource.open(target.path).catch((e: Error) => {
        throw new Error(`Cannot restore from '${target.path}': ${e.message}`, { cause: e });
      });
      conn = file as unknown as Deno.Conn;
    } else {
      listener = await MigrationListener.open(target, options.tls);
      options.onListening?.(listener.addr);
      if (multifd > 0 && options.tls) {
        throw new TypeError("Cannot receive a migration: multifd with TLS is not supported");
      }
      conn = multifd > 0 ? await listener.accept(options.signal) : await listener.acceptOne(options.signal);
    }
    const c = conn;
    const onAbort = () => {
      try {
        c.close();
      } catch { /* closed */ }
    };
    options.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      await incoming.run(conn, status, file !== undefined, {
        listener,
        channels: file ? 0 : multifd,
        signal: options.signal,
        workers,
      });
    } finally {
      options.signal?.removeEventListener("abort", onAbort);
    }
    incoming.end();
    vm.landed?.();
    status.transition("completed");
  } catch (e) {
    incoming.end();
    let message = (e as Error).message;
    // Bad input inside a message: name the message and where it started in the stream.
    const at = incoming.lastMessage;
    if (e instanceof ProtocolError && at && !message.includes("stream offset")) message += ` (${at})`;
    // A damaged snapshot is the cause of whatever the parser tripped on: say that instead.
    if (target.kind === "file" && !message.startsWith("Cannot restore from")) {
      message = `Cannot restore from '${target.path}': ${(await file?.corruption()) ?? message}`;
    }
    if (options.signal?.aborted) {
      message = `Incoming migration stopped: ${
        String(options.signal.reason?.message ?? options.signal.reason)
      }`;
    }
    if (e instanceof PostcopyPausedError) {
      // The guest's memory is split between the two sides: keep everything, say so.
      log.error("%s", e.message);
      status.transition("postcopy-paused", e.message);
      throw e;
    }
    // A refused snapshot is one line, the one the process exits with (vmm.ts); a live failure is logged too.
    if (target.kind === "file") log.debug("Restore failed: %s", message);
    else log.error("Incoming migration failed: %s", message);
    if (conn && !file) await incoming.refuse(conn, message);
    status.transition("failed", message);
    throw new Error(message, { cause: e });
  } finally {
    workers?.close();
    listener?.close();
    if (conn) {
      try {
        conn.close();
      } catch { /* closed */ }
    }
  }
}

/** How the destination receives multifd channels. */
interface MultifdIncoming {
  listener: MigrationListener | undefined;
  channels: number;
  signal: AbortSignal | undefined;
  workers: MultifdWorkers | undefined;
}
const NO_MULTIFD: MultifdIncoming = {
  listener: undefined,
  channels: 0,
  signal: undefined,
  workers: undefined,
};

class IncomingMigration {
  #vm: MigrationVm;
  #counters = new RamCounters();
  #startMs = performance.now();
  #setupMs: number | undefined;
  #endMs: number | undefined;
  #writer: MessageWriter | undefined;
  #reader: MessageReader | undefined;
  #guard: StallGuard | undefined;
  #stallMs: number;
  #multifd: MultifdReceiver | undefined;
  #capabilities: Readonly<MigrationCapabilities>;
  #postcopy: PostcopyDestination | undefined;
  /** Lands fresh RAM pages of the main connection while its RAM arrives (`MigrationVm.openPlacer`). */
  #placer: RamPlacer | undefined;

  constructor(vm: MigrationVm, stallMs: number, capabilities: Readonly<MigrationCapabilities>) {
    this.#vm = vm;
    this.#stallMs = stallMs;
    this.#capabilities = capabilities;
    this.#counters.totalBytes = vm.memory.sizeBytes;
  }

  info(): Omit<MigrationInfo, "status" | "error-desc"> {
    const info: Omit<MigrationInfo, "status" | "error-desc"> = {
      "total-time": Math.round((this.#endMs ?? performance.now()) - this.#startMs),
      ram: this.#counters.toInfo(),
    };
    if (this.#setupMs !== undefined) info["setup-time"] = Math.round(this.#setupMs);
    if (this.#postcopy) Object.assign(info, postcopyInfo(this.#postcopy.stats(), this.#capabilities));
    return info;
  }

  end(): void {
    this.#endMs ??= performance.now();
  }

  /** The last message read, for error lines (`MessageReader.lastMessage`). */
  get lastMessage(): string | undefined {
    return this.#reader?.lastMessage;
  }

  /** Best effort: tell the source why (it may be gone or stuck writing). */
  async refuse(conn: Deno.Conn, reason: string): Promise<void> {
    const w = this.#writer ?? new MessageWriter(conn);
    if (w.busy) return;
    await settleWithin(w.send("nack", encodeReason(reason)), 200);
  }

  /**
   * Receives from `conn`; `oneWay` (a snapshot file): nothing is sent back and the file must end
   * after `complete`. With multifd (`mf.channels` > 0) RAM arrives on channels from `mf.listener`.
   */
  async run(
    conn: Deno.Conn,
    status: MigrationStatusTracker,
    oneWay = false,
    mf: MultifdIncoming = NO_MULTIFD,
  ): Promise<void> {
    try {
      await this.#run(conn, status, oneWay, mf);
    } catch (e) {
      // A channel failure closed the main connection: its reason is the cause.
      throw this.#multifd?.failure ?? e;
    } finally {
      this.#guard?.close();
      this.#multifd?.close();
      this.#closePlacer();
    }
  }

  #closePlacer(): void {
    this.#placer?.close();
    this.#placer = undefined;
  }

  async #run(
    conn: Deno.Conn,
    status: MigrationStatusTracker,
    oneWay: boolean,
    mf: MultifdIncoming,
  ): Promise<void> {
    const vm = this.#vm;
    const guard = new StallGuard(conn, {
      peer: "source",
      readTimeoutMs: this.#stallMs,
      writeTimeoutMs: this.#stallMs,
    });
    this.#guard = guard;
    const reader = new MessageReader(guard, "source");
    this.#reader = reader;
    const writer = new MessageWriter(guard);
    this.#writer = writer;
    const c = this.#counters;
    this.#startMs = performance.now();

    const next = async (phase: string): Promise<MessageHeader> => {
      const h = await reader.readHeader();
      if (!h) throw new ProtocolError(`Cannot receive migration: the source closed the connection ${phase}`);
      c.transferredBytes += HEADER_BYTES;
      if (h.kind === "cancel") {
        const reason = decodeReason(await reader.readPayload(h, MAX_REASON_BYTES));
        throw new Error(`Migration canceled by the source: ${reason}`);
      }
      return h;
    };
    /**
     * Sends to the source. When that fails because the source went away, the source may have said
     * why first (a `cancel` already waiting in the receive buffer): report that, else say that the
     * source closed the connection rather than a bare "Broken pipe".
     */
    const send = async (kind: MessageHeader["kind"]) => {
      try {
        await writer.send(kind);
      } catch (e) {
        let pending: MessageHeader | null | undefined;
        await settleWithin(reader.readHeader().then((x) => (pending = x), () => {}), 200);
        if (pending?.kind === "cancel" && pending.length <= MAX_REASON_BYTES) {
          let reason: string | undefined;
          await settleWithin(
            reader.readPayload(pending, MAX_REASON_BYTES).then((b) => (reason = decodeReason(b)), () => {}),
            200,
          );
          if (reason !== undefined) {
            throw new Error(`Migration canceled by the source: ${reason}`, { cause: e });
          }
        }
        const gone = e instanceof Deno.errors.BrokenPipe || e instanceof Deno.errors.ConnectionReset;
        throw new ProtocolError(
          gone
            ? `Cannot receive migration: the source closed the connection before '${kind}' could be sent`
            : `Cannot receive migration: cannot send '${kind}' to the source: ${(e as Error).message}`,
          { cause: e },
        );
      }
    };
    const expect = (h: MessageHeader, kind: MessageHeader["kind"], phase: string) => {
      if (h.kind !== kind) {
        throw new ProtocolError(`Cannot receive migration: expected '${kind}' ${phase}, got '${h.kind}'`);
      }
    };

    // hello
    let h = await next("before hello");
    expect(h, "hello", "first");
    const hello = decodeHello(await reader.readPayload(h));
    c.transferredBytes += h.length;
    if (hello.pageSize !== PAGE_SIZE) {
      throw new ProtocolError(
        `Cannot receive migration: source page size ${hello.pageSize}, destination ${PAGE_SIZE}`,
      );
    }
    log.info("Incoming migration from %s (protocol %d)", hello.product, reader.version);

    // config
    h = await next("after hello");
    expect(h, "config", "after hello");
    const config = decodeConfig(await reader.readPayload(h, MAX_CONFIG_BYTES));
    c.transferredBytes += h.length;
    checkMultifd(config.config, mf.channels);
    checkCompatibility(config, { config: vm.configAttributes(), host: vm.hostAttributes() });
    if (!oneWay) await send("ack");
    this.#setupMs = performance.now() - this.#startMs;
    status.transition("active");

    // ram* state* digest complete
    const digest = new MigrationDigest(vm.memory);
    if (mf.channels > 0) {
      h = await next("before the multifd channels");
      expect(h, "channel", "after ack");
      const main = decodeChannel(await reader.readPayload(h, 64));
      this.#multifd = await MultifdReceiver.accept({
        listener: mf.listener!,
        memory: vm.memory,
        main,
        channels: mf.channels,
        stallTimeoutMs: this.#stallMs,
        populate: vm.populate !== undefined,
        digestTables: digest.tables,
        onLanded: (zeroPages, rawPages, bytes) => {
          c.transferredBytes += bytes;
          c.zeroPages += zeroPages;
          c.normalPages += rawPages;
        },
        ...(mf.signal ? { signal: mf.signal } : {}),
        ...(mf.workers ? { workers: mf.workers } : {}),
      });
      mf.listener!.close();
      this.#multifd.onFailure((e) => {
        void settleWithin(writer.send("nack", encodeReason(e.message)), 200).then(() => conn.close());
      });
    }
    let sourceDigest: SwitchoverDigest | undefined;
    const sections: Section[] = [];
    const ids = new Set<string>();
    let stateBytes = 0;
    let postcopyAdvised = false;
    let needed: Uint32Array[] | undefined;
    // RAM on the main connection lands in fresh pages through the placer: not with multifd (the
    // channel Workers write guest RAM) nor post-copy (which registers guest RAM itself).
    if (!mf.channels && !this.#capabilities["postcopy-ram"]) {
      this.#placer = vm.openPlacer?.();
    }
    for (;;) {
      h = await next("before complete");
      // RAM is over at the first other message: pages fault normally again.
      if (h.kind !== "ram") this.#closePlacer();
      if (h.kind === "postcopyAdvise") {
        if (!this.#capabilities["postcopy-ram"]) {
          throw new Error(
            "Cannot receive migration: the source may switch to post-copy but capability 'postcopy-ram' is off here (set it on both sides)",
          );
        }
        // From here on guest RAM is never backed ahead: a page backed while the switch drops
        // stale pages could hide a missing one.
        postcopyAdvised = true;
        await reader.readPayload(h, 0);
        continue;
      }
      if (h.kind === "postcopyDirty") {
        if (!postcopyAdvised || needed || sections.length > 0) {
          throw new ProtocolError("Cannot receive migration: unexpected 'postcopyDirty'");
        }
        needed = decodeDirtyBitmaps(
          await reader.readPayload(h, 64 * 1024 * 1024),
          vm.memory.regions.map((r) => r.sizeBytes / PAGE_SIZE),
        );
        c.transferredBytes += h.length;
        continue;
      }
      if (sourceDigest && h.kind !== "complete") {
        throw new ProtocolError(`Cannot receive migration: '${h.kind}' after 'digest'`);
      }
      if (h.kind === "ram") {
        if (sections.length > 0 || needed) {
          throw new ProtocolError(
            `Cannot receive migration: 'ram' after '${needed ? "postcopyDirty" : "state"}'`,
          );
        }
        const placer = this.#placer;
        const r = await receiveRamBatch(reader, h, vm.memory, {
          ...(vm.residency ? { residency: (gpa: number, n: number) => vm.residency!(gpa, n) } : {}),
          ...(vm.populate && !postcopyAdvised && !placer
            ? { populate: (gpa: number, n: number) => vm.populate!(gpa, n) }
            : {}),
          ...(placer ? { place: (gpa: number, b: Uint8Array) => placer.place(gpa, b) } : {}),
          digest,
        });
        c.transferredBytes += h.length;
        c.zeroPages += r.zeroPages;
        c.normalPages += r.rawPages;
        continue;
      }
      if (h.kind === "sync" && this.#multifd) {
        await this.#multifd.sync(decodeSync(await reader.readPayload(h, SYNC_BYTES)));
        continue;
      }
      if (h.kind === "state") {
        const payload = await reader.readPayload(h);
        const s = decodeSection(payload);
        digest.recordSection(payload);
        c.transferredBytes += h.length;
        if (ids.has(s.id)) throw new ProtocolError(`Cannot receive migration: section '${s.id}' sent twice`);
        if (sections.length >= MAX_SECTIONS) {
          throw new ProtocolError(`Cannot receive migration: more than ${MAX_SECTIONS} sections`);
        }
        stateBytes += s.payload.length;
        if (stateBytes > MAX_TOTAL_STATE_BYTES) {
          throw new ProtocolError(`Cannot receive migration: state exceeds ${MAX_TOTAL_STATE_BYTES} bytes`);
        }
        ids.add(s.id);
        sections.push(s);
        continue;
      }
      if (h.kind === "digest") {
        sourceDigest = decodeDigest(await reader.readPayload(h, DIGEST_BYTES));
        c.transferredBytes += h.length;
        continue;
      }
      expect(h, "complete", "after RAM and state");
      const count = decodeComplete(await reader.readPayload(h, 4));
      if (count !== sections.length) {
        throw new ProtocolError(
          `Cannot receive migration: source sent ${sections.length} sections but announced ${count}`,
        );
      }
      if (needed) break; // post-copy: RAM is not complete yet, so there is no digest
      if (!sourceDigest) {
        throw new ProtocolError("Cannot receive migration: 'complete' without the switch-over 'digest'");
      }
      const t0 = performance.now();
      const mismatch = compareDigests(sourceDigest, digest.finish());
      log.debug("Switch-over digest checked in %s ms", (performance.now() - t0).toFixed(2));
      if (mismatch) throw new Error(`Cannot verify the switch-over digest: ${mismatch}`);
      // A file ends here; reaching its end checks its CRC (snapshot_file.ts).
      if (oneWay && await reader.readHeader()) {
        throw new ProtocolError("Cannot receive migration: a message after 'complete'");
      }
      // 'complete' ends the stream: anything already behind it (a replay, a cancel) is refused.
      if (!oneWay && reader.buffered > 0) {
        h = await next("after complete");
        throw new ProtocolError(`Cannot receive migration: '${h.kind}' after 'complete'`);
      }
      break;
    }

    let postcopy: PostcopyDestination | undefined;
    if (needed) {
      postcopy = new PostcopyDestination(vm.memory, reader, writer, needed, c, {
        ...(vm.vcpuThreadIds ? { vcpuThreadIds: vm.vcpuThreadIds() } : {}),
      });
      postcopy.prepare();
    }
    try {
      await vm.restoreState(sections);
    } catch (e) {
      throw new Error(`Cannot restore device state: ${(e as Error).message}`, { cause: e });
    }
    try {
      await vm.startIncomingGuest();
    } catch (e) {
      throw new Error(`Cannot resume the destination VM: ${(e as Error).message}`, { cause: e });
    }
    if (oneWay) return;
    try {
      await writer.send("resumed");
    } catch (e) {
      // The source never heard it and rolls back: stop here so the guest never runs twice.
      await vm.pause().catch(() => {});
      throw new Error(`Cannot confirm the resume to the source: ${(e as Error).message}`, { cause: e });
    }
    if (!postcopy) return;
    this.#postcopy = postcopy;
    status.transition("postcopy-active");
    const t0 = performance.now();
    try {
      await postcopy.run();
    } catch (e) {
      const left = postcopy.pagesLeft;
      await pausePostcopyGuest(vm);
      throw new PostcopyPausedError(
        `Post-copy failed after the switch: ${(e as Error).message}. The guest is paused here: ` +
          `${left} pages (${
            Math.round(left * PAGE_SIZE / 1048576)
          } MiB) of its memory are only on the source, ` +
          "so it cannot run, and the source cannot take it back either",
        { cause: e },
      );
    }
    log.info("Post-copy completed in %d ms", Math.round(performance.now() - t0));
  }
}
