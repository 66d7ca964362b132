/**
 * virtio-net RX in batches: one `io_uring_enter` reads up to {@linkcode RX_BATCH_MAX} frames from
 * the tap, each straight into its own RX chain, where the one-chain path (net.ts) makes one
 * `readv` system call per frame. A tap gives one frame per read whatever the buffer, so a batch is
 * one `IORING_OP_READV` per chain, with `RWF_NOWAIT`: each completes during the submission, with a
 * frame or with `-EAGAIN` once the tap is empty (none waits for a frame: nothing is in flight after
 * a pass, so pause, reset and migration see the queue as after the one-chain path).
 *
 * Chains are taken from the available ring in order; the frames fill the first of them in the
 * order the tap gave them, and the chains left without a frame go back to the ring (the available
 * index is rewound: they are the last ones taken). A frame can land after an empty chain only when
 * it arrived during the submission; it is then copied into the first empty chain, so the frames
 * still fill a prefix. A frame too big for its chain is dropped (the scratch buffer after the
 * chain's buffers catches its tail), as on the one-chain path.
 *
 * How many chains a batch takes adapts: the first batch of a pass takes as many as the previous
 * pass received (at least {@linkcode RX_BATCH_MIN}), and a batch that filled every chain is followed
 * by one twice as large; a batch that met the empty tap ends the pass with the driver's
 * notifications off (the tap wakes the I/O Worker), as `CHAIN_WAIT_SOURCE` does.
 *
 * Nothing is allocated per frame beyond the chain walk: iovecs live in native memory, results in
 * typed arrays.
 * @module
 */
import type { GuestMemory } from "../../../memory/guest_memory.ts";
import { VNET_HDR_BYTES } from "../../../sys/tap.ts";
import type { HostMemory } from "../host_memory.ts";
import { type DescriptorChain, QueueError, type Virtqueue } from "../queue.ts";
import type { QueueLog, QueueOwner } from "../queue_processing.ts";
import { IORING_OP_READV, type Uring } from "../block/uring.ts";
import { closeTapBatchIo, openTapBatchIo, RWF_NOWAIT, type TapBatchIo } from "./tap_uring.ts";

/** Chains one batch takes at most (the ring's size). */
export const RX_BATCH_MAX = 64;
/** Chains the first batch of a pass takes at least. */
export const RX_BATCH_MIN = 4;
/** Buffers of a chain the batch path takes (longer chains go to the one-chain path). */
export const RX_BATCH_SEGMENTS = 8;
const EAGAIN = 11;
const TWO32 = 4294967296;
/** iovecs per chain: its buffers and the scratch buffer. */
const IOV_PER_CHAIN = RX_BATCH_SEGMENTS + 1;

/** What the batch path needs of the NIC. */
export interface RxBatchOptions {
  tapFd: number;
  memory: GuestMemory;
  host: HostMemory;
  /** Host address and size of a scratch buffer that catches oversize frames. */
  scratchAddr: number;
  scratchBytes: number;
  log: QueueLog;
  /** Counters (the NIC's). */
  stats: { rxFrames: number; rxDropped: number };
  /** The ring; made here when absent (throws when io_uring or RWF_NOWAIT on the tap is unavailable). */
  ring?: Uring;
}

/** How a batch ended. */
const B_FULL = 0, B_EMPTY = 1, B_SLOW = 2, B_ERROR = 3;

/** RX over io_uring batches; see the module doc. */
export class RxBatch {
  readonly ring: Uring;
  readonly #o: RxBatchOptions;
  readonly #chains: DescriptorChain[] = [];
  readonly #res = new Int32Array(RX_BATCH_MAX);
  readonly #io: TapBatchIo;
  readonly #iovBase: number;
  readonly #iovBytes = RX_BATCH_MAX * IOV_PER_CHAIN * 16;
  readonly #iov: Uint32Array;
  readonly #onCqe = (i: number, res: number): void => {
    this.#res[i] = res;
  };
  /** Frames the previous pass received (the first batch size of the next). */
  #lastPass = RX_BATCH_MIN;
  /** Batches submitted (tests, diagnostics). */
  batches = 0;
  #closed = false;

  constructor(options: RxBatchOptions) {
    this.#o = options;
    this.#io = openTapBatchIo(RX_BATCH_MAX, options.tapFd, this.#iovBytes, "RX iovecs", options.ring);
    this.ring = this.#io.ring;
    this.#iovBase = Number(this.#io.iovAddr);
    this.#iov = this.#io.iov;
  }

  /** Whether the batch path takes `chain` (else the one-chain path serves it). */
  static takes(chain: DescriptorChain): boolean {
    const s = chain.segments;
    if (chain.error !== undefined || s.length === 0 || s.length > RX_BATCH_SEGMENTS) return false;
    const first = s[0]!;
    return first.writable && first.len >= VNET_HDR_BYTES;
  }

  /**
   * One pass over RX queue `q`: batches while the tap has frames and the ring has chains. A chain
   * the batch path does not take (bad, or an unusual layout) goes to `slow`, which answers as a
   * `process()` handler does (bytes written, `CHAIN_WAIT_SOURCE` (-2) or undefined to stop).
   * @param pending whether the one-chain path holds a frame (it then serves the next chain)
   * @returns "more" when the budget ran out with chains still pending
   */
  pass(
    owner: QueueOwner,
    q: number,
    budget: number,
    slow: (chain: DescriptorChain) => number | undefined,
    pending: () => boolean,
  ): "idle" | "more" {
    if (!owner.beginWork()) return "idle";
    try {
      const vq = owner.queue(q);
      if (!vq) return "idle";
      let result: "idle" | "more" = "idle";
      let received = 0;
      try {
        vq.disableNotification();
        let n = 0, size = Math.max(RX_BATCH_MIN, Math.min(RX_BATCH_MAX, this.#lastPass));
        for (;;) {
          const avail = vq.pending();
          if (avail === 0) {
            vq.flushUsed();
            if (!vq.enableNotification()) break;
            vq.disableNotification(); // more arrived meanwhile
            continue;
          }
          if (n >= budget) {
            result = "more";
            break;
          }
          const want = Math.min(avail, budget - n, size);
          this.#filled = 0;
          const end = pending() ? B_SLOW : this.#batch(vq, want);
          n += this.#filled;
          received += this.#filled;
          // Publish as we go, so a driver waiting for frames sees them while the next batch is read.
          if (this.#filled > 0) vq.flushUsed();
          if (end === B_FULL) {
            size = Math.min(RX_BATCH_MAX, 2 * size);
            continue;
          }
          if (end === B_EMPTY) break; // the tap wakes us; notifications stay off
          if (end === B_ERROR) {
            vq.enableNotification();
            break;
          }
          // B_SLOW: the next chain takes the one-chain path.
          const chain = vq.pop();
          if (!chain) continue;
          n++;
          if (chain.error !== undefined) {
            this.#o.log.warnLimited("Queue %d: returning a bad descriptor chain: %s", q, chain.error);
            vq.pushUsed(chain.head, 0);
            continue;
          }
          const used = slow(chain);
          if (used === undefined || used < 0) {
            vq.regs.nextAvail = vq.regs.nextAvail - 1;
            if (used === undefined) vq.enableNotification();
            break;
          }
          vq.pushUsed(chain.head, used);
          received++;
        }
        vq.flushUsed();
      } catch (e) {
        if (!(e instanceof QueueError)) throw e;
        vq.flushUsed();
        owner.markBroken(q, e.message);
      }
      this.#lastPass = received;
      if (vq.needsInterrupt()) owner.signalQueue(q);
      return result;
    } finally {
      owner.endWork();
    }
  }

  /** Chains the last batch filled. */
  #filled = 0;

  /**
   * Takes up to `want` chains, reads a frame into each, puts the filled ones on the used ring (not
   * yet published) and gives the rest back.
   */
  #batch(vq: Virtqueue, want: number): number {
    this.#filled = 0;
    const chains = this.#chains, o = this.#o, ring = this.ring, w = this.#iov;
    let k = 0, failure: unknown;
    while (k < want) {
      let chain: DescriptorChain | undefined;
      try {
        chain = vq.pop();
      } catch (e) {
        failure = e; // a bogus ring: what was prepared is still read and delivered, then the pass fails
        break;
      }
      if (!chain) break;
      if (!RxBatch.takes(chain)) {
        vq.regs.nextAvail = vq.regs.nextAvail - 1;
        break;
      }
      chains[k] = chain;
      let at = k * IOV_PER_CHAIN, count = 0;
      for (const s of chain.segments) {
        if (!s.writable) break;
        const addr = o.host.addr(s.gpa, s.len), x = 4 * at++;
        w[x] = addr >>> 0;
        w[x + 1] = Math.floor(addr / TWO32);
        w[x + 2] = s.len;
        w[x + 3] = 0;
        count++;
      }
      const x = 4 * at;
      w[x] = o.scratchAddr >>> 0;
      w[x + 1] = Math.floor(o.scratchAddr / TWO32);
      w[x + 2] = o.scratchBytes;
      w[x + 3] = 0;
      ring.prep(
        IORING_OP_READV,
        o.tapFd,
        this.#iovBase + k * IOV_PER_CHAIN * 16,
        count + 1,
        -1,
        k,
        0,
        RWF_NOWAIT,
      );
      this.#res[k] = -EAGAIN;
      k++;
    }
    if (k === 0) {
      if (failure !== undefined) throw failure;
      return B_SLOW;
    }
    this.batches++;
    ring.submit(k); // RWF_NOWAIT: every read completes during the submission
    let got = ring.reap(this.#onCqe);
    while (got < k) {
      ring.submit(k - got);
      got += ring.reap(this.#onCqe);
    }
    let j = 0, end = B_FULL;
    for (let i = 0; i < k; i++) {
      const n = this.#res[i]!, chain = chains[i]!;
      if (n < 0) {
        if (n !== -EAGAIN) {
          o.log.warnLimited("Reading the tap failed: errno %d", -n);
          end = B_ERROR;
        } else if (end === B_FULL) end = B_EMPTY;
        continue;
      }
      this.#markWritten(chain, n); // the kernel wrote guest RAM behind GuestMemory's back
      if (n < VNET_HDR_BYTES) continue;
      if (n > chain.writableBytes) {
        o.stats.rxDropped++;
        o.log.warnLimited(
          "Dropping a received frame of %d bytes: RX buffer holds %d",
          n,
          chain.writableBytes,
        );
        continue;
      }
      const dst = chains[j]!;
      if (j !== i) {
        // It arrived after an earlier read found the tap empty: move it into that earlier chain.
        if (n > dst.writableBytes) {
          o.stats.rxDropped++;
          continue;
        }
        this.#move(chain, dst, n);
      }
      this.#header(dst);
      vq.pushUsed(dst.head, n);
      o.stats.rxFrames++;
      j++;
    }
    vq.regs.nextAvail = vq.regs.nextAvail - (k - j);
    for (let i = 0; i < k; i++) chains[i] = undefined as unknown as DescriptorChain;
    this.#filled = j;
    if (failure !== undefined) throw failure;
    return end;
  }

  /** No offloads: flags and GSO fields zero, num_buffers 1 (the header lies in the first buffer). */
  #header(chain: DescriptorChain): void {
    const gpa = chain.segments[0]!.gpa, mem = this.#o.memory;
    const r = mem.regionOf(gpa, VNET_HDR_BYTES)!;
    const at = gpa - r.gpa;
    r.bytes.fill(0, at, at + VNET_HDR_BYTES);
    r.bytes[at + 10] = 1;
  }

  /** Marks the first `n` bytes of the chain's buffers dirty (STYLE.md c.10). */
  #markWritten(chain: DescriptorChain, n: number): void {
    let left = n;
    for (const s of chain.segments) {
      if (left <= 0) break;
      const k = Math.min(s.len, left);
      this.#o.memory.markDirty(s.gpa, k);
      left -= k;
    }
  }

  /** Copies the first `n` bytes of `from`'s buffers into `to`'s (which hold at least `n`). */
  #move(from: DescriptorChain, to: DescriptorChain, n: number): void {
    const mem = this.#o.memory, frame = new Uint8Array(n);
    let pos = 0;
    for (const s of from.segments) {
      if (pos >= n) break;
      const k = Math.min(s.len, n - pos);
      frame.set(mem.slice(s.gpa, k), pos);
      pos += k;
    }
    pos = 0;
    for (const s of to.segments) {
      if (pos >= n) break;
      const k = Math.min(s.len, n - pos);
      mem.write(s.gpa, frame.subarray(pos, pos + k));
      pos += k;
    }
  }

  /** Frees the ring and the iovec memory. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeTapBatchIo(this.#io);
  }
}
