/**
 * Guest RAM on the wire. The source walks pages (all of them, or a dirty bitmap), sends all-zero
 * pages as runs without bytes, coalesces adjacent pages into runs and hands raw runs to the writer as
 * guest RAM views, which it copies into its send buffer while it computes the message's CRC32C (one
 * pass: the checksum is of exactly the bytes sent). The destination checks every run of a message
 * against its RAM before writing any byte of it.
 * @module
 */
import { type GuestMemory, PAGE_SIZE, type Region } from "../memory/guest_memory.ts";
import {
  decodeRunCount,
  decodeRuns,
  encodeRunTable,
  HEADER_BYTES,
  MAX_RUNS_PER_MESSAGE,
  type MessageHeader,
  type MessageReader,
  type MessageWriter,
  ProtocolError,
  RAM_PREFIX_BYTES,
  type RamRun,
  RUN_BYTES,
} from "./stream.ts";
import type { RamCounters } from "./stats.ts";
import type { MigrationDigest } from "./digest.ts";
import { sleep } from "./_async.ts";
import { shim } from "../ffi/shim.ts";

/** Default raw bytes per RAM message. */
export const DEFAULT_BATCH_BYTES = 4 * 1024 * 1024;
/** Most guest pages (zero or raw) one RAM message covers: 16 MiB. */
const MAX_COVER_PAGES = 4096;

/** The longest sleep of {@linkcode RateLimiter.consume} before it looks at the limit again. */
const LIMIT_SLICE_MS = 50;

/** Keeps the average send rate of a pass at or below `bytesPerSec` (0 = unlimited). */
export class RateLimiter {
  #bytesPerSec: number;
  #windowStart = 0;
  #sent = 0;

  constructor(bytesPerSec: number) {
    this.#bytesPerSec = bytesPerSec;
  }

  /** The limit in bytes per second, 0 when unlimited. */
  get bytesPerSec(): number {
    return this.#bytesPerSec;
  }

  /** Changes the limit at once (QMP `max-bandwidth` during a migration); a new window starts. */
  set bytesPerSec(v: number) {
    this.#bytesPerSec = v;
    this.reset();
  }

  /** Starts a new window (each pass), so idle time between passes earns no credit. */
  reset(): void {
    this.#windowStart = performance.now();
    this.#sent = 0;
  }

  /** Accounts `bytes` just sent and sleeps until the average rate is back under the limit. */
  async consume(bytes: number, signal?: AbortSignal): Promise<void> {
    if (this.#bytesPerSec <= 0) return;
    if (this.#windowStart === 0) this.reset();
    this.#sent += bytes;
    // Sleep in short slices, so that a changed limit takes effect at once.
    while (this.#bytesPerSec > 0) {
      const due = this.#windowStart + (this.#sent / this.#bytesPerSec) * 1000;
      const wait = due - performance.now();
      if (wait <= 1) return;
      await sleep(Math.min(wait, LIMIT_SLICE_MS), signal);
    }
  }
}

/** Counts set bits in a page bitmap. */
export function countDirtyPages(bitmaps: readonly Uint32Array[]): number {
  let n = 0;
  for (const bm of bitmaps) {
    for (let i = 0; i < bm.length; i++) {
      let x = bm[i]!;
      if (x === 0) continue;
      x = x - ((x >>> 1) & 0x55555555);
      x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
      n += (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
    }
  }
  return n;
}

/** ORs `b` into `a` (same shapes); returns `a`. */
export function mergeBitmaps(a: Uint32Array[], b: readonly Uint32Array[]): Uint32Array[] {
  for (let r = 0; r < a.length; r++) {
    const x = a[r]!;
    const y = b[r];
    if (!y) continue;
    const n = Math.min(x.length, y.length);
    for (let i = 0; i < n; i++) x[i] = (x[i]! | y[i]!) >>> 0;
  }
  return a;
}

/** Options of {@linkcode RamSender}. */
export interface RamSenderOptions {
  /** Throttles each batch; unlimited when absent. */
  limiter?: RateLimiter;
  /** Raw bytes per message. @default {DEFAULT_BATCH_BYTES} */
  batchBytes?: number;
  /** Aborts sleeps and stops between batches. */
  signal?: AbortSignal;
  /** `MigrationVm.residency`: lets the full pass skip reading pages the host never backed. */
  residency?: (gpa: number, pageCount: number) => Uint8Array | undefined;
  /** The switch-over digest: every sent run is recorded in it. */
  digest?: MigrationDigest;
  /**
   * multifd: RAM messages go to these channels instead of the writer, and each pass ends with
   * their `sync()` (multifd.ts).
   */
  channels?: {
    send(table: Uint8Array, parts: readonly Uint8Array[]): Promise<void>;
    sync(): Promise<void>;
  };
  /**
   * Asked after each message: true ends the pass there ({@linkcode RamSender.stoppedAt} then says
   * where). Post-copy uses it to switch without finishing the pass.
   */
  stopWhen?: () => boolean;
  /**
   * Asked before each message: true when guest RAM cannot change until it is written (the guest
   * is paused), so the pages go out without a copy ({@linkcode MessageWriter.sendPagesInPlaceQueued}).
   */
  stable?: () => boolean;
}

/** What one pass sent. */
export interface PassResult {
  /** Bytes written, framing included. */
  bytes: number;
  /** Pages covered (zero and raw). */
  pages: number;
  /** Wall time of the pass (scanning included). */
  elapsedMs: number;
  /** Time spent writing and throttling: the basis of the bandwidth estimate. */
  sendMs: number;
}

/** Sends guest RAM as batches of runs. */
export class RamSender {
  #writer: MessageWriter;
  #memory: GuestMemory;
  #counters: RamCounters;
  #limiter: RateLimiter | undefined;
  #batchBytes: number;
  #signal: AbortSignal | undefined;
  // The batch being built.
  #runs: RamRun[] = [];
  #parts: Uint8Array[] = [];
  #rawBytes = 0;
  #zeroPages = 0;
  #rawPages = 0;
  #lastRi = -1;
  #throttle = true;
  #pass: PassResult = { bytes: 0, pages: 0, elapsedMs: 0, sendMs: 0 };
  #residency: RamSenderOptions["residency"];
  #digest: MigrationDigest | undefined;
  #channels: RamSenderOptions["channels"];
  /** `ferry_scan_runs` output: (first page, count, zero) triples, and where it stopped. */
  #scanOut = new Uint32Array(MAX_RUNS_PER_MESSAGE * 3);
  #scanNext = new Uint32Array(1);
  /** CRC32C of each raw page of the message being sent (for the digest); reused. */
  #pageCrcs = new Uint32Array(MAX_COVER_PAGES);
  #stopWhen: (() => boolean) | undefined;
  #stable: (() => boolean) | undefined;
  #stoppedAt: { region: number; page: number } | undefined;

  constructor(
    writer: MessageWriter,
    memory: GuestMemory,
    counters: RamCounters,
    options: RamSenderOptions = {},
  ) {
    this.#writer = writer;
    this.#memory = memory;
    this.#counters = counters;
    this.#limiter = options.limiter;
    this.#batchBytes = options.batchBytes ?? DEFAULT_BATCH_BYTES;
    this.#signal = options.signal;
    this.#residency = options.residency;
    this.#digest = options.digest;
    this.#channels = options.channels;
    this.#stopWhen = options.stopWhen;
    this.#stable = options.stable;
  }

  /**
   * Where the last pass stopped early (`stopWhen`): every page before `page` of region `region`
   * (and of the regions before it) went out in that pass, none after. Undefined when it finished.
   */
  get stoppedAt(): { region: number; page: number } | undefined {
    return this.#stoppedAt;
  }

  /**
   * Sends every page of every region.
   * @returns bytes and pages sent and the time taken
   */
  sendAll(): Promise<PassResult> {
    return this.#pass_(true, (ri) => {
      const region = this.#memory.regions[ri]!;
      const resident = this.#residency?.(region.gpa, region.sizeBytes / PAGE_SIZE);
      return this.#sendRegion(ri, null, resident);
    });
  }

  /**
   * Sends the pages set in `bitmaps` (one per region).
   * @param bitmaps from `syncDirtyLog()`
   * @param throttle false for the final pass (the guest is paused: do not stretch the downtime)
   */
  sendDirty(bitmaps: readonly Uint32Array[], throttle = true): Promise<PassResult> {
    return this.#pass_(throttle, (ri) => {
      const bm = bitmaps[ri];
      return bm ? this.#sendRegion(ri, bm, undefined) : Promise.resolve();
    });
  }

  async #pass_(throttle: boolean, walk: (ri: number) => Promise<void>): Promise<PassResult> {
    this.#throttle = throttle;
    this.#pass = { bytes: 0, pages: 0, elapsedMs: 0, sendMs: 0 };
    this.#stoppedAt = undefined;
    const t0 = performance.now();
    this.#limiter?.reset();
    for (let ri = 0; ri < this.#memory.regions.length && !this.#stoppedAt; ri++) await walk(ri);
    await this.#flush();
    await this.#writer.drain();
    if (this.#channels) {
      const ts = performance.now();
      await this.#channels.sync();
      this.#pass.sendMs += performance.now() - ts;
    }
    this.#pass.elapsedMs = performance.now() - t0;
    return this.#pass;
  }

  /**
   * The send path of one region: the shim's `ferry_scan_runs` classifies the pages (all, or those
   * set in `bitmap`) into zero and raw runs; raw runs go out as views of guest RAM (copied once,
   * with the CRC32C, by the writer).
   * Yields to the event loop every {@linkcode YIELD_EVERY_PAGES} pages visited.
   */
  async #sendRegion(ri: number, bitmap: Uint32Array | null, resident: Uint8Array | undefined): Promise<void> {
    const region = this.#memory.regions[ri]!;
    let pages = region.sizeBytes / PAGE_SIZE;
    if (bitmap) pages = Math.min(pages, bitmap.length * 32);
    const out = this.#scanOut;
    const next = this.#scanNext;
    const scan = shim().ferry_scan_runs;
    const batchPages = Math.max(1, Math.floor(this.#batchLimit() / PAGE_SIZE));
    let p = 0;
    let sinceYield = 0;
    while (p < pages) {
      const covered = this.#zeroPages + this.#rawPages;
      const n = Number(scan(
        region.bytes,
        bitmap,
        resident ?? null,
        p,
        pages,
        out,
        MAX_RUNS_PER_MESSAGE - this.#runs.length,
        batchPages - this.#rawPages,
        Math.min(MAX_COVER_PAGES - covered, YIELD_EVERY_PAGES - sinceYield),
        next,
      ));
      for (let i = 0; i < n; i++) {
        this.#addRun(ri, region, out[i * 3]!, out[i * 3 + 1]!, out[i * 3 + 2] === 1);
      }
      sinceYield += this.#zeroPages + this.#rawPages - covered;
      const stoppedAt = next[0]!;
      if (stoppedAt >= pages) break;
      p = stoppedAt;
      // Stopped by a limit: a full message goes out, a long scan lets QMP in.
      if (
        this.#runs.length >= MAX_RUNS_PER_MESSAGE || this.#rawPages >= batchPages ||
        this.#zeroPages + this.#rawPages >= MAX_COVER_PAGES || n === 0
      ) {
        await this.#flush();
        if (this.#stopWhen?.()) {
          this.#stoppedAt = { region: ri, page: p };
          return;
        }
      }
      if (sinceYield >= YIELD_EVERY_PAGES) {
        sinceYield = 0;
        await yieldToEventLoop();
      }
    }
  }

  /** Adds a run of `count` pages from page `first` of region `ri` to the message being built. */
  #addRun(ri: number, region: Region, first: number, count: number, zero: boolean): void {
    const gpa = region.gpa + first * PAGE_SIZE;
    const last = this.#runs[this.#runs.length - 1];
    if (zero) this.#zeroPages += count;
    else {
      this.#rawPages += count;
      this.#rawBytes += count * PAGE_SIZE;
    }
    if (last && this.#lastRi === ri && last.zero === zero && last.gpa + last.pageCount * PAGE_SIZE === gpa) {
      last.pageCount += count;
      if (!zero) {
        const i = this.#parts.length - 1;
        const start = this.#parts[i]!.byteOffset - region.bytes.byteOffset;
        this.#parts[i] = region.bytes.subarray(start, (first + count) * PAGE_SIZE);
      }
      return;
    }
    this.#lastRi = ri;
    this.#runs.push({ gpa, pageCount: count, zero });
    if (!zero) this.#parts.push(region.bytes.subarray(first * PAGE_SIZE, (first + count) * PAGE_SIZE));
  }

  /** Raw bytes per message; under a bandwidth limit ~50 ms of sending, so throttling stays smooth. */
  #batchLimit(): number {
    const bps = this.#limiter?.bytesPerSec ?? 0;
    if (bps <= 0) return this.#batchBytes;
    return Math.min(this.#batchBytes, Math.max(PAGE_SIZE, Math.floor(bps / 20 / PAGE_SIZE) * PAGE_SIZE));
  }

  async #flush(): Promise<void> {
    if (this.#runs.length === 0) return;
    if (this.#signal?.aborted) throw this.#signal.reason;
    const runs = this.#runs;
    const table = encodeRunTable(runs);
    const parts = this.#parts;
    const bytes = HEADER_BYTES + table.length + this.#rawBytes;
    const pages = this.#zeroPages + this.#rawPages;
    const c = this.#counters;
    c.zeroPages += this.#zeroPages;
    c.normalPages += this.#rawPages;
    c.remainingBytes = Math.max(0, c.remainingBytes - pages * PAGE_SIZE);
    this.#runs = [];
    this.#parts = [];
    this.#rawBytes = 0;
    this.#zeroPages = 0;
    this.#rawPages = 0;
    const t0 = performance.now();
    if (this.#channels) {
      // multifd: the channel Workers send, checksum and record the pages (multifd.ts).
      await this.#channels.send(table, parts);
    } else {
      const rawPages = parts.reduce((n, p) => n + p.length, 0) / PAGE_SIZE;
      if (this.#pageCrcs.length < rawPages) this.#pageCrcs = new Uint32Array(rawPages);
      const crcs = this.#pageCrcs;
      // Copied now, written in the background while the next message is built (stream.ts).
      if (this.#stable?.()) await this.#writer.sendPagesInPlaceQueued("ram", table, parts, crcs);
      else await this.#writer.sendPagesQueued("ram", table, parts, crcs);
      // The CRCs of the pages as copied and sent: a page the guest changes meanwhile is dirty and is
      // sent (and recorded) again.
      this.#digest?.recordRuns(runs, crcs);
    }
    c.transferredBytes += bytes;
    this.#pass.bytes += bytes;
    this.#pass.pages += pages;
    if (this.#throttle && this.#limiter) await this.#limiter.consume(bytes, this.#signal);
    this.#pass.sendMs += performance.now() - t0;
  }
}

/** Pages scanned between yields to the event loop (QMP stays responsive while zero RAM is scanned). */
const YIELD_EVERY_PAGES = 16384;

/**
 * Lets pending I/O (QMP) run. `setImmediate`, not `setTimeout(0)`: a chain of zero timeouts is
 * clamped (~2 ms a yield here, 64 yields per idle 1 GiB pass), an immediate costs ~0.04 ms.
 */
function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/**
 * Zeroes the pages of `[off, off+len)` that are not zero already. Reading an untouched page does
 * not allocate host memory; writing would, so a fresh destination stays as sparse as its source.
 */
function zeroFill(region: Region, off: number, len: number, resident?: Uint8Array): void {
  const view = region.bytes.subarray(off, off + len);
  const pages = len / PAGE_SIZE;
  const out = new Uint32Array(64 * 3);
  const next = new Uint32Array(1);
  for (let p = 0; p < pages;) {
    // A page the host never backed reads as zero: the scan does not read it.
    const n = Number(
      shim().ferry_scan_runs(view, null, resident ?? null, p, pages, out, 64, pages, pages, next),
    );
    for (let i = 0; i < n; i++) {
      if (out[i * 3 + 2] === 0) {
        view.fill(0, out[i * 3]! * PAGE_SIZE, (out[i * 3]! + out[i * 3 + 1]!) * PAGE_SIZE);
      }
    }
    p = next[0]!;
  }
}

/** What one received RAM message held. */
export interface BatchResult {
  zeroPages: number;
  rawPages: number;
}

/** Host hooks of {@linkcode receiveRamBatch} (from `MigrationVm`). */
export interface LandOptions {
  /** `MigrationVm.residency`: zero runs skip pages the host never backed. */
  residency?: (gpa: number, pageCount: number) => Uint8Array | undefined;
  /** `MigrationVm.populate`: backs a raw run's pages in bulk before its bytes are read. */
  populate?: (gpa: number, pageCount: number) => void;
  /** The switch-over digest: every landed run is recorded in it. */
  digest?: MigrationDigest;
  /**
   * `MigrationVm.openPlacer`'s `place`: while given, raw runs with a page that is not resident are
   * read into staging buffers and placed through it (never read straight into guest RAM, and
   * never `populate`d), since such a page must not be touched otherwise.
   */
  place?: (gpa: number, bytes: Uint8Array) => Promise<void>;
}

/** One validated run of a RAM message: where in which region it lands. */
export interface LandingRun {
  gpa: number;
  pageCount: number;
  zero: boolean;
  region: Region;
  /** Byte offset of the run in `region`. */
  off: number;
}

/**
 * Reads and validates the run table of a `ram` message (after its header): every run inside one
 * region, lengths adding up to the message length. Nothing is written to guest RAM.
 * @throws {ProtocolError} naming the run and address
 */
export async function readRunTable(
  reader: MessageReader,
  header: MessageHeader,
  memory: GuestMemory,
): Promise<LandingRun[]> {
  if (header.length < RAM_PREFIX_BYTES + RUN_BYTES) {
    throw new ProtocolError(`Cannot decode RAM message: ${header.length} bytes is too short`);
  }
  const prefix = new Uint8Array(RAM_PREFIX_BYTES);
  await reader.readExact(prefix, "RAM run count");
  const count = decodeRunCount(prefix, header.length);
  const table = new Uint8Array(count * RUN_BYTES);
  await reader.readExact(table, "RAM run table");
  const runs = decodeRuns(table);
  const out: LandingRun[] = [];
  let rawBytes = 0;
  for (let i = 0; i < runs.length; i++) {
    const run = runs[i]!;
    const len = run.pageCount * PAGE_SIZE;
    const region = memory.regionOf(run.gpa, len);
    if (!region) {
      throw new ProtocolError(
        `Cannot accept RAM run ${i}: gpa 0x${
          run.gpa.toString(16)
        } + ${run.pageCount} pages is outside guest RAM`,
      );
    }
    out.push({ gpa: run.gpa, pageCount: run.pageCount, zero: run.zero, region, off: run.gpa - region.gpa });
    if (!run.zero) rawBytes += len;
  }
  const expected = RAM_PREFIX_BYTES + count * RUN_BYTES + rawBytes;
  if (expected !== header.length) {
    throw new ProtocolError(
      `Cannot accept RAM message: length ${header.length} does not match its runs (${expected} bytes)`,
    );
  }
  return out;
}

/**
 * Lands one raw run: its bytes are read from the connection straight into the guest RAM view
 * (no intermediate buffer), after the host backed the pages in bulk. With `pageCrcs`, the CRC32C
 * of each page lands there (for the switch-over digest) in the same pass that checks the message.
 */
export async function landRawRun(
  reader: MessageReader,
  run: LandingRun,
  options: LandOptions = {},
  pageCrcs?: Uint32Array,
): Promise<void> {
  const len = run.pageCount * PAGE_SIZE;
  if (options.place && !allResident(options.residency?.(run.gpa, run.pageCount))) {
    const place = options.place;
    const crcs = pageCrcs ?? new Uint32Array(run.pageCount);
    await reader.readPagesStaged(len, "RAM pages", crcs, (off, chunk) => place(run.gpa + off, chunk));
    return;
  }
  if (!options.place) options.populate?.(run.gpa, run.pageCount);
  const dst = run.region.bytes.subarray(run.off, run.off + len);
  if (pageCrcs) await reader.readPages(dst, "RAM pages", pageCrcs);
  else await reader.readExact(dst, "RAM pages");
}

/** True when every page of a `residency` answer is resident (false when unknown). */
function allResident(resident: Uint8Array | undefined): boolean {
  if (!resident) return false;
  for (let i = 0; i < resident.length; i++) if ((resident[i]! & 1) === 0) return false;
  return true;
}

/** Lands one zero run: zeroes the pages that are not zero already (untouched pages stay unbacked). */
export function landZeroRun(run: LandingRun, options: LandOptions = {}): void {
  zeroFill(run.region, run.off, run.pageCount * PAGE_SIZE, options.residency?.(run.gpa, run.pageCount));
}

/**
 * Reads the payload of a `ram` message into guest RAM. The whole run table is validated against
 * `memory` ({@linkcode readRunTable}) before any byte is written; raw runs are read straight into
 * the region views ({@linkcode landRawRun}); zero runs fill zeros ({@linkcode landZeroRun}).
 * @throws {ProtocolError} naming the run and address
 */
export async function receiveRamBatch(
  reader: MessageReader,
  header: MessageHeader,
  memory: GuestMemory,
  options: LandOptions = {},
): Promise<BatchResult> {
  const runs = await readRunTable(reader, header, memory);
  let zeroPages = 0;
  let rawPages = 0;
  let raw = 0;
  for (const run of runs) if (!run.zero) raw += run.pageCount;
  const crcs = new Uint32Array(raw);
  for (const run of runs) {
    if (run.zero) {
      landZeroRun(run, options);
      zeroPages += run.pageCount;
    } else {
      await landRawRun(reader, run, options, crcs.subarray(rawPages, rawPages + run.pageCount));
      rawPages += run.pageCount;
    }
  }
  options.digest?.recordRuns(runs, crcs);
  return { zeroPages, rawPages };
}
