/**
 * The source side of a precopy live migration, as a list of named steps (STYLE.md c.11):
 *
 * connect → hello + config (destination checks, ack/nack) → start dirty logging → send full RAM →
 * dirty passes until the rest fits `bandwidth × downtime-limit` (or the cap and its policy) →
 * pause → switchover hook → last dirty pass → save state → send state → complete → wait for the
 * destination's `resumed` → `completed` (the source stays paused: the caller keeps it `postmigrate`).
 *
 * To a `file:` uri (a snapshot, snapshot_file.ts) the same steps write the same stream one-way:
 * no `ack` is awaited (the restoring side checks the configuration), and instead of waiting for
 * `resumed` the file is sealed and renamed into place; a failure or cancel removes it.
 *
 * With capability `auto-converge`, a dirty pass that did not shrink the dirty set enough throttles
 * the vCPUs ({@linkcode AutoConverge}); the throttle is off again before the pause and in every
 * rollback. `migrate-set-parameters` applies to the running migration ({@linkcode MigrationHandle.setParameters}).
 *
 * Any failure or `cancel()` before `complete` is sent rolls back: unthrottle, stop dirty logging,
 * the rollback hook, status `failed` (with `error-desc`) or `canceled`, then resume the vCPUs if
 * this migration paused them (QEMU's order: `MIGRATION failed`, then `RESUME`). The source keeps
 * running exactly as before.
 * @module
 */
import { logger } from "../util/log.ts";
import { PAGE_SIZE } from "../memory/guest_memory.ts";
import type { MigrationVm, Section } from "./vm_port.ts";
import { type MigrationStatus, MigrationStatusTracker } from "./status.ts";
import { type MigrationInfo, RamCounters } from "./stats.ts";
import {
  DEFAULT_MIGRATION_CAPABILITIES,
  DEFAULT_MIGRATION_PARAMETERS,
  type MigrationCapabilities,
  type MigrationParameters,
} from "./parameters.ts";
import { AutoConverge } from "./auto_converge.ts";
import { connectMigration, type MigrationTls, STALL_TIMEOUT_MS, StallGuard } from "./transport.ts";
import { type MigrationUri, parseMigrationUri } from "./uri.ts";
import { SnapshotFileSink } from "./snapshot_file.ts";
import {
  decodeReason,
  encodeComplete,
  encodeConfig,
  encodeHello,
  encodeReason,
  encodeSection,
  MAX_REASON_BYTES,
  MAX_SECTIONS,
  messageBytes,
  type MessageHeader,
  MessageReader,
  MessageWriter,
  ProtocolError,
} from "./stream.ts";
import { countDirtyPages, mergeBitmaps, type PassResult, RamSender, RateLimiter } from "./ram.ts";
import { settleWithin } from "./_async.ts";
import { encodeDigest, MigrationDigest } from "./digest.ts";
import { multifdAttributes, multifdChannels, MultifdSender, MultifdWorkers } from "./multifd.ts";
import { PostcopySender, unsentPages } from "./postcopy_source.ts";
import { decodePageRequest, encodeDirtyBitmaps, PAGE_REQUEST_BYTES } from "./postcopy_wire.ts";

const log = logger("migration");

/** A running outgoing migration. */
export interface MigrationHandle {
  /** Settles with the final status (`completed`, `failed` or `canceled`); never rejects. */
  readonly done: Promise<MigrationStatus>;
  /**
   * QMP `migrate_cancel`: rolls back unless the migration already finished or has sent
   * `complete` (then the destination may already run the guest, so it is a no-op). Idempotent.
   */
  cancel(): void;
  /** The QMP `query-migrate` reply. */
  queryMigrate(): MigrationInfo;
  /**
   * QMP `migrate-set-parameters` during the migration: `max-bandwidth` applies to the next
   * batch (within 50 ms), `downtime-limit` and the iteration caps at the next dirty sync, a
   * lowered `max-cpu-throttle` at once and the other throttle parameters at the next throttle step.
   */
  setParameters(params: Readonly<MigrationParameters>): void;
  /**
   * QMP `migrate-start-postcopy`: after the RAM message in flight the source pauses, sends
   * the device state and the list of pages still dirty, and the destination runs the guest while
   * the rest follows (postcopy_source.ts). Needs capability `postcopy-ram` on both sides.
   * @throws {Error} when the capability is off or the migration is past its precopy phase
   */
  startPostcopy(): void;
}

/** Options of {@linkcode startMigration}. */
export interface StartMigrationOptions {
  /** Product and version sent in hello. @default {"ferry"} */
  product?: string;
  /** Connect timeout. @default {10000} */
  connectTimeoutMs?: number;
  /**
   * Fail when the destination takes no bytes (or does not answer the configuration) for this
   * long, e.g. a cut link. @default {STALL_TIMEOUT_MS}
   */
  stallTimeoutMs?: number;
  /** Capabilities, e.g. `auto-converge`. @default {DEFAULT_MIGRATION_CAPABILITIES} */
  capabilities?: Readonly<MigrationCapabilities>;
  /**
   * Called once the source is paused for the switch-over (QEMU's run state `finish-migrate`),
   * before the last RAM and the device state are sent.
   */
  onPaused?: () => void;
  /** Speak TLS with these client credentials and expected host name (transport.ts). */
  tls?: MigrationTls;
}

/** A failure of one named step; the message is `Cannot <step>: <cause>`. */
export class MigrationError extends Error {
  override name = "MigrationError";
  /** The step that failed. */
  readonly step: string;
  constructor(step: string, message: string, options?: ErrorOptions) {
    super(`Cannot ${step}: ${message}`, options);
    this.step = step;
  }
}

class Canceled extends Error {
  override name = "Canceled";
}

/** The destination went away (reset, EOF, broken pipe) reads better than the OS error alone. */
function describeConnectionError(e: Error): string {
  if (e instanceof Deno.errors.ConnectionReset || e instanceof Deno.errors.BrokenPipe) {
    return `the destination closed the connection (${e.message})`;
  }
  return e.message;
}

/** Below this a pass is too small to measure bandwidth; the previous measurement stays. */
const MIN_MEASURED_PASS_BYTES = 1024 * 1024;
/** Bandwidth assumed before any pass was big enough to measure: 1 Gbit/s. */
const ASSUMED_BANDWIDTH = 125_000_000;
/**
 * Below the downtime limit the source still makes another pass while the last one at least halved
 * the dirty set and more than this much sending time is left: such a pass is short, and what it
 * sends comes out of the pause.
 */
const FINAL_PASS_MS = 1;
/** How long a failed send waits for the destination's reason before reporting its own. */
const PEER_REASON_WAIT_MS = 200;

/**
 * Starts migrating `vm` to `uri` in the background (QMP `migrate` returns at once).
 *
 * @param vm the running source VM
 * @param uri `tcp:HOST:PORT`, `unix:PATH` or `file:PATH` (a snapshot), as text or parsed once (uri.ts)
 * @param params tunables, e.g. from `migrate-set-parameters`
 * @param status the VM's status tracker (emits `MIGRATION` events)
 * @returns a handle with `cancel()`, `done` and `queryMigrate()`
 * @throws {TypeError} for a bad uri; {Error} when a migration is already active. Nothing has
 *   changed then.
 * @example
 * ```ts
 * const h = startMigration(vm, "tcp:10.0.0.2:4446", DEFAULT_MIGRATION_PARAMETERS, status);
 * const final = await h.done; // "completed": keep the VM paused (postmigrate)
 * ```
 */
export function startMigration(
  vm: MigrationVm,
  uri: string | MigrationUri,
  params: Readonly<MigrationParameters> = DEFAULT_MIGRATION_PARAMETERS,
  status: MigrationStatusTracker = new MigrationStatusTracker(),
  options: StartMigrationOptions = {},
): MigrationHandle {
  if (status.isActive) throw new Error("Cannot start migration: a migration is already in progress");
  const target = typeof uri === "string" ? parseMigrationUri(uri) : uri;
  if (target.kind === "file" && options.tls) {
    throw new TypeError(
      `Cannot migrate to '${target.uri}' with tls-creds '${options.tls.creds.id}': TLS needs a tcp: uri`,
    );
  }
  const m = new OutgoingMigration(vm, target, params, status, options);
  return m.handle();
}

class OutgoingMigration {
  #vm: MigrationVm;
  #target: MigrationUri;
  #uri: string;
  /** To a file: nothing answers (snapshot_file.ts). */
  #oneWay: boolean;
  #file: SnapshotFileSink | undefined;
  #params: Readonly<MigrationParameters>;
  #capabilities: Readonly<MigrationCapabilities>;
  #status: MigrationStatusTracker;
  #options: StartMigrationOptions;
  #abort = new AbortController();
  #conn: Deno.Conn | undefined;
  #writer: MessageWriter | undefined;
  #limiter: RateLimiter | undefined;
  #guard: StallGuard | undefined;
  #replies: Promise<void> | undefined;
  #peerError: string | undefined;
  #connClosed = false;
  #multifd: MultifdSender | undefined;
  #multifdWorkers: MultifdWorkers | undefined;
  /** multifd channels, fixed at the start (a later `multifd-channels` applies to the next migration). */
  #channels: number | undefined;
  // What the rollback must undo.
  #dirtyLogging = false;
  #paused = false;
  #throttled = false;
  #switchedOver = false;
  #committed = false;
  #finished = false;
  // Statistics.
  #counters = new RamCounters();
  #startMs = performance.now();
  #setupMs: number | undefined;
  #endMs: number | undefined;
  #pausedAtMs: number | undefined;
  #downtimeMs: number | undefined;
  #lastSyncMs = 0;
  /** True once a pass of at least 1 MiB measured the bandwidth. */
  #measured = false;
  #autoConverge = new AutoConverge();
  /** `transferredBytes` at the previous dirty sync. */
  #sentAtSync = 0;
  // Post-copy (postcopy_source.ts).
  #postcopyRequested = false;
  #postcopy: PostcopySender | undefined;
  #destinationResumed = false;
  #done: Promise<MigrationStatus>;

  constructor(
    vm: MigrationVm,
    target: MigrationUri,
    params: Readonly<MigrationParameters>,
    status: MigrationStatusTracker,
    options: StartMigrationOptions,
  ) {
    this.#vm = vm;
    this.#target = target;
    this.#uri = target.uri;
    this.#oneWay = target.kind === "file";
    this.#params = params;
    this.#capabilities = options.capabilities ?? DEFAULT_MIGRATION_CAPABILITIES;
    this.#status = status;
    this.#options = options;
    this.#counters.totalBytes = vm.memory.sizeBytes;
    status.transition("setup");
    status.attachInfo(() => this.#info());
    this.#done = this.#run();
  }

  handle(): MigrationHandle {
    return {
      done: this.#done,
      cancel: () => this.#cancel(),
      queryMigrate: () => this.#status.queryMigrate(),
      setParameters: (p) => this.#setParameters(p),
      startPostcopy: () => this.#startPostcopy(),
    };
  }

  #startPostcopy(): void {
    if (this.#oneWay) {
      throw new Error("Cannot start post-copy: a snapshot to a file has no destination to run the guest");
    }
    if (!this.#capabilities["postcopy-ram"]) {
      throw new Error("Cannot start post-copy: enable capability 'postcopy-ram' before the migration starts");
    }
    if (this.#finished || this.#committed || this.#pausedAtMs !== undefined) {
      throw new Error("Cannot start post-copy: the migration is past its precopy phase");
    }
    if (!this.#postcopyRequested) log.info("Post-copy requested: switching after the RAM message in flight");
    this.#postcopyRequested = true;
  }

  #setParameters(p: Readonly<MigrationParameters>): void {
    if (this.#finished) return;
    const old = this.#params;
    this.#params = p;
    if (this.#limiter && p["max-bandwidth"] !== old["max-bandwidth"]) {
      log.info("max-bandwidth %d -> %d B/s during the migration", old["max-bandwidth"], p["max-bandwidth"]);
      this.#limiter.bytesPerSec = p["max-bandwidth"];
    }
    const pct = this.#autoConverge.percentage;
    if (this.#throttled && this.#autoConverge.clamp(p) !== pct) {
      void this.#applyThrottle(this.#autoConverge.percentage);
    }
  }

  async #applyThrottle(percent: number): Promise<void> {
    const set = this.#vm.setCpuThrottle;
    if (!set) return;
    if (percent > 0) this.#throttled = true;
    try {
      await set.call(this.#vm, percent);
    } catch (e) {
      log.error("Cannot throttle the vCPUs to %d%%: %s", percent, (e as Error).message);
    }
    if (percent === 0) this.#throttled = false;
  }

  async #unthrottle(): Promise<void> {
    this.#autoConverge.reset();
    if (this.#throttled) await this.#applyThrottle(0);
  }

  #info(): Omit<MigrationInfo, "status" | "error-desc"> {
    const now = this.#endMs ?? performance.now();
    const info: Omit<MigrationInfo, "status" | "error-desc"> = {
      "total-time": Math.round(now - this.#startMs),
    };
    if (this.#setupMs !== undefined) info["setup-time"] = Math.round(this.#setupMs);
    if (this.#downtimeMs !== undefined) info.downtime = Math.round(this.#downtimeMs);
    const bw = this.#counters.bandwidthBytesPerSec;
    if (this.#endMs === undefined && bw > 0) {
      info["expected-downtime"] = Math.round(this.#counters.remainingBytes / bw * 1000);
    }
    info.ram = this.#counters.toInfo();
    if (this.#capabilities["auto-converge"]) {
      info["cpu-throttle-percentage"] = this.#autoConverge.percentage;
    }
    return info;
  }

  #cancel(): void {
    if (this.#finished) return;
    if (this.#committed) {
      log.warn("Ignoring migrate_cancel: all state was sent, the destination may already run the guest");
      return;
    }
    if (this.#abort.signal.aborted) return;
    log.info("Canceling migration to %s", this.#uri);
    this.#abort.abort(new Canceled("Migration canceled"));
    this.#closeConn("migrate_cancel");
  }

  /** Sends `cancel(reason)` when the writer is idle, then closes; closes at once when it is busy. */
  #closeConn(reason: string): void {
    const conn = this.#conn;
    if (!conn || this.#connClosed) return;
    this.#connClosed = true;
    this.#guard?.close();
    const close = () => {
      try {
        conn.close();
      } catch { /* already closed */ }
    };
    const w = this.#writer;
    if (!w || w.busy || this.#oneWay) return close();
    settleWithin(w.send("cancel", encodeReason(reason)), PEER_REASON_WAIT_MS).then(close);
  }

  /**
   * Runs `fn` as the step `name`; failures become `Cannot <name>: …`. For a step that talks to
   * the destination (`io`), a failure first waits briefly for the destination's own reason.
   */
  async #step<T>(name: string, fn: () => Promise<T> | T, io = true): Promise<T> {
    if (this.#abort.signal.aborted) throw this.#abort.signal.reason;
    log.debug("Migration step: %s", name);
    try {
      return await fn();
    } catch (e) {
      if (this.#abort.signal.aborted && !this.#committed) throw this.#abort.signal.reason;
      if (e instanceof MigrationError) throw e;
      // A stalled connection was closed here: whatever the reply reader saw is not the cause.
      const stalled = this.#guard?.stalled;
      if (stalled) throw new MigrationError(name, stalled.message, { cause: e });
      const peer = io ? await this.#peerReason() : undefined;
      const detail = peer ?? describeConnectionError(e as Error);
      throw new MigrationError(name, detail, { cause: e });
    }
  }

  async #peerReason(): Promise<string | undefined> {
    if (this.#peerError === undefined && this.#replies) {
      await settleWithin(this.#replies, PEER_REASON_WAIT_MS);
    }
    return this.#peerError;
  }

  async #run(): Promise<MigrationStatus> {
    try {
      await this.#pipeline();
      this.#finish("completed");
    } catch (e) {
      if (this.#postcopy && this.#committed && (this.#destinationResumed || this.#peerError === undefined)) {
        // The destination may run the guest and holds pages this side no longer has current:
        // neither side may run it. Stay paused (QEMU's postcopy-paused).
        const message =
          `Post-copy failed after the switch: ${(e as Error).message}. The guest is paused on ` +
          "both sides; this source must not be resumed (the destination may have run it)";
        log.error("%s", message);
        this.#finish("postcopy-paused", message);
        return this.#status.status;
      }
      const canceled = e instanceof Canceled;
      const message = canceled ? "Migration canceled" : (e as Error).message;
      if (!canceled) log.error("Migration to %s failed: %s", this.#uri, message);
      await this.#rollback(canceled ? "migrate_cancel" : `source failed: ${message}`);
      // QEMU's order: `MIGRATION failed|cancelled`, then the vCPUs run again (`RESUME`).
      this.#finish(canceled ? "canceled" : "failed", message);
      await this.#resumeSource();
    }
    return this.#status.status;
  }

  #finish(to: MigrationStatus, errorDesc?: string): void {
    this.#endMs = performance.now();
    this.#guard?.close();
    this.#multifd?.close();
    this.#multifdWorkers?.close();
    this.#finished = true;
    if (this.#conn && !this.#connClosed) {
      this.#connClosed = true;
      try {
        this.#conn.close();
      } catch { /* already closed */ }
    }
    this.#status.transition(to, errorDesc);
  }

  /** Undoes everything but the pause: throttle, connection, dirty logging, switchover hook. */
  async #rollback(reason: string): Promise<void> {
    await this.#unthrottle();
    this.#closeConn(reason);
    this.#multifd?.close();
    this.#multifdWorkers?.close();
    const vm = this.#vm;
    if (this.#dirtyLogging) {
      this.#dirtyLogging = false;
      try {
        vm.stopDirtyLog();
      } catch (e) {
        log.error("Rollback: cannot stop dirty logging: %s", (e as Error).message);
      }
    }
    if (this.#switchedOver) {
      try {
        await vm.onRollback?.();
      } catch (e) {
        log.error("Rollback: rollback hook failed: %s", (e as Error).message);
      }
    }
  }

  async #resumeSource(): Promise<void> {
    const vm = this.#vm;
    // Resume only what this migration paused: a VM the operator had stopped stays stopped.
    if (this.#paused && vm.pausedByMigration !== false) {
      try {
        await vm.resumeAfterRollback();
        this.#paused = false;
      } catch (e) {
        log.error("Rollback: cannot resume the source VM: %s", (e as Error).message);
      }
    }
  }

  async #pipeline(): Promise<void> {
    const vm = this.#vm;
    const signal = this.#abort.signal;
    const c = this.#counters;
    // The channel Workers load while the main connection is set up.
    if (this.#channelCount() > 0) this.#multifdWorkers = MultifdWorkers.take(this.#channelCount());

    const target = this.#target;
    const conn = target.kind === "file"
      ? await this.#step("create the snapshot file", async () => {
        this.#file = await SnapshotFileSink.create(target.path);
        return this.#file as unknown as Deno.Conn;
      }, false)
      : await this.#step(
        "connect to the destination",
        () =>
          connectMigration(target, {
            timeoutMs: this.#options.connectTimeoutMs ?? 10_000,
            signal,
            byReference: this.#capabilities["zero-copy-send"] !== false,
            ...(this.#options.tls ? { tls: this.#options.tls } : {}),
          }),
      );
    this.#conn = conn;
    if (signal.aborted) {
      this.#closeConn("migrate_cancel");
      throw signal.reason;
    }
    const stallMs = this.#options.stallTimeoutMs ?? STALL_TIMEOUT_MS;
    // Writes fail when the destination takes nothing for stallMs; reads only until the ack:
    // after `complete` the source must wait for the destination however long it takes.
    const guard = new StallGuard(conn, {
      peer: "destination",
      readTimeoutMs: stallMs,
      writeTimeoutMs: stallMs,
    });
    this.#guard = guard;
    const writer = new MessageWriter(guard);
    this.#writer = writer;
    const reader = new MessageReader(guard, "destination");

    await this.#step("exchange configuration", async () => {
      await writer.send(
        "hello",
        encodeHello({ pageSize: PAGE_SIZE, product: this.#options.product ?? "ferry" }),
      );
      const config = { ...vm.configAttributes(), ...multifdAttributes(this.#channelCount()) };
      await writer.send("config", encodeConfig({ config, host: vm.hostAttributes() }));
      if (this.#oneWay) return; // the restoring side checks the configuration
      const h = await reader.readHeader();
      if (!h) throw new ProtocolError("the destination closed the connection");
      if (h.kind === "nack") {
        const reason = decodeReason(await reader.readPayload(h, MAX_REASON_BYTES));
        throw new Error(`destination refused: ${reason}`);
      }
      if (h.kind !== "ack" || h.length !== 0) throw new ProtocolError(`expected 'ack', got '${h.kind}'`);
    });
    guard.setReadTimeout(0);
    if (!this.#oneWay) {
      this.#replies = this.#readReplies(reader);
      this.#replies.catch(() => {});
      if (this.#capabilities["postcopy-ram"]) {
        await this.#step("advise post-copy", () => writer.send("postcopyAdvise"));
      }
    }
    if (this.#channelCount() > 0) {
      this.#multifd = await this.#step("open the multifd channels", () => {
        if (this.#options.tls) throw new TypeError("multifd with TLS is not supported");
        if (this.#capabilities["postcopy-ram"]) {
          throw new TypeError("multifd with postcopy-ram is not supported");
        }
        return MultifdSender.open({
          uri: this.#uri,
          memory: vm.memory,
          channels: this.#channelCount(),
          writer,
          stallTimeoutMs: stallMs,
          connectTimeoutMs: this.#options.connectTimeoutMs ?? 10_000,
          signal,
          ...(this.#multifdWorkers ? { workers: this.#multifdWorkers } : {}),
        });
      });
    }

    await this.#step("start dirty logging", () => {
      vm.startDirtyLog();
      this.#dirtyLogging = true;
    }, false);
    this.#setupMs = performance.now() - this.#startMs;
    this.#status.transition("active");

    const limiter = new RateLimiter(this.#params["max-bandwidth"]);
    this.#limiter = limiter;
    const digest = new MigrationDigest(vm.memory);
    this.#multifd?.recordInto(digest.tables);
    const sender = new RamSender(writer, vm.memory, c, {
      limiter,
      signal,
      // multifd: the channel Workers record what they send in the digest.
      ...(this.#multifd ? { channels: this.#multifd } : { digest }),
      ...(vm.residency ? { residency: (gpa: number, n: number) => vm.residency!(gpa, n) } : {}),
      // A paused guest's RAM cannot change: it goes out without a copy.
      stable: () => vm.guestPaused === true,
      // migrate-start-postcopy switches without finishing the pass in progress.
      ...(this.#capabilities["postcopy-ram"] && !this.#oneWay
        ? { stopWhen: () => this.#postcopyRequested }
        : {}),
    });
    const residency = vm.residency ? (gpa: number, n: number) => vm.residency!(gpa, n) : undefined;
    /** Post-copy: the pages a pass stopped early by migrate-start-postcopy did not send. */
    let unsent: Uint32Array[] | undefined;
    const iterStartMs = performance.now();
    this.#lastSyncMs = iterStartMs;
    c.remainingBytes = vm.memory.sizeBytes;
    this.#measure(await this.#step("send full RAM", () => sender.sendAll()));
    if (sender.stoppedAt) unsent = unsentPages(vm.memory, sender.stoppedAt, null, residency);

    let pending: Uint32Array[];
    /** What the pass before this sync had to send (the full pass: all of RAM). */
    let lastDirtyBytes = vm.memory.sizeBytes;
    for (let pass = 1;; pass++) {
      const bitmaps = await this.#step("sync the dirty log", () => this.#sync(), false);
      const sentBytes = c.transferredBytes - this.#sentAtSync;
      this.#sentAtSync = c.transferredBytes;
      const p = this.#params; // read at every pass: migrate-set-parameters applies live
      const thresholdBytes = this.#bandwidth() * p["downtime-limit"] / 1000;
      const halved = c.remainingBytes * 2 <= lastDirtyBytes;
      lastDirtyBytes = c.remainingBytes;
      if (this.#postcopyRequested) {
        log.info("Switching to post-copy after %d dirty passes: %d bytes dirty", pass - 1, c.remainingBytes);
        pending = unsent ? mergeBitmaps(bitmaps, unsent) : bitmaps;
        break;
      }
      if (c.remainingBytes <= thresholdBytes) {
        const finalBytes = this.#bandwidth() * FINAL_PASS_MS / 1000;
        if (c.remainingBytes <= finalBytes || !halved || pass > p["max-iterations"]) {
          log.info("Converged after %d dirty passes: %d bytes left", pass - 1, c.remainingBytes);
          pending = bitmaps;
          break;
        }
        // Within the limit, but the guest dirties slowly: one more short pass shortens the pause.
      } else {
        const capped = pass > p["max-iterations"] ||
          (p["max-precopy-time"] > 0 && performance.now() - iterStartMs >= p["max-precopy-time"]);
        if (capped) {
          const why = `${c.remainingBytes} bytes still dirty after ${pass - 1} dirty passes, more than ` +
            `${Math.floor(thresholdBytes)} bytes (${Math.round(this.#bandwidth())} B/s × ${
              p["downtime-limit"]
            } ms)`;
          if (p["convergence-policy"] === "cancel") {
            throw new MigrationError("converge", `${why}; convergence-policy is cancel`);
          }
          log.warn("Forcing switchover: %s", why);
          pending = bitmaps;
          break;
        }
        if (this.#capabilities["auto-converge"] && vm.setCpuThrottle) {
          const before = this.#autoConverge.percentage;
          const pct = this.#autoConverge.afterSync(c.remainingBytes, sentBytes, p);
          if (pct !== before) {
            log.info(
              "auto-converge: throttling the vCPUs at %d%% (%d bytes dirtied, %d sent)",
              pct,
              c.remainingBytes,
              sentBytes,
            );
            await this.#step("throttle the vCPUs", () => this.#applyThrottle(pct), false);
          }
        }
      }
      this.#measure(await this.#step(`send dirty RAM (pass ${pass})`, () => sender.sendDirty(bitmaps)));
      if (sender.stoppedAt) unsent = unsentPages(vm.memory, sender.stoppedAt, bitmaps);
    }
    await this.#step("stop throttling the vCPUs", () => this.#unthrottle(), false);

    await this.#step("pause the source VM", async () => {
      this.#pausedAtMs = performance.now();
      this.#paused = true; // set first: a pause that fails half-way is still resumed by the rollback
      await vm.pause();
      this.#options.onPaused?.();
    }, false);
    await this.#step("run the switchover hook", async () => {
      this.#switchedOver = true;
      await vm.onSwitchover?.();
    }, false);
    const last = await this.#step("sync the dirty log", () => mergeBitmaps(pending, this.#sync()), false);
    if (this.#postcopyRequested) return await this.#postcopyPhase(writer, last, limiter);
    await this.#step("send the last dirty RAM", () => sender.sendDirty(last, false));
    c.remainingBytes = 0;
    await this.#step("stop dirty logging", () => {
      this.#dirtyLogging = false;
      vm.stopDirtyLog();
    }, false);
    const sections = await this.#step("save device state", () => vm.saveState(), false);
    await this.#step("send device state", () => this.#sendSections(writer, sections, digest));
    await this.#step("send the switch-over digest", async () => {
      const t0 = performance.now();
      const d = digest.finish();
      log.debug("Switch-over digest of %d pages in %s ms", d.pages, (performance.now() - t0).toFixed(2));
      await writer.send("digest", encodeDigest(d));
    });
    await this.#step("send complete", async () => {
      await writer.send("complete", encodeComplete(sections.length));
      if (!this.#oneWay) this.#committed = true;
    });
    if (this.#file) {
      const file = this.#file;
      await this.#step("complete the snapshot file", async () => {
        await file.commit();
        this.#committed = true;
      }, false);
    } else {
      await this.#step("wait for the destination to resume", () => this.#replies);
    }
    this.#downtimeMs = performance.now() - this.#pausedAtMs!;
  }

  /**
   * Sends one `state` message per section (at most {@linkcode MAX_SECTIONS}, ids unique), recording
   * each in the switch-over digest when there is one.
   */
  async #sendSections(writer: MessageWriter, sections: Section[], digest?: MigrationDigest): Promise<void> {
    if (sections.length > MAX_SECTIONS) {
      throw new RangeError(`${sections.length} sections exceed ${MAX_SECTIONS}`);
    }
    const seen = new Set<string>();
    for (const s of sections) {
      if (seen.has(s.id)) throw new RangeError(`section id '${s.id}' appears twice`);
      seen.add(s.id);
      const b = encodeSection(s);
      await writer.send("state", b);
      digest?.recordSection(b);
      this.#counters.transferredBytes += messageBytes(b.length);
    }
  }

  /**
   * After the switch to post-copy: the device state and the pages still dirty go out, the
   * destination runs the guest, and the rest of RAM streams (requested pages first) until the
   * destination has every page (`postcopyDone`).
   */
  async #postcopyPhase(writer: MessageWriter, dirty: Uint32Array[], limiter: RateLimiter): Promise<void> {
    const vm = this.#vm;
    const c = this.#counters;
    // One bit per page of each region (KVM's bitmaps may be padded to 64-bit words).
    const last = vm.memory.regions.map((r, i) => {
      const words = Math.ceil(r.sizeBytes / PAGE_SIZE / 32);
      const b = dirty[i] ?? new Uint32Array(words);
      return b.length === words ? b : Uint32Array.from({ length: words }, (_, k) => b[k] ?? 0);
    });
    await this.#step("stop dirty logging", () => {
      this.#dirtyLogging = false;
      vm.stopDirtyLog();
    }, false);
    const sections = await this.#step("save device state", () => vm.saveState(), false);
    const sender = new PostcopySender(writer, vm.memory, last, c, { limiter, signal: this.#abort.signal });
    log.info("Post-copy: %d pages still dirty go after the switch", sender.pagesLeft);
    await this.#step("send the post-copy page list and device state", async () => {
      if (sections.length > MAX_SECTIONS) {
        throw new RangeError(`${sections.length} sections exceed ${MAX_SECTIONS}`);
      }
      const bitmap = encodeDirtyBitmaps(last);
      await writer.send("postcopyDirty", bitmap);
      c.transferredBytes += messageBytes(bitmap.length);
      await this.#sendSections(writer, sections);
      this.#postcopy = sender; // from here on the reply reader takes page requests
      await writer.send("complete", encodeComplete(sections.length));
      this.#committed = true;
    });
    this.#status.transition("postcopy-active");
    await this.#step("send the remaining RAM (post-copy)", () => sender.run());
    await this.#step("wait for the destination to receive all RAM", () => this.#replies);
  }

  /**
   * Reads the destination's replies until `resumed` (precopy) or `postcopyDone` (post-copy, with
   * page requests meanwhile); a nack/cancel/EOF closes the connection.
   */
  async #readReplies(reader: MessageReader): Promise<void> {
    try {
      for (;;) {
        const h = await reader.readHeader();
        if (!h) throw new ProtocolError("the destination closed the connection");
        if (h.kind === "resumed" && !this.#postcopy) return;
        if (h.kind === "resumed") {
          this.#destinationResumed = true;
          this.#downtimeMs = performance.now() - this.#pausedAtMs!;
          log.info(
            "Post-copy: the guest runs on the destination (downtime %d ms)",
            Math.round(this.#downtimeMs),
          );
          continue;
        }
        if (h.kind === "pageRequest" && this.#postcopy) {
          const r = decodePageRequest(await reader.readPayload(h, PAGE_REQUEST_BYTES));
          this.#postcopy.request(r.gpa, r.pageCount);
          continue;
        }
        if (h.kind === "postcopyDone" && this.#postcopy) {
          await reader.readPayload(h, 0);
          return;
        }
        await this.#reply(reader, h);
      }
    } catch (e) {
      if (
        this.#peerError === undefined && !this.#abort.signal.aborted && !this.#finished &&
        !this.#guard?.stalled
      ) {
        this.#peerError = describeConnectionError(e as Error);
      }
      // Unblock a send into a destination that stopped reading.
      if (!this.#committed && this.#conn && !this.#connClosed) {
        this.#connClosed = true;
        try {
          this.#conn.close();
        } catch { /* already closed */ }
      }
      throw e;
    }
  }

  /** multifd channels (capability `multifd`), 0 when off. */
  #channelCount(): number {
    // A snapshot file has no channels: it is written in one stream.
    this.#channels ??= this.#oneWay ? 0 : multifdChannels(this.#capabilities, this.#params);
    return this.#channels;
  }

  /** A nack or cancel from the destination ends the migration; anything else is a protocol error. */
  async #reply(reader: MessageReader, h: MessageHeader): Promise<never> {
    if (h.kind === "nack" || h.kind === "cancel") {
      this.#peerError = `destination failed: ${decodeReason(await reader.readPayload(h, MAX_REASON_BYTES))}`;
      throw new Error(this.#peerError);
    }
    throw new ProtocolError(`unexpected '${h.kind}' message from the destination`);
  }

  #sync(): Uint32Array[] {
    const c = this.#counters;
    const bitmaps = this.#vm.syncDirtyLog();
    const now = performance.now();
    const dirty = countDirtyPages(bitmaps);
    c.dirtySyncCount++;
    c.remainingBytes = dirty * PAGE_SIZE;
    const dt = (now - this.#lastSyncMs) / 1000;
    if (dt > 0) c.dirtyPagesRate = dirty / dt;
    this.#lastSyncMs = now;
    return bitmaps;
  }

  /**
   * Bandwidth = bytes / time spent writing (and throttled) in the pass: the link's rate, not the
   * page scanning's, since the last pass after the pause scans only dirty pages. A pass under
   * 1 MiB mostly fills socket buffers and keeps the previous measurement.
   */
  #measure(pass: PassResult): void {
    const c = this.#counters;
    if (pass.bytes >= MIN_MEASURED_PASS_BYTES || !this.#measured) {
      c.bandwidthBytesPerSec = pass.bytes / (Math.max(pass.sendMs, 0.1) / 1000);
      if (pass.bytes >= MIN_MEASURED_PASS_BYTES) this.#measured = true;
    }
    c.pagesPerSecond = pass.pages / (Math.max(pass.elapsedMs, 0.1) / 1000);
  }

  /**
   * Measured bandwidth in bytes per second, capped by `max-bandwidth`. Until a pass of at least
   * 1 MiB was measured (a mostly-zero guest), at least {@linkcode ASSUMED_BANDWIDTH} is assumed.
   */
  #bandwidth(): number {
    const max = this.#params["max-bandwidth"];
    let bw = this.#counters.bandwidthBytesPerSec;
    if (!this.#measured) bw = Math.max(bw, ASSUMED_BANDWIDTH);
    return max > 0 ? Math.min(bw, max) : bw;
  }
}
