/**
 * Queue handling for the I/O Worker over a transport: one processing pass over a queue (take
 * chains, hand them to the device, publish used entries as it goes, keep the driver's
 * notifications off while it works, optionally poll a little before turning them back on), and
 * the completion of chains a device finished later, in any order (io_uring). A bad ring marks
 * the queue broken (the device then needs a reset); a bad chain is returned with length 0.
 * @module
 */
import { type DescriptorChain, QueueError, type Virtqueue } from "./queue.ts";

/** What a queue handler returns for a chain it will complete later ({@linkcode completeChains}). */
export const CHAIN_DEFERRED = -1;
/**
 * What a queue handler returns when its own source has nothing for the chain (a tap with no frame
 * waiting): the chain stays on the ring and the pass ends, and the driver's notifications stay off,
 * since the source wakes the device, not the driver (QEMU's virtio-net asks for RX kicks only when
 * it runs out of buffers). Where the ring itself runs dry, notifications are turned on as usual.
 */
export const CHAIN_WAIT_SOURCE = -2;
/** A pass publishes the used index after this many chains (and at the end). */
const USED_PUBLISH_EVERY = 32;

/** The transport calls a pass makes. */
export interface QueueOwner {
  beginWork(): boolean;
  endWork(): void;
  queue(q: number): Virtqueue | undefined;
  markBroken(q: number, why: string): void;
  signalQueue(q: number): void;
}

/** A rate-limited warning sink. */
export interface QueueLog {
  warnLimited(format: string, ...args: unknown[]): void;
}

/**
 * One processing pass over queue `q`; see {@linkcode VirtioPciTransport.process}.
 * @returns "more" when the budget ran out with chains still pending
 */
export function processQueue(
  owner: QueueOwner,
  log: QueueLog,
  q: number,
  handle: (chain: DescriptorChain) => number | undefined,
  budget: number,
  pollUs: number | (() => number),
  onPoll?: () => boolean,
): "idle" | "more" {
  if (!owner.beginWork()) return "idle";
  try {
    const vq = owner.queue(q);
    if (!vq) return "idle";
    let result: "idle" | "more" = "idle";
    try {
      let n = 0, stop = false;
      vq.disableNotification();
      for (;;) {
        while (!stop) {
          if (n >= budget) {
            result = "more";
            stop = true;
            break;
          }
          const chain = vq.pop();
          if (!chain) break;
          n++;
          if (chain.error !== undefined) {
            log.warnLimited("Queue %d: returning a bad descriptor chain: %s", q, chain.error);
            vq.pushUsed(chain.head, 0);
            continue;
          }
          const used = handle(chain);
          if (used === undefined || used === CHAIN_WAIT_SOURCE) {
            vq.regs.nextAvail = vq.regs.nextAvail - 1; // leave the chain on the ring
            if (used === undefined) vq.enableNotification();
            stop = true;
            break;
          }
          if (used !== CHAIN_DEFERRED) {
            vq.pushUsed(chain.head, used);
            // Publish as we go, so a driver waiting for buffers refills while the rest is served.
            if (n % USED_PUBLISH_EVERY === 0) vq.flushUsed();
          }
        }
        vq.flushUsed();
        if (stop) break;
        const us = typeof pollUs === "number" ? pollUs : pollUs();
        if (us > 0 && poll(owner, q, vq, us, onPoll)) continue; // notifications still off
        if (!vq.enableNotification()) break;
        vq.disableNotification(); // more arrived meanwhile: serve it quietly
      }
    } catch (e) {
      if (!(e instanceof QueueError)) throw e;
      vq.flushUsed();
      owner.markBroken(q, e.message);
    }
    if (vq.needsInterrupt()) owner.signalQueue(q);
    return result;
  } finally {
    owner.endWork();
  }
}

/**
 * Waits up to `us` microseconds, notifications still off, for the driver to add a chain; calls
 * `onPoll` on the way (a device reaping completions, which the driver answers with new chains),
 * and each time it did something the wait starts again.
 */
function poll(owner: QueueOwner, q: number, vq: Virtqueue, us: number, onPoll?: () => boolean): boolean {
  if (vq.needsInterrupt()) owner.signalQueue(q); // what is done so far is not held back
  let end = performance.now() + us / 1000;
  for (;;) {
    if (vq.pending() > 0) return true;
    const now = performance.now();
    if (onPoll?.()) end = now + us / 1000;
    else if (now >= end) return false;
  }
}

/**
 * Completes chains a device took with {@linkcode CHAIN_DEFERRED}: puts `n` pairs (head, bytes
 * written) from `pairs` on the used ring, publishes it (every `publishEvery` entries and at the end)
 * and interrupts the driver if it asked for it. Nothing happens when the device is not running (a
 * reset dropped the chains).
 */
export function completeChains(
  owner: QueueOwner,
  q: number,
  pairs: Uint32Array,
  n: number,
  publishEvery = n,
): void {
  if (n === 0 || !owner.beginWork()) return;
  try {
    const vq = owner.queue(q);
    if (!vq) return;
    for (let i = 0; i < n; i++) {
      vq.pushUsed(pairs[2 * i]!, pairs[2 * i + 1]!);
      if ((i + 1) % publishEvery === 0 && i + 1 < n) vq.flushUsed(); // a polling driver starts refilling
    }
    vq.flushUsed();
    if (vq.needsInterrupt()) owner.signalQueue(q);
  } finally {
    owner.endWork();
  }
}
