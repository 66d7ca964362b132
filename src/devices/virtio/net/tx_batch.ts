/**
 * virtio-net TX in batches: the frames of a TX pass are written to the tap with one
 * `IORING_OP_WRITEV` each (gathered straight from the chain's buffers, as the one-frame `writev`
 * path does) and one `io_uring_enter` per {@linkcode TX_BATCH_MAX} frames, where the one-frame
 * path makes one system call per frame. The writes carry `RWF_NOWAIT` and complete during the
 * submission, in submission order (a tap write never waits: the frame goes to the host stack or is
 * dropped), so the frames leave in ring order and nothing is in flight after {@linkcode flush}.
 *
 * The chains are completed (length 0) in one batch after the writes; a failed write drops its frame
 * and counts it, as on the one-frame path. The caller flushes before it leaves the pass that took
 * the chains (the transport held busy), so a driver reset never finds a TX buffer still to be read.
 * @module
 */
import { VNET_HDR_BYTES } from "../../../sys/tap.ts";
import type { HostMemory } from "../host_memory.ts";
import type { DescriptorChain } from "../queue.ts";
import type { QueueLog } from "../queue_processing.ts";
import { IORING_OP_WRITEV, type Uring } from "../block/uring.ts";
import { closeTapBatchIo, openTapBatchIo, RWF_NOWAIT, type TapBatchIo } from "./tap_uring.ts";

/** Frames one submission carries at most (the ring's size). */
export const TX_BATCH_MAX = 64;
/** Buffers of a chain the batch path takes (longer chains go to the one-frame path). */
export const TX_BATCH_SEGMENTS = 8;
const TWO32 = 4294967296;

/** What the batch path needs of the NIC. */
export interface TxBatchOptions {
  tapFd: number;
  host: HostMemory;
  log: QueueLog;
  stats: { txFrames: number; txDropped: number };
  /** Completes chains on the TX queue: `n` (head, 0) pairs. */
  complete: (pairs: Uint32Array, n: number) => void;
  /** The ring; made here when absent (throws when io_uring or RWF_NOWAIT on the tap is unavailable). */
  ring?: Uring;
}

/** TX over io_uring batches; see the module doc. */
export class TxBatch {
  readonly ring: Uring;
  readonly #o: TxBatchOptions;
  readonly #pairs = new Uint32Array(2 * TX_BATCH_MAX);
  readonly #io: TapBatchIo;
  readonly #iovBase: number;
  readonly #iovBytes = TX_BATCH_MAX * TX_BATCH_SEGMENTS * 16;
  readonly #iov: Uint32Array;
  readonly #onCqe = (i: number, res: number): void => this.#done(i, res);
  /** Frames staged (SQEs prepared, not submitted). */
  #n = 0;
  /** Submissions made (tests, diagnostics). */
  batches = 0;
  #closed = false;

  constructor(options: TxBatchOptions) {
    this.#o = options;
    this.#io = openTapBatchIo(TX_BATCH_MAX, options.tapFd, this.#iovBytes, "TX iovecs", options.ring);
    this.ring = this.#io.ring;
    this.#iovBase = Number(this.#io.iovAddr);
    this.#iov = this.#io.iov;
  }

  /** Whether the batch path takes `chain`: readable buffers only, the header in the first. */
  static takes(chain: DescriptorChain): boolean {
    const s = chain.segments;
    if (s.length === 0 || s.length > TX_BATCH_SEGMENTS || chain.writableBytes > 0) return false;
    return s[0]!.len >= VNET_HDR_BYTES;
  }

  /** Frames staged and not yet written. */
  get staged(): number {
    return this.#n;
  }

  /** Stages the frame of `chain` (caller checked {@linkcode takes}); a full batch is written at once. */
  stage(chain: DescriptorChain): void {
    const k = this.#n++, w = this.#iov, host = this.#o.host;
    let at = k * TX_BATCH_SEGMENTS;
    for (const s of chain.segments) {
      const addr = host.addr(s.gpa, s.len), x = 4 * at++;
      w[x] = addr >>> 0;
      w[x + 1] = Math.floor(addr / TWO32);
      w[x + 2] = s.len;
      w[x + 3] = 0;
    }
    this.#pairs[2 * k] = chain.head;
    this.#pairs[2 * k + 1] = 0;
    this.ring.prep(
      IORING_OP_WRITEV,
      this.#o.tapFd,
      this.#iovBase + k * TX_BATCH_SEGMENTS * 16,
      chain.segments.length,
      -1,
      k,
      0,
      RWF_NOWAIT,
    );
    if (this.#n === TX_BATCH_MAX) this.flush();
  }

  /**
   * Writes the staged frames and completes their chains.
   * @returns whether there was anything to write
   */
  flush(): boolean {
    const k = this.#n;
    if (k === 0) return false;
    this.batches++;
    const ring = this.ring;
    ring.submit(k); // RWF_NOWAIT: every write completes during the submission
    let got = ring.reap(this.#onCqe);
    while (got < k) {
      ring.submit(k - got);
      got += ring.reap(this.#onCqe);
    }
    this.#n = 0;
    this.#o.complete(this.#pairs, k);
    return true;
  }

  #done(_i: number, res: number): void {
    if (res < 0) {
      this.#o.stats.txDropped++;
      this.#o.log.warnLimited("Writing the tap failed: errno %d", -res);
    } else this.#o.stats.txFrames++;
  }

  /** Frees the ring and the iovec memory (nothing may be staged). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    closeTapBatchIo(this.#io);
  }
}
