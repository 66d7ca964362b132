/**
 * The source's post-copy phase (after `migrate-start-postcopy` switched over): the source is
 * paused, its RAM is final, and the pages the destination still lacks go out in the background,
 * in address order, while pages the destination faulted on jump the queue (QEMU's page requests
 * on the return path; here the requests arrive on the same connection). Every page is sent
 * exactly once; `postcopyEnd` follows the last one.
 * @module
 */
import { type GuestMemory, PAGE_SIZE } from "../memory/guest_memory.ts";
import { encodeRunTable, HEADER_BYTES, type MessageWriter, ProtocolError, type RamRun } from "./stream.ts";
import type { RamCounters } from "./stats.ts";
import type { RateLimiter } from "./ram.ts";
import { countDirtyPages } from "./ram.ts";

/** Pages per background message: small, so a requested page waits behind little. */
const BACKGROUND_PAGES = 32;

/** Options of {@linkcode PostcopySender}. */
export interface PostcopySenderOptions {
  /** `max-bandwidth` for the background stream (requested pages are not throttled). */
  limiter?: RateLimiter;
  /** Stops the loop between messages. */
  signal?: AbortSignal;
}

/** Sends the pages still needed, requested ones first. */
export class PostcopySender {
  #writer: MessageWriter;
  #memory: GuestMemory;
  #needed: Uint32Array[];
  #counters: RamCounters;
  #options: PostcopySenderOptions;
  #left: number;
  #requests: { ri: number; page: number; count: number }[] = [];
  /** Ends the background stream's throttle sleep when a request arrives. */
  #wake: AbortController | undefined;
  /** Background cursor: region and page. */
  #ri = 0;
  #page = 0;

  /**
   * @param needed per region, the pages the destination lacks (taken over: bits are cleared as
   *   pages go out)
   */
  constructor(
    writer: MessageWriter,
    memory: GuestMemory,
    needed: Uint32Array[],
    counters: RamCounters,
    options: PostcopySenderOptions = {},
  ) {
    this.#writer = writer;
    this.#memory = memory;
    this.#needed = needed;
    this.#counters = counters;
    this.#options = options;
    this.#left = countDirtyPages(needed);
    counters.remainingBytes = this.#left * PAGE_SIZE;
  }

  /** Pages not sent yet. */
  get pagesLeft(): number {
    return this.#left;
  }

  /**
   * A destination page request: those pages go out next (pages already sent are skipped).
   * @throws {ProtocolError} for a range outside guest RAM
   */
  request(gpa: number, pageCount: number): void {
    const region = this.#memory.regionOf(gpa, pageCount * PAGE_SIZE);
    if (!region) {
      throw new ProtocolError(`Cannot serve a page request outside guest RAM: gpa 0x${gpa.toString(16)}`);
    }
    this.#counters.postcopyRequests++;
    const ri = this.#memory.regions.indexOf(region);
    this.#requests.push({ ri, page: (gpa - region.gpa) / PAGE_SIZE, count: pageCount });
    this.#wake?.abort();
  }

  /** Sends until every needed page is out, then `postcopyEnd`. */
  async run(): Promise<void> {
    while (this.#left > 0) {
      if (this.#options.signal?.aborted) throw this.#options.signal.reason;
      const req = this.#requests.shift();
      if (req) {
        const pages = this.#take(req.ri, req.page, req.count);
        if (pages.length === 0) continue; // sent meanwhile
        await this.#sendPages(req.ri, pages, false);
        // The background stream goes on from there (QEMU does the same): the guest's next
        // accesses are likely nearby, and the pages behind are picked up after the wrap.
        this.#ri = req.ri;
        this.#page = req.page + req.count;
        continue;
      }
      const bg = this.#nextBackground();
      if (!bg) throw new Error(`Cannot find the ${this.#left} pages still to send (internal error)`);
      await this.#sendPages(bg.ri, bg.pages, true);
    }
    await this.#writer.send("postcopyEnd");
  }

  /** The needed pages among `[page, page + count)` of region `ri`; their bits are cleared. */
  #take(ri: number, page: number, count: number): number[] {
    const bm = this.#needed[ri]!;
    const out: number[] = [];
    for (let p = page; p < page + count; p++) {
      const w = p >>> 5, bit = 1 << (p & 31);
      if (w < bm.length && (bm[w]! & bit) !== 0) {
        bm[w] = (bm[w]! & ~bit) >>> 0;
        out.push(p);
      }
    }
    return out;
  }

  /** Up to {@linkcode BACKGROUND_PAGES} needed pages from the cursor on, wrapping once. */
  #nextBackground(): { ri: number; pages: number[] } | undefined {
    const found = this.#scanFromCursor();
    if (found) return found;
    this.#ri = 0;
    this.#page = 0;
    return this.#scanFromCursor();
  }

  #scanFromCursor(): { ri: number; pages: number[] } | undefined {
    while (this.#ri < this.#needed.length) {
      const bm = this.#needed[this.#ri]!;
      const ri = this.#ri;
      const pages: number[] = [];
      let w = this.#page >>> 5;
      let low = this.#page & 31; // bits below it in word w are behind the cursor
      while (w < bm.length && pages.length < BACKGROUND_PAGES) {
        const ahead = low === 0 ? 0xffffffff : (~((1 << low) - 1)) >>> 0;
        let x = (bm[w]! & ahead) >>> 0;
        while (x !== 0 && pages.length < BACKGROUND_PAGES) {
          const b = 31 - Math.clz32(x & -x);
          x = (x & ~(1 << b)) >>> 0;
          bm[w] = (bm[w]! & ~(1 << b)) >>> 0;
          pages.push(w * 32 + b);
        }
        if (x !== 0) break; // full: the cursor stays on this word
        w++;
        low = 0;
      }
      this.#page = pages.length > 0 ? pages[pages.length - 1]! + 1 : w * 32;
      if (pages.length > 0) return { ri, pages };
      this.#ri++;
      this.#page = 0;
    }
    return undefined;
  }

  /** One `ram` message with `pages` (sorted) of region `ri`, as raw runs from guest RAM. */
  async #sendPages(ri: number, pages: number[], throttle: boolean): Promise<void> {
    if (pages.length === 0) return;
    const region = this.#memory.regions[ri]!;
    const runs: RamRun[] = [];
    const parts: Uint8Array[] = [];
    let start = pages[0]!, len = 1;
    const flush = () => {
      runs.push({ gpa: region.gpa + start * PAGE_SIZE, pageCount: len, zero: false });
      parts.push(region.bytes.subarray(start * PAGE_SIZE, (start + len) * PAGE_SIZE));
    };
    for (let i = 1; i < pages.length; i++) {
      if (pages[i] === start + len) len++;
      else {
        flush();
        start = pages[i]!;
        len = 1;
      }
    }
    flush();
    const table = encodeRunTable(runs);
    await this.#writer.send("ram", table, ...parts);
    const bytes = HEADER_BYTES + table.length + pages.length * PAGE_SIZE;
    const c = this.#counters;
    this.#left -= pages.length;
    c.normalPages += pages.length;
    c.transferredBytes += bytes;
    c.remainingBytes = this.#left * PAGE_SIZE;
    if (!throttle || !this.#options.limiter) return;
    // A requested page must not wait out the background stream's throttle sleep.
    const wake = new AbortController();
    this.#wake = wake;
    const outer = this.#options.signal;
    try {
      await this.#options.limiter.consume(bytes, outer ? AbortSignal.any([outer, wake.signal]) : wake.signal);
    } catch (e) {
      if (!wake.signal.aborted || outer?.aborted) throw e;
    } finally {
      this.#wake = undefined;
    }
  }
}

/**
 * The pages a pass that stopped early at `stoppedAt` did not send, as per-region bitmaps: the pages
 * set in `bitmaps` (a dirty pass) or every page (the full pass; only those the host ever backed
 * when `residency` knows: a page never backed is zero, and the destination maps a missing page it
 * was not told about as zero) from `stoppedAt` on.
 */
export function unsentPages(
  memory: GuestMemory,
  stoppedAt: { region: number; page: number },
  bitmaps: readonly Uint32Array[] | null,
  residency?: (gpa: number, pageCount: number) => Uint8Array | undefined,
): Uint32Array[] {
  return memory.regions.map((r, ri) => {
    const pages = r.sizeBytes / PAGE_SIZE;
    const out = new Uint32Array(Math.ceil(pages / 32));
    if (ri < stoppedAt.region) return out;
    const from = ri === stoppedAt.region ? stoppedAt.page : 0;
    const src = bitmaps?.[ri];
    const resident = bitmaps ? undefined : residency?.(r.gpa + from * PAGE_SIZE, pages - from);
    for (let p = from; p < pages; p++) {
      const set = src
        ? ((src[p >>> 5]! >>> (p & 31)) & 1) === 1
        : resident
        ? (resident[p - from]! & 1) === 1
        : true;
      if (set) out[p >>> 5] = (out[p >>> 5]! | (1 << (p & 31))) >>> 0;
    }
    return out;
  });
}
