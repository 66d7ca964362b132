/**
 * virtio-blk's asynchronous data path in the I/O Worker: request chains become io_uring
 * operations (uring.ts) straight between the image and guest RAM, many in flight at once,
 * completed in whatever order the kernel finishes them.
 *
 * - `VIRTIO_BLK_T_IN` / `OUT`: one `IORING_OP_READ` / `WRITE` per data segment. In write-through
 *   mode (`writeback` = 0) the writes are linked (`IOSQE_IO_LINK`) to an fdatasync, so the
 *   status is written only once the data is stable, as on the synchronous path.
 * - `VIRTIO_BLK_T_FLUSH`: `IORING_OP_FSYNC` with `IORING_FSYNC_DATASYNC`; it covers the writes
 *   completed before it (virtio 1.x §5.2.6.1: the driver waits for the writes it wants flushed).
 * - Everything else — GET_ID, read-only refusals, malformed or out-of-range requests, unknown
 *   types, and `direct=on` buffers O_DIRECT cannot take (served through the aligned bounce
 *   buffer) — goes to {@linkcode BlockRequestHandler} synchronously, so its answers and warnings
 *   are exactly those of the synchronous path.
 * - Per operation: a short transfer is finished with pread/pwrite, O_DIRECT's EINVAL is retried
 *   on the buffered fd (as block.ts does), an operation canceled by a broken link is redone.
 *
 * - Merging (request_merge.ts, QEMU's rule): the plain reads, or write-back writes, of one pass
 *   are staged and, sorted by sector, each run of adjacent requests becomes one `READV` / `WRITEV`.
 * - Polling: after a notified pass for more chains while completions are reaped
 *   ({@linkcode BLK_POLL_US}); after completions for the chains refilled in their place
 *   ({@linkcode BLK_REFILL_POLL_US}).
 *
 * No allocation per request on the fast path: request and operation state live in typed arrays
 * indexed by slot, the CQE's user data is the operation index, and completions are handed to the
 * transport in one batch per reap. {@linkcode drain} waits for every request in flight: the I/O
 * Worker calls it before it acknowledges a pause, so migration saves device state only when no
 * request is outstanding. While requests are in flight the server holds the transport busy
 * (`beginWork`), so a driver reset completes only after the last of them, and drops their
 * completions.
 * @module
 */
import type { GuestMemory } from "../../../memory/guest_memory.ts";
import { fsyncFd } from "../../../sys/fd.ts";
import { logger } from "../../../util/log.ts";
import type { DescriptorChain } from "../queue.ts";
import { HostMemory } from "../host_memory.ts";
import { CHAIN_DEFERRED, type VirtioPciTransport } from "../pci_transport.ts";
import {
  BLK_CFG_WRITEBACK,
  BLK_HEADER_BYTES,
  BLK_QUEUE_SIZE,
  type BlockBackendPlan,
  BlockRequestHandler,
  transferAll,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from "./block.ts";
import { SECTOR_BYTES } from "./image.ts";
import {
  IORING_FSYNC_DATASYNC,
  IORING_OP_FSYNC,
  IORING_OP_READ,
  IORING_OP_READV,
  IORING_OP_WRITE,
  IORING_OP_WRITEV,
  IOSQE_IO_LINK,
  Uring,
} from "./uring.ts";
import { AdaptivePoll } from "../adaptive_poll.ts";
import { MERGE_MAX_PARTS, MERGE_MAX_REQS, MergeGroups, MergeStage } from "./request_merge.ts";

const EINVAL = 22, ECANCELED = 125;
const TWO32 = 4294967296;
const K_READ = 0, K_WRITE = 1, K_FSYNC = 2;
/**
 * After a queue pass ran dry, keep the driver's notifications off and poll up to this long for new
 * requests while reaping completions (QEMU's iothreads poll up to 32 µs the same way): a driver
 * that refills as requests complete then needs neither a notify exit nor an epoll wake per refill.
 * The time polled adapts as QEMU's `aio_poll` does (adaptive_poll.ts), so an O_DIRECT disk slower
 * than the bound costs no spinning.
 */
export const BLK_POLL_US = 32;
/**
 * After completions, poll up to this long for the chains the driver refills them with, the
 * driver's notifications off from before the completions are published: a driver that answers
 * each completion with a new request at once (depth 1) then needs no notify exit and the I/O
 * Worker no epoll wake-up per request. The time adapts by its own hits and misses
 * (`AdaptivePoll.hit`/`miss`), so a driver slower than the bound soon costs no spinning.
 */
export const BLK_REFILL_POLL_US = 32;
/**
 * Completions of one reap are published to the driver this many at a time (then the rest): a driver
 * that polls starts refilling the first ones while the others are still being put on the used ring,
 * so its refills, and the merged operations made of them, come in smaller batches that overlap
 * the host's work (QEMU publishes each completion). Writeback 4K×32: +15% write, +20% read IOPS
 * at the same CPU per request against publishing once per reap (docs/io-performance.md).
 */
export const BLK_PUBLISH_EVERY = 8;
/** SQ entries of a drive's ring (completion queue: twice that). */
export const BLK_RING_ENTRIES = 256;

/** The transport calls the server needs. */
export type BlockServerTransport = Pick<
  VirtioPciTransport,
  "process" | "complete" | "readDeviceConfig" | "resetCount" | "beginWork" | "endWork"
>;

/** Options for {@linkcode BlockUringServer}. */
export interface BlockUringServerOptions {
  plan: BlockBackendPlan;
  memory: GuestMemory;
  transport: BlockServerTransport;
  /** The ring; made here with {@linkcode BLK_RING_ENTRIES} when absent (throws if io_uring is unavailable). */
  ring?: Uring;
  /** See {@linkcode BLK_POLL_US}. */
  pollUs?: number;
  /** See {@linkcode BLK_REFILL_POLL_US} (0: off). @default pollUs when given, else BLK_REFILL_POLL_US */
  refillPollUs?: number;
  /** Merge adjacent reads or writes of a pass (request_merge.ts). @default true */
  merge?: boolean;
}

/** Serves queue 0 of a drive through io_uring; see the module doc. */
export class BlockUringServer {
  readonly ring: Uring;
  readonly #p: BlockBackendPlan;
  readonly #mem: GuestMemory;
  readonly #t: BlockServerTransport;
  readonly #sync: BlockRequestHandler;
  readonly #log;
  readonly #host: HostMemory;
  // Requests (slots).
  readonly #slotHead = new Uint32Array(BLK_QUEUE_SIZE);
  readonly #slotUsed = new Uint32Array(BLK_QUEUE_SIZE);
  readonly #slotPending = new Int32Array(BLK_QUEUE_SIZE);
  readonly #slotStatus = new Uint8Array(BLK_QUEUE_SIZE);
  readonly #slotStatusGpa = new Float64Array(BLK_QUEUE_SIZE);
  readonly #slotReset = new Int32Array(BLK_QUEUE_SIZE);
  readonly #slotSector = new Float64Array(BLK_QUEUE_SIZE);
  readonly #freeSlots = new Int32Array(BLK_QUEUE_SIZE);
  #nFreeSlots = BLK_QUEUE_SIZE;
  // Operations (one CQE each).
  readonly #opSlot: Int32Array;
  readonly #opKind: Uint8Array;
  readonly #opFd: Int32Array;
  readonly #opGpa: Float64Array;
  readonly #opLen: Uint32Array;
  readonly #opOff: Float64Array;
  readonly #freeOps: Int32Array;
  #nFreeOps: number;
  /** The merged group an operation serves, or -1. */
  readonly #opGroup: Int32Array;
  readonly #merge: boolean;
  readonly #stage = new MergeStage();
  readonly #groups = new MergeGroups();
  #operations = 0;
  // Completions of one reap, as (head, len) pairs.
  readonly #pairs = new Uint32Array(2 * BLK_QUEUE_SIZE);
  #nPairs = 0;
  #writeback = true;
  #stalled = false;
  /** This server holds the transport busy (requests in flight). */
  #held = false;
  readonly #take = (c: DescriptorChain): number | undefined => this.#takeChain(c);
  readonly #onCqe = (op: number, res: number): void => this.#complete(op, res);
  readonly #poll: AdaptivePoll;
  /** The poll after a completion pass (BLK_REFILL_POLL_US). */
  readonly #refill: AdaptivePoll;
  /** Chains taken so far (tells whether a refill pass found any). */
  #taken = 0;
  /** The poll time of the pass under way: the refill poll's until it takes a chain, then #poll's. */
  #passUs = 0;
  /** The last pass ran out of budget with chains left (its notifications stay off): serve the queue next. */
  #more = false;
  readonly #passPoll = (): number => this.#passUs;
  /** While the queue pass polls: submit what was taken, reap what completed. */
  readonly #pollHook = (): boolean => {
    this.#flushStage();
    if (this.ring.unsubmitted > 0) this.ring.submit();
    if (this.inFlight === 0) return false;
    return this.#reap() > 0;
  };

  constructor(options: BlockUringServerOptions) {
    this.#p = options.plan;
    this.#mem = options.memory;
    this.#t = options.transport;
    this.#log = logger(options.plan.deviceId);
    this.#sync = new BlockRequestHandler({ plan: this.#p, memory: this.#mem, transport: this.#t });
    this.#host = new HostMemory(this.#mem);
    this.ring = options.ring ?? new Uring(BLK_RING_ENTRIES);
    this.#poll = new AdaptivePoll(options.pollUs ?? BLK_POLL_US);
    this.#refill = new AdaptivePoll(options.refillPollUs ?? options.pollUs ?? BLK_REFILL_POLL_US);
    const ops = this.ring.cqEntries;
    this.#opSlot = new Int32Array(ops);
    this.#opKind = new Uint8Array(ops);
    this.#opFd = new Int32Array(ops);
    this.#opGpa = new Float64Array(ops);
    this.#opLen = new Uint32Array(ops);
    this.#opOff = new Float64Array(ops);
    this.#freeOps = new Int32Array(ops);
    this.#nFreeOps = ops;
    this.#opGroup = new Int32Array(ops).fill(-1);
    this.#merge = options.merge ?? true;
    for (let i = 0; i < ops; i++) this.#freeOps[i] = ops - 1 - i;
    for (let i = 0; i < BLK_QUEUE_SIZE; i++) this.#freeSlots[i] = BLK_QUEUE_SIZE - 1 - i;
  }

  /** io_uring operations started so far (a merged run of requests is one). */
  get operations(): number {
    return this.#operations;
  }

  /** Requests submitted and not yet completed. */
  get inFlight(): number {
    return BLK_QUEUE_SIZE - this.#nFreeSlots;
  }

  /** The queue was notified: takes every available chain, submits, reaps what is done already. */
  work(): "idle" | "more" {
    this.#poll.wake();
    this.#refill.wake();
    const r = this.submitAvailable();
    this.#reap();
    return this.#again(r);
  }

  #again(r: "idle" | "more"): "idle" | "more" {
    return r === "more" || (this.#stalled && this.#nFreeSlots > 0) ? "more" : "idle";
  }

  /** Takes the available chains (as far as slots allow) and submits them, without reaping. */
  submitAvailable(): "idle" | "more" {
    const r = this.#pass(this.#poll.us);
    this.#poll.idle();
    return r;
  }

  #pass(pollUs: number): "idle" | "more" {
    this.#writeback = this.#t.readDeviceConfig(BLK_CFG_WRITEBACK, 1)[0] !== 0;
    this.#stalled = false;
    this.#passUs = pollUs;
    const r = this.#t.process(0, this.#take, BLK_QUEUE_SIZE, this.#passPoll, this.#pollHook);
    this.#more = r === "more";
    this.#flushStage();
    if (this.ring.unsubmitted > 0) this.ring.submit();
    return r;
  }

  /**
   * The ring fd is readable: completes what finished; serves the queue again if it was stalled,
   * or polls a while for the chains the driver refills the completed ones with
   * ({@linkcode BLK_REFILL_POLL_US}).
   */
  completions(): "idle" | "more" {
    this.#poll.wake();
    this.#refill.wake();
    // A refill pass that ran out of budget left chains with the driver's notifications off: the
    // loop calls this again ("more"), and the queue is served as if notified.
    if (this.#more) return this.work();
    if (!this.#stalled && this.#refill.us > 0 && this.ring.completed > 0) {
      // The pass turns the driver's notifications off, then its poll reaps (#pollHook), so the
      // driver sees the completions only once it need not notify for the chains it refills.
      const taken = this.#taken;
      const r = this.#pass(this.#refill.us);
      this.#reap(); // in case the pass did not get to poll (a reset pending, the queue disabled)
      if (this.#taken !== taken) {
        this.#refill.hit();
        this.#poll.idle(); // what comes next is their completion, as after a notified pass
      } else {
        this.#refill.miss();
        if (this.#refill.us === 0) this.#refill.idle(); // the next notification may regrow it
      }
      return this.#again(r);
    }
    const done = this.#reap();
    if (this.#stalled) return this.work();
    if (done > 0) this.#refill.idle();
    else this.#poll.idle();
    return "idle";
  }

  /**
   * Waits until no request is in flight (before a pause is acknowledged, and at close).
   * @returns how many requests were in flight
   */
  drain(): number {
    const n = this.inFlight;
    this.#flushStage();
    while (this.inFlight > 0) {
      this.ring.submit(1);
      this.#reap();
    }
    return n;
  }

  /** Drains, then frees the ring and the bounce buffer. */
  close(): void {
    try {
      this.drain();
    } finally {
      this.ring.close();
      this.#groups.close();
      this.#sync.close();
    }
  }

  #reap(): number {
    this.#nPairs = 0;
    const n = this.ring.reap(this.#onCqe);
    if (this.#nPairs > 0) this.#t.complete(0, this.#pairs, this.#nPairs, BLK_PUBLISH_EVERY);
    this.#nPairs = 0;
    if (this.#held && this.inFlight === 0) {
      this.#held = false;
      this.#t.endWork();
    }
    return n;
  }

  /** Decides the path of one chain; see the module doc. */
  #takeChain(chain: DescriptorChain): number | undefined {
    this.#taken++;
    this.#passUs = this.#poll.us;
    const seg0 = chain.segments[0];
    if (
      chain.readableBytes < BLK_HEADER_BYTES || chain.writableBytes < 1 || !seg0 || seg0.writable ||
      seg0.len < BLK_HEADER_BYTES
    ) return this.#syncHandle(chain);
    const host = this.#host;
    const type = host.u32(seg0.gpa);
    const sector = host.u32(seg0.gpa + 8) + host.u32(seg0.gpa + 12) * TWO32;
    const p = this.#p;
    let len: number, kind: number;
    if (type === VIRTIO_BLK_T_IN) {
      len = chain.writableBytes - 1;
      kind = K_READ;
    } else if (type === VIRTIO_BLK_T_OUT && !p.readonly) {
      len = chain.readableBytes - BLK_HEADER_BYTES;
      kind = K_WRITE;
    } else if (type === VIRTIO_BLK_T_FLUSH && !p.readonly) {
      len = 0;
      kind = K_FSYNC;
    } else return this.#syncHandle(chain);
    if (
      kind !== K_FSYNC &&
      (len % SECTOR_BYTES !== 0 || !Number.isSafeInteger(sector) ||
        sector + len / SECTOR_BYTES > p.capacitySectors)
    ) return this.#syncHandle(chain); // it answers IOERR with the warning
    // Count the operations and check O_DIRECT alignment.
    const segs = chain.segments;
    let ops = 0;
    if (kind !== K_FSYNC) {
      let skip = kind === K_WRITE ? BLK_HEADER_BYTES : 0, left = len;
      for (let i = 0; i < segs.length && left > 0; i++) {
        const s = segs[i]!;
        if (s.writable !== (kind === K_READ)) continue;
        let gpa = s.gpa, n = s.len;
        if (skip > 0) {
          const k = Math.min(skip, n);
          skip -= k;
          gpa += k;
          n -= k;
        }
        n = Math.min(n, left);
        if (n === 0) continue;
        if (p.direct && ((this.#host.addr(gpa, n) % SECTOR_BYTES) !== 0 || n % SECTOR_BYTES !== 0)) {
          return this.#syncHandle(chain); // the bounce buffer
        }
        left -= n;
        ops++;
      }
    }
    const writeThrough = kind === K_WRITE && !this.#writeback;
    const need = ops + (kind === K_FSYNC || writeThrough ? 1 : 0);
    if (need === 0) return this.#syncHandle(chain);
    if (need > this.ring.entries) return this.#syncHandle(chain);
    // Staged requests are submitted (unmerged at worst) before anything else takes SQEs or ops.
    const stage = this.#stage;
    const staging = this.#merge && kind !== K_FSYNC && !writeThrough && stage.fits(kind, ops);
    if (!staging || (stage.n > 0 && this.ring.sqSpace < stage.parts + need)) this.#flushStage();
    if (this.#nFreeSlots === 0 || this.#nFreeOps < stage.parts + need) {
      this.#stalled = true;
      return undefined; // stays on the ring until completions free room
    }
    if (this.ring.sqSpace < stage.parts + need) this.ring.submit();
    if (this.ring.sqSpace < stage.parts + need) {
      this.#stalled = true;
      return undefined;
    }
    if (this.inFlight === 0) {
      // Hold the transport busy until the last completion: a driver reset then waits for the
      // kernel to finish writing guest RAM (as for a synchronous pass).
      if (!this.#t.beginWork()) return 0; // a reset is pending: it wipes the ring anyway
      this.#held = true;
    }
    // The status byte: the chain's last writable byte.
    let statusGpa = -1;
    for (let i = segs.length - 1; i >= 0; i--) {
      const s = segs[i]!;
      if (s.writable) {
        statusGpa = s.gpa + s.len - 1;
        break;
      }
    }
    const slot = this.#freeSlots[--this.#nFreeSlots]!;
    this.#slotHead[slot] = chain.head;
    this.#slotUsed[slot] = kind === K_READ ? len + 1 : 1;
    this.#slotPending[slot] = need;
    this.#slotStatus[slot] = VIRTIO_BLK_S_OK;
    this.#slotStatusGpa[slot] = statusGpa;
    this.#slotReset[slot] = this.#t.resetCount;
    this.#slotSector[slot] = sector;
    if (staging) stage.begin(kind, slot, sector);
    if (kind !== K_FSYNC) {
      const opcode = kind === K_READ ? IORING_OP_READ : IORING_OP_WRITE;
      const flags = writeThrough ? IOSQE_IO_LINK : 0;
      let skip = kind === K_WRITE ? BLK_HEADER_BYTES : 0, left = len, off = sector * SECTOR_BYTES;
      for (let i = 0; i < segs.length && left > 0; i++) {
        const s = segs[i]!;
        if (s.writable !== (kind === K_READ)) continue;
        let gpa = s.gpa, n = s.len;
        if (skip > 0) {
          const k = Math.min(skip, n);
          skip -= k;
          gpa += k;
          n -= k;
        }
        n = Math.min(n, left);
        if (n === 0) continue;
        if (staging) stage.addPart(gpa, this.#host.addr(gpa, n), n);
        else {
          const op = this.#newOp(slot, kind, p.fd, gpa, n, off);
          this.ring.prep(opcode, p.fd, this.#host.addr(gpa, n), n, off, op, flags);
        }
        left -= n;
        off += n;
      }
    }
    if (kind === K_FSYNC || writeThrough) {
      const op = this.#newOp(slot, K_FSYNC, p.fd, 0, 0, 0);
      this.ring.prep(IORING_OP_FSYNC, p.fd, 0, 0, 0, op, 0, IORING_FSYNC_DATASYNC);
    }
    return CHAIN_DEFERRED;
  }

  /** A chain served synchronously: what is staged goes to the kernel first. */
  #syncHandle(chain: DescriptorChain): number {
    this.#flushStage();
    return this.#sync.handle(chain);
  }

  /**
   * Turns the staged requests into operations: sorted by sector, each run of adjacent requests
   * (up to MERGE_MAX_PARTS buffers) one READV/WRITEV, a request alone one READ/WRITE per buffer.
   * The SQ and the operation pool have room for every staged buffer (checked when staged).
   */
  #flushStage(): void {
    const st = this.#stage;
    if (st.n === 0) return;
    st.sort();
    const kind = st.kind, fd = this.#p.fd, o = st.order;
    for (let i = 0; i < st.n;) {
      const a = o[i]!;
      let j = i + 1, parts = st.count[a]!, end = st.sector[a]! + st.bytes[a]! / SECTOR_BYTES;
      for (; j < st.n; j++) {
        const b = o[j]!;
        if (st.sector[b] !== end || parts + st.count[b]! > MERGE_MAX_PARTS) break;
        parts += st.count[b]!;
        end += st.bytes[b]! / SECTOR_BYTES;
      }
      const g = j - i > 1 ? this.#groups.alloc() : -1;
      if (g >= 0) {
        const off0 = st.sector[a]! * SECTOR_BYTES;
        let off = off0;
        for (let k = i; k < j; k++) {
          const r = o[k]!, slot = st.slot[r]!;
          this.#slotPending[slot] = 1;
          this.#groups.addReq(g, slot);
          for (let q = st.first[r]!, e = q + st.count[r]!; q < e; q++) {
            this.#groups.addPart(g, slot, st.gpa[q]!, st.host[q]!, st.len[q]!, off);
            off += st.len[q]!;
          }
        }
        const op = this.#newOp(-1, kind, fd, 0, off - off0, off0);
        this.#opGroup[op] = g;
        this.ring.prep(
          kind === K_READ ? IORING_OP_READV : IORING_OP_WRITEV,
          fd,
          this.#groups.iovAddr(g),
          this.#groups.parts[g]!,
          off0,
          op,
        );
      } else {
        const opcode = kind === K_READ ? IORING_OP_READ : IORING_OP_WRITE;
        for (let k = i; k < j; k++) {
          const r = o[k]!, slot = st.slot[r]!;
          this.#slotPending[slot] = st.count[r]!;
          let off = st.sector[r]! * SECTOR_BYTES;
          for (let q = st.first[r]!, e = q + st.count[r]!; q < e; q++) {
            const op = this.#newOp(slot, kind, fd, st.gpa[q]!, st.len[q]!, off);
            this.ring.prep(opcode, fd, st.host[q]!, st.len[q]!, off, op);
            off += st.len[q]!;
          }
        }
      }
      i = j;
    }
    st.clear();
  }

  #newOp(slot: number, kind: number, fd: number, gpa: number, len: number, off: number): number {
    const op = this.#freeOps[--this.#nFreeOps]!;
    this.#operations++;
    this.#opSlot[op] = slot;
    this.#opKind[op] = kind;
    this.#opFd[op] = fd;
    this.#opGpa[op] = gpa;
    this.#opLen[op] = len;
    this.#opOff[op] = off;
    return op;
  }

  /** One CQE: finishes the operation (fix-ups on the synchronous path) and, when last, its request. */
  #complete(op: number, res: number): void {
    const slot = this.#opSlot[op]!;
    const kind = this.#opKind[op]!;
    this.#freeOps[this.#nFreeOps++] = op;
    const g = this.#opGroup[op]!;
    if (g >= 0) {
      this.#opGroup[op] = -1;
      return this.#completeGroup(g, kind, res);
    }
    const failed = this.#slotStatus[slot] !== VIRTIO_BLK_S_OK;
    if (!(failed && res === -ECANCELED)) {
      const rc = kind === K_FSYNC ? this.#fsyncResult(res) : this.#transferResult(op, kind, res);
      if (rc < 0 && !failed) this.#fail(slot, kind, rc);
    }
    this.#settle(slot);
  }

  #fail(slot: number, kind: number, rc: number): void {
    this.#slotStatus[slot] = VIRTIO_BLK_S_IOERR;
    this.#slotUsed[slot] = 1;
    this.#log.warnLimited(
      "Request at sector %d failed: %s errno %d",
      this.#slotSector[slot]!,
      kind === K_FSYNC ? "fdatasync" : kind === K_READ ? "read" : "write",
      -rc,
    );
  }

  /**
   * A merged operation finished: on success each request is done; otherwise (an error, O_DIRECT's
   * EINVAL, a short transfer) each buffer is redone with pread/pwrite, so each request gets its own status.
   */
  #completeGroup(g: number, kind: number, res: number): void {
    const gr = this.#groups, base = g * MERGE_MAX_PARTS, n = gr.parts[g]!;
    const dir = kind === K_READ ? "read" : "write";
    const ok = res === gr.total[g];
    let fd = this.#p.fd;
    if (!ok && res === -EINVAL && this.#p.direct) {
      this.#sync.noteDirectFallback();
      fd = this.#p.bufferedFd;
    }
    for (let i = base; i < base + n; i++) {
      const gpa = gr.gpa[i]!, len = gr.len[i]!;
      const rc = ok ? len : transferAll(dir, fd, this.#mem.slice(gpa, len), gr.off[i]!);
      const slot = gr.slotOf[i]!;
      if (rc < 0) {
        if (this.#slotStatus[slot] === VIRTIO_BLK_S_OK) this.#fail(slot, kind, rc);
      } else if (kind === K_READ) this.#mem.markDirty(gpa, len); // the kernel wrote guest RAM
    }
    for (let i = g * MERGE_MAX_REQS, e = i + gr.reqs[g]!; i < e; i++) this.#settle(gr.slot[i]!);
    gr.release(g);
  }

  /** One operation of the request in `slot` is done; the last one completes it. */
  #settle(slot: number): void {
    if (--this.#slotPending[slot]! > 0) return;
    this.#freeSlots[this.#nFreeSlots++] = slot;
    if (this.#slotReset[slot] !== this.#t.resetCount) return; // the driver reset the device meanwhile
    this.#host.setU8(this.#slotStatusGpa[slot]!, this.#slotStatus[slot]!);
    this.#pairs[2 * this.#nPairs] = this.#slotHead[slot]!;
    this.#pairs[2 * this.#nPairs + 1] = this.#slotUsed[slot]!;
    this.#nPairs++;
  }

  #fsyncResult(res: number): number {
    if (res !== -ECANCELED) return res;
    return fsyncFd(this.#p.fd); // its link broke: do it here
  }

  /** @returns bytes moved, or -errno */
  #transferResult(op: number, kind: number, res: number): number {
    const gpa = this.#opGpa[op]!, len = this.#opLen[op]!, off = this.#opOff[op]!;
    const dir = kind === K_READ ? "read" : "write";
    let rc = res;
    if (res === -EINVAL && this.#p.direct) {
      this.#sync.noteDirectFallback();
      rc = transferAll(dir, this.#p.bufferedFd, this.#mem.slice(gpa, len), off);
    } else if (res === -ECANCELED) {
      rc = transferAll(dir, this.#opFd[op]!, this.#mem.slice(gpa, len), off);
    } else if (res >= 0 && res < len) {
      const more = transferAll(dir, this.#opFd[op]!, this.#mem.slice(gpa + res, len - res), off + res);
      rc = more < 0 ? more : len;
    }
    // The kernel wrote guest RAM behind GuestMemory's back: mark the pages (STYLE.md c.10).
    if (rc >= 0 && kind === K_READ) this.#mem.markDirty(gpa, len);
    return rc;
  }
}
