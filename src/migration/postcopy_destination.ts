/**
 * The destination's post-copy phase. At the switch the source names the pages it still holds
 * (`postcopyDirty`); this side drops its stale copies of them, registers guest RAM with
 * userfaultfd (MISSING mode), and the guest runs at once. Then two loops share the connection:
 *
 * - **faults**: a touch of a missing page blocks the toucher (vCPU, KVM itself, a device thread);
 *   a page the source still holds is requested (`pageRequest`), a page the source never had
 *   (never written on either side) is mapped as zero at once;
 * - **landing**: the source's `ram` messages (background stream and requested pages) are read
 *   into a staging buffer and placed with UFFDIO_COPY, which also wakes the waiters. Guest RAM is
 *   never written through a view here: a view write to a missing page would fault on this very
 *   thread, the one that serves faults.
 *
 * After `postcopyEnd` and the last page, the destination answers `postcopyDone` and unregisters.
 *
 * If the connection breaks first, the guest cannot go on: the pages it lacks exist only on the
 * source. The descriptor stays open (closing it would let the kernel map missing pages as zeros:
 * the guest would run on with silently wrong memory), the vCPUs are paused, and the caller moves
 * the status to `postcopy-paused` (QEMU's state), naming the cause and the pages missing.
 * @module
 */
import { logger } from "../util/log.ts";
import { type GuestMemory, PAGE_SIZE } from "../memory/guest_memory.ts";
import { discardPages, type PageFault, Userfault } from "../memory/userfault.ts";
import { countDirtyPages, readRunTable } from "./ram.ts";
import {
  decodeReason,
  MAX_REASON_BYTES,
  messageBytes,
  type MessageReader,
  type MessageWriter,
  ProtocolError,
} from "./stream.ts";
import type { RamCounters } from "./stats.ts";
import { encodePageRequest } from "./postcopy_wire.ts";

const log = logger("migration:postcopy");

/** Pages asked for per fault: the faulting page and a few after it (sequential guests). */
const REQUEST_PAGES = 1;

/** Post-copy statistics for `query-migrate`. */
export interface PostcopyStats {
  /** Faults that had to wait for the source. */
  remoteFaults: number;
  /** Sum of their waits, nanoseconds. */
  latencySumNs: number;
  /** Per vCPU, milliseconds blocked on remote pages. */
  vcpuBlockMs: number[];
  /** Milliseconds during which every vCPU was blocked at once. */
  allBlockedMs: number;
}

/** Options of {@linkcode PostcopyDestination}. */
export interface PostcopyDestinationOptions {
  /** OS thread ids of the vCPUs, in vCPU order (for the blocktimes). */
  vcpuThreadIds?: readonly number[];
}

/** The destination side of post-copy over one connection. */
export class PostcopyDestination {
  #memory: GuestMemory;
  #reader: MessageReader;
  #writer: MessageWriter;
  #counters: RamCounters;
  #needed: Uint32Array[];
  #received: Uint32Array[];
  #requested: Uint32Array[];
  #left: number;
  #uf: Userfault | undefined;
  #registered = false;
  #done = false;
  #failed: Error | undefined;
  /** Per waiting page (key `ri * 2^32 + page`): fault times and the faulting threads. */
  #waiting = new Map<number, { t0: number; tids: number[] }>();
  #vcpuOf = new Map<number, number>();
  #blockedSince: (number | undefined)[];
  #allSince: number | undefined;
  #stats: PostcopyStats;
  #staging = new Uint8Array(0);

  /**
   * @param needed per region, the pages only the source holds (from `postcopyDirty`)
   */
  constructor(
    memory: GuestMemory,
    reader: MessageReader,
    writer: MessageWriter,
    needed: Uint32Array[],
    counters: RamCounters,
    options: PostcopyDestinationOptions = {},
  ) {
    this.#memory = memory;
    this.#reader = reader;
    this.#writer = writer;
    this.#counters = counters;
    this.#needed = needed;
    this.#received = needed.map((b) => new Uint32Array(b.length));
    this.#requested = needed.map((b) => new Uint32Array(b.length));
    this.#left = countDirtyPages(needed);
    const tids = options.vcpuThreadIds ?? [];
    tids.forEach((t, i) => this.#vcpuOf.set(t, i));
    this.#blockedSince = tids.map(() => undefined);
    this.#stats = { remoteFaults: 0, latencySumNs: 0, vcpuBlockMs: tids.map(() => 0), allBlockedMs: 0 };
    counters.remainingBytes = this.#left * PAGE_SIZE;
  }

  /** Pages the destination still lacks. */
  get pagesLeft(): number {
    return this.#left;
  }

  /** Statistics so far (blocktimes include waits still in progress). */
  stats(): PostcopyStats {
    const now = performance.now();
    const s = { ...this.#stats, vcpuBlockMs: [...this.#stats.vcpuBlockMs] };
    this.#blockedSince.forEach((t, i) => {
      if (t !== undefined) s.vcpuBlockMs[i]! += now - t;
    });
    if (this.#allSince !== undefined) s.allBlockedMs += now - this.#allSince;
    return s;
  }

  /**
   * Before the guest runs here: drops the stale copies of the needed pages and registers every
   * RAM region with userfaultfd.
   * @throws {ErrnoError} when the host refuses userfaultfd
   */
  prepare(): void {
    this.#uf = Userfault.open({ threadIds: true });
    this.#memory.regions.forEach((r, ri) => {
      const bm = this.#needed[ri]!;
      // Discard runs of needed pages.
      const pages = r.sizeBytes / PAGE_SIZE;
      let p = 0;
      while (p < pages) {
        if (!testBit(bm, p)) {
          p++;
          continue;
        }
        let q = p + 1;
        while (q < pages && testBit(bm, q)) q++;
        discardPages(r.hostAddr + BigInt(p * PAGE_SIZE), (q - p) * PAGE_SIZE);
        p = q;
      }
      this.#uf!.register(r.hostAddr, r.sizeBytes);
    });
    this.#registered = true;
    log.info(
      "Post-copy: %d pages to fetch; guest RAM registered with userfaultfd %d",
      this.#left,
      this.#uf.fd,
    );
  }

  /**
   * Serves faults and lands pages until every needed page arrived and the source sent
   * `postcopyEnd`; then sends `postcopyDone` and unregisters. Rejects on any connection or
   * protocol failure; the registration then stays (see the module doc).
   */
  async run(): Promise<void> {
    const faults = this.#faultLoop();
    try {
      await this.#landLoop();
    } catch (e) {
      this.#failed = e as Error;
      throw e;
    } finally {
      this.#done = true;
      await faults.catch(() => {});
    }
    await this.#writer.send("postcopyDone");
    this.#unregister();
  }

  /** After a failure: the vCPUs stay blocked or paused; nothing is unregistered. */
  get failed(): Error | undefined {
    return this.#failed;
  }

  #unregister(): void {
    if (!this.#registered || !this.#uf) return;
    for (const r of this.#memory.regions) this.#uf.unregister(r.hostAddr, r.sizeBytes);
    this.#registered = false;
    this.#uf.close();
    this.#uf = undefined;
  }

  async #faultLoop(): Promise<void> {
    const uf = this.#uf!;
    while (!this.#done) {
      if (!(await uf.wait(50))) continue;
      if (this.#done) break;
      for (const f of uf.readFaults()) {
        try {
          this.#onFault(f);
        } catch (e) {
          if (!this.#done) log.error("Post-copy: cannot serve a fault: %s", (e as Error).message);
        }
      }
    }
  }

  #onFault(f: PageFault): void {
    const uf = this.#uf!;
    const addr = f.address & ~BigInt(PAGE_SIZE - 1);
    const ri = this.#memory.regions.findIndex((r) =>
      addr >= r.hostAddr && addr < r.hostAddr + BigInt(r.sizeBytes)
    );
    if (ri < 0) {
      log.warn("Post-copy: fault outside guest RAM at 0x%s", addr.toString(16));
      return;
    }
    const r = this.#memory.regions[ri]!;
    const page = Number(addr - r.hostAddr) / PAGE_SIZE;
    if (!testBit(this.#needed[ri]!, page)) {
      // Never written on either side: zero, at once.
      if (!uf.zero(addr, PAGE_SIZE)) uf.wake(addr, PAGE_SIZE);
      return;
    }
    if (testBit(this.#received[ri]!, page)) {
      uf.wake(addr, PAGE_SIZE); // landed between the fault and now
      return;
    }
    const key = ri * 2 ** 32 + page;
    const now = performance.now();
    const w = this.#waiting.get(key);
    if (w) w.tids.push(f.tid);
    else this.#waiting.set(key, { t0: now, tids: [f.tid] });
    this.#block(f.tid, now);
    if (testBit(this.#requested[ri]!, page)) return;
    setBit(this.#requested[ri]!, page);
    const pages = Math.min(REQUEST_PAGES, r.sizeBytes / PAGE_SIZE - page);
    this.#counters.postcopyRequests++;
    this.#writer.send("pageRequest", encodePageRequest(r.gpa + page * PAGE_SIZE, pages)).catch(() => {
      // The landing loop sees the broken connection and reports it.
    });
  }

  #block(tid: number, now: number): void {
    const i = this.#vcpuOf.get(tid);
    if (i === undefined || this.#blockedSince[i] !== undefined) return;
    this.#blockedSince[i] = now;
    if (this.#blockedSince.every((t) => t !== undefined)) this.#allSince = now;
  }

  #unblock(tid: number, now: number): void {
    const i = this.#vcpuOf.get(tid);
    if (i === undefined) return;
    const since = this.#blockedSince[i];
    if (since === undefined) return;
    if (this.#allSince !== undefined) {
      this.#stats.allBlockedMs += now - this.#allSince;
      this.#allSince = undefined;
    }
    this.#stats.vcpuBlockMs[i]! += now - since;
    this.#blockedSince[i] = undefined;
  }

  async #landLoop(): Promise<void> {
    const c = this.#counters;
    let ended = false;
    while (!ended || this.#left > 0) {
      const h = await this.#reader.readHeader();
      if (!h) {
        throw new ProtocolError(`the source closed the connection with ${this.#left} pages still there`);
      }
      c.transferredBytes += messageBytes(h.length);
      if (h.kind === "cancel") {
        const reason = decodeReason(await this.#reader.readPayload(h, MAX_REASON_BYTES));
        throw new Error(`the source gave up: ${reason}`);
      }
      if (h.kind === "postcopyEnd") {
        if (this.#left > 0) {
          throw new ProtocolError(`the source ended post-copy with ${this.#left} pages unsent`);
        }
        ended = true;
        continue;
      }
      if (h.kind !== "ram") throw new ProtocolError(`unexpected '${h.kind}' message during post-copy`);
      await this.#landRam(h);
    }
  }

  async #landRam(h: Parameters<typeof readRunTable>[1]): Promise<void> {
    const uf = this.#uf!;
    const runs = await readRunTable(this.#reader, h, this.#memory);
    // All page bytes first: the message's CRC32C is checked when its last byte is read, and the
    // running guest must never see a page of a message that fails it.
    let raw = 0;
    for (const run of runs) if (!run.zero) raw += run.pageCount * PAGE_SIZE;
    if (this.#staging.length < raw) this.#staging = new Uint8Array(Math.max(raw, 1 << 20));
    if (raw > 0) await this.#reader.readExact(this.#staging.subarray(0, raw), "post-copy RAM pages");
    let at = 0;
    for (const run of runs) {
      const ri = this.#memory.regions.indexOf(run.region);
      const first = run.off / PAGE_SIZE;
      let bytes: Uint8Array | undefined;
      if (!run.zero) {
        const len = run.pageCount * PAGE_SIZE;
        bytes = this.#staging.subarray(at, at + len);
        at += len;
      }
      for (let i = 0; i < run.pageCount; i++) {
        const page = first + i;
        if (!testBit(this.#needed[ri]!, page) || testBit(this.#received[ri]!, page)) {
          throw new ProtocolError(
            `the source sent page 0x${(run.gpa + i * PAGE_SIZE).toString(16)} that is not missing here`,
          );
        }
        const addr = run.region.hostAddr + BigInt(run.off + i * PAGE_SIZE);
        if (bytes) uf.copy(addr, bytes.subarray(i * PAGE_SIZE, (i + 1) * PAGE_SIZE));
        else if (!uf.zero(addr, PAGE_SIZE)) uf.wake(addr, PAGE_SIZE);
        setBit(this.#received[ri]!, page);
        this.#left--;
        if (bytes) this.#counters.normalPages++;
        else this.#counters.zeroPages++;
        this.#landed(ri, page);
      }
    }
    this.#counters.remainingBytes = this.#left * PAGE_SIZE;
  }

  #landed(ri: number, page: number): void {
    const key = ri * 2 ** 32 + page;
    const w = this.#waiting.get(key);
    if (!w) return;
    this.#waiting.delete(key);
    const now = performance.now();
    this.#stats.remoteFaults++;
    this.#stats.latencySumNs += (now - w.t0) * 1e6;
    for (const t of w.tids) this.#unblock(t, now);
  }
}

function testBit(bm: Uint32Array, p: number): boolean {
  return ((bm[p >>> 5]! >>> (p & 31)) & 1) === 1;
}

function setBit(bm: Uint32Array, p: number): void {
  bm[p >>> 5] = (bm[p >>> 5]! | (1 << (p & 31))) >>> 0;
}
