import assert from "node:assert/strict";
import { completeChains, type QueueOwner } from "./queue_processing.ts";
import type { Virtqueue } from "./queue.ts";

/** A queue that records, at each publish, how many entries had been put on the used ring. */
function recordingOwner() {
  const published: number[] = [];
  let pushed = 0, signals = 0;
  const vq = {
    pushUsed: () => void pushed++,
    flushUsed: () => void published.push(pushed),
    needsInterrupt: () => true,
  } as unknown as Virtqueue;
  const owner: QueueOwner = {
    beginWork: () => true,
    endWork: () => {},
    queue: () => vq,
    markBroken: () => {},
    signalQueue: () => void signals++,
  };
  return { owner, published, signals: () => signals };
}

Deno.test("completeChains publishes the used index every publishEvery entries and at the end, then signals once", () => {
  const pairs = new Uint32Array(40);
  const a = recordingOwner();
  completeChains(a.owner, 0, pairs, 20, 8);
  assert.deepEqual(a.published, [8, 16, 20]);
  assert.equal(a.signals(), 1);
  const b = recordingOwner();
  completeChains(b.owner, 0, pairs, 20);
  assert.deepEqual(b.published, [20], "by default once, after all of them");
  const c = recordingOwner();
  completeChains(c.owner, 0, pairs, 16, 8);
  assert.deepEqual(c.published, [8, 16], "no second publish of the same index");
});
