/**
 * Guest RAM on the wire. The source walks pages (all of them, or a dirty bitmap), sends all-zero
 * pages as runs without bytes, coalesces adjacent pages into runs and writes raw runs straight from
 * the guest RAM views (zero-copy). The destination checks every run of a message against its RAM
 * before writing any byte of it.
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

/** True when the 4 KiB page at word `w` (of 1024 words) is all zero. */
function isZeroPage(words: Int32Array, w: number): boolean {
  const end = w + PAGE_SIZE / 4;
  for (let i = w; i < end; i += 4) {
    if ((words[i]! | words[i + 1]! | words[i + 2]! | words[i + 3]!) !== 0) return false;
  }
  return true;
}

function wordsOf(r: Region): Int32Array | undefined {
  const b = r.bytes;
  if (b.byteOffset % 4 !== 0 || b.byteLength % PAGE_SIZE !== 0) return undefined;
  return new Int32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

function isZeroPageBytes(b: Uint8Array, off: number): boolean {
  for (let i = off; i < off + PAGE_SIZE; i++) if (b[i] !== 0) return false;
  return true;
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
  #words: (Int32Array | undefined)[];
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
  /** During a full pass: the region's residency vector (a never-resident page is zero). */
  #resident: Uint8Array | undefined;
  #digest: MigrationDigest | undefined;

  constructor(
    writer: MessageWriter,
    memory: GuestMemory,
    counters: RamCounters,
    options: RamSenderOptions = {},
  ) {
    this.#writer = writer;
    this.#memory = memory;
    this.#counters = counters;
    this.#words = memory.regions.map(wordsOf);
    this.#limiter = options.limiter;
    this.#batchBytes = options.batchBytes ?? DEFAULT_BATCH_BYTES;
    this.#signal = options.signal;
    this.#residency = options.residency;
    this.#digest = options.digest;
  }

  /**
   * Sends every page of every region.
   * @returns bytes and pages sent and the time taken
   */
  sendAll(): Promise<PassResult> {
    return this.#pass_(true, async (ri, visit) => {
      const region = this.#memory.regions[ri]!;
      const pages = region.sizeBytes / PAGE_SIZE;
      this.#resident = this.#residency?.(region.gpa, pages);
      try {
        await visitRange(0, pages, visit);
      } finally {
        this.#resident = undefined;
      }
    });
  }

  /**
   * Sends the pages set in `bitmaps` (one per region).
   * @param bitmaps from `syncDirtyLog()`
   * @param throttle false for the final pass (the guest is paused: do not stretch the downtime)
   */
  sendDirty(bitmaps: readonly Uint32Array[], throttle = true): Promise<PassResult> {
    return this.#pass_(throttle, (ri, visit) => {
      const bm = bitmaps[ri];
      if (!bm) return Promise.resolve();
      const pages = this.#memory.regions[ri]!.sizeBytes / PAGE_SIZE;
      return visitBitmap(bm, pages, visit);
    });
  }

  async #pass_(
    throttle: boolean,
    walk: (ri: number, visit: (page: number) => Promise<void> | void) => Promise<void>,
  ): Promise<PassResult> {
    this.#throttle = throttle;
    this.#pass = { bytes: 0, pages: 0, elapsedMs: 0, sendMs: 0 };
    const t0 = performance.now();
    this.#limiter?.reset();
    for (let ri = 0; ri < this.#memory.regions.length; ri++) {
      await walk(ri, (page) => this.#add(ri, page));
    }
    await this.#flush();
    this.#pass.elapsedMs = performance.now() - t0;
    return this.#pass;
  }

  #add(ri: number, page: number): Promise<void> | void {
    const region = this.#memory.regions[ri]!;
    const words = this.#words[ri];
    const off = page * PAGE_SIZE;
    const res = this.#resident;
    const zero = (res !== undefined && (res[page]! & 1) === 0) ||
      (words ? isZeroPage(words, off >>> 2) : isZeroPageBytes(region.bytes, off));
    const gpa = region.gpa + off;
    // A message covers at most MAX_COVER_PAGES of guest RAM (zero or not), so the destination
    // works on one batch while the source scans the next instead of lagging behind at switchover.
    const full = this.#zeroPages + this.#rawPages >= MAX_COVER_PAGES ||
      (!zero && this.#rawBytes + PAGE_SIZE > this.#batchLimit());
    if (full) return this.#flush().then(() => this.#start(ri, zero, region, gpa, off));
    const last = this.#runs[this.#runs.length - 1];
    if (last && this.#lastRi === ri && last.zero === zero && last.gpa + last.pageCount * PAGE_SIZE === gpa) {
      last.pageCount++;
      this.#count(zero);
      if (!zero) {
        const i = this.#parts.length - 1;
        const start = this.#parts[i]!.byteOffset - region.bytes.byteOffset;
        this.#parts[i] = region.bytes.subarray(start, off + PAGE_SIZE);
      }
      return;
    }
    if (this.#runs.length >= MAX_RUNS_PER_MESSAGE) {
      return this.#flush().then(() => this.#start(ri, zero, region, gpa, off));
    }
    this.#start(ri, zero, region, gpa, off);
  }

  /** Raw bytes per message; under a bandwidth limit ~50 ms of sending, so throttling stays smooth. */
  #batchLimit(): number {
    const bps = this.#limiter?.bytesPerSec ?? 0;
    if (bps <= 0) return this.#batchBytes;
    return Math.min(this.#batchBytes, Math.max(PAGE_SIZE, Math.floor(bps / 20 / PAGE_SIZE) * PAGE_SIZE));
  }

  #start(ri: number, zero: boolean, region: Region, gpa: number, off: number): void {
    this.#lastRi = ri;
    this.#runs.push({ gpa, pageCount: 1, zero });
    if (!zero) this.#parts.push(region.bytes.subarray(off, off + PAGE_SIZE));
    this.#count(zero);
  }

  #count(zero: boolean): void {
    if (zero) this.#zeroPages++;
    else {
      this.#rawPages++;
      this.#rawBytes += PAGE_SIZE;
    }
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
    await this.#writer.send("ram", table, ...parts);
    // After the write: a page the guest changes meanwhile is dirty and is sent (and recorded) again.
    this.#digest?.recordRuns(runs);
    c.transferredBytes += bytes;
    this.#pass.bytes += bytes;
    this.#pass.pages += pages;
    if (this.#throttle && this.#limiter) await this.#limiter.consume(bytes, this.#signal);
    this.#pass.sendMs += performance.now() - t0;
  }
}

/** Pages scanned between yields to the event loop (QMP stays responsive while zero RAM is scanned). */
const YIELD_EVERY_PAGES = 16384;

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

async function visitRange(
  first: number,
  end: number,
  visit: (page: number) => Promise<void> | void,
): Promise<void> {
  for (let p = first; p < end; p++) {
    const r = visit(p);
    if (r) await r;
    if ((p & (YIELD_EVERY_PAGES - 1)) === YIELD_EVERY_PAGES - 1) await yieldToEventLoop();
  }
}

async function visitBitmap(
  bm: Uint32Array,
  pages: number,
  visit: (page: number) => Promise<void> | void,
): Promise<void> {
  const words = Math.min(bm.length, Math.ceil(pages / 32));
  // Yield after every YIELD_EVERY_PAGES pages *visited*: empty words cost nothing, and a final
  // pass with a few dirty pages must not pay a timer hop per 16 Ki pages of RAM (downtime).
  let sinceYield = 0;
  for (let w = 0; w < words; w++) {
    let x = bm[w]!;
    while (x !== 0) {
      const bit = 31 - Math.clz32(x & -x);
      x = (x & (x - 1)) >>> 0;
      const p = w * 32 + bit;
      if (p >= pages) break;
      const r = visit(p);
      if (r) await r;
      sinceYield++;
    }
    if (sinceYield >= YIELD_EVERY_PAGES) {
      sinceYield = 0;
      await yieldToEventLoop();
    }
  }
}

/**
 * Zeroes the pages of `[off, off+len)` that are not zero already. Reading an untouched page does
 * not allocate host memory; writing would, so a fresh destination stays as sparse as its source.
 */
function zeroFill(region: Region, off: number, len: number, resident?: Uint8Array): void {
  const words = wordsOf(region);
  for (let o = off; o < off + len; o += PAGE_SIZE) {
    // A page the host never backed reads as zero: no need to read it.
    if (resident !== undefined && (resident[(o - off) / PAGE_SIZE]! & 1) === 0) continue;
    const zero = words ? isZeroPage(words, o >>> 2) : isZeroPageBytes(region.bytes, o);
    if (!zero) region.bytes.fill(0, o, o + PAGE_SIZE);
  }
}

/** What one received RAM message held. */
export interface BatchResult {
  zeroPages: number;
  rawPages: number;
}

/**
 * Reads the payload of a `ram` message into guest RAM. The whole run table is validated against
 * `memory` (each run inside one region, lengths adding up to the message length) before any byte
 * is written; raw bytes are read straight into the region views; zero runs fill zeros.
 * @throws {ProtocolError} naming the run and address
 */
export async function receiveRamBatch(
  reader: MessageReader,
  header: MessageHeader,
  memory: GuestMemory,
  residency?: (gpa: number, pageCount: number) => Uint8Array | undefined,
  digest?: MigrationDigest,
): Promise<BatchResult> {
  if (header.length < RAM_PREFIX_BYTES + RUN_BYTES) {
    throw new ProtocolError(`Cannot decode RAM message: ${header.length} bytes is too short`);
  }
  const prefix = new Uint8Array(RAM_PREFIX_BYTES);
  await reader.readExact(prefix, "RAM run count");
  const count = decodeRunCount(prefix, header.length);
  const table = new Uint8Array(count * RUN_BYTES);
  await reader.readExact(table, "RAM run table");
  const runs = decodeRuns(table);
  const targets: { region: Region; off: number; len: number; zero: boolean }[] = [];
  let rawBytes = 0;
  let zeroPages = 0;
  let rawPages = 0;
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
    targets.push({ region, off: run.gpa - region.gpa, len, zero: run.zero });
    if (run.zero) zeroPages += run.pageCount;
    else {
      rawBytes += len;
      rawPages += run.pageCount;
    }
  }
  const expected = RAM_PREFIX_BYTES + count * RUN_BYTES + rawBytes;
  if (expected !== header.length) {
    throw new ProtocolError(
      `Cannot accept RAM message: length ${header.length} does not match its runs (${expected} bytes)`,
    );
  }
  for (const t of targets) {
    if (t.zero) zeroFill(t.region, t.off, t.len, residency?.(t.region.gpa + t.off, t.len / PAGE_SIZE));
    else await reader.readExact(t.region.bytes.subarray(t.off, t.off + t.len), "RAM pages");
  }
  digest?.recordRuns(runs);
  return { zeroPages, rawPages };
}
