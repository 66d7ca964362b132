import assert from "node:assert/strict";
import { fakeMemory } from "./_testing.ts";
import { QueueError, Virtqueue } from "./queue.ts";
import { QUEUE_WORDS, QueueRegs } from "./queue_state.ts";

const SIZE = 256, DESC = 0x10000, AVAIL = 0x20000, USED = 0x30000;

/**
 * A driver on another thread that keeps rewriting the available index between `a` and `b` (one
 * 16-bit store each), until `stop[0]` is set.
 */
const WRITER = `
self.onmessage = (e) => {
  const { buffer, word, a, b, stop } = e.data;
  const u16 = new Uint16Array(buffer), flag = new Int32Array(stop);
  self.postMessage("started");
  for (let i = 0; Atomics.load(flag, 0) === 0; i++) Atomics.store(u16, word, i & 1 ? b : a);
  self.postMessage("done");
};`;

Deno.test("the device reads the driver's available index whole while the driver rewrites it (never torn)", async () => {
  // 0x00ff <-> 0x0100 changes both bytes: a read made of two byte loads sees 0x0000 or 0x01ff
  // now and then, which is 'ahead' (a broken queue) or 255 chains the driver never offered.
  const memory = fakeMemory(4 << 20, true);
  const regs = new QueueRegs(new Int32Array(new SharedArrayBuffer(4 * QUEUE_WORDS)), 0);
  regs.maxSize = SIZE;
  regs.size = SIZE;
  regs.descGpa = DESC;
  regs.driverGpa = AVAIL;
  regs.deviceGpa = USED;
  regs.nextAvail = 0x00ff;
  const vq = new Virtqueue({ memory, regs, eventIdx: false });
  assert.equal(vq.check(), undefined);
  const buffer = memory.regions[0]!.bytes.buffer as SharedArrayBuffer;
  Atomics.store(new Uint16Array(buffer), (AVAIL + 2) / 2, 0x00ff); // what the driver published so far
  const stop = new SharedArrayBuffer(4);
  const url = URL.createObjectURL(new Blob([WRITER], { type: "text/javascript" }));
  const w = new Worker(url, { type: "module" });
  try {
    const next = () => new Promise<string>((resolve) => (w.onmessage = (e) => resolve(e.data)));
    const started = next();
    w.postMessage({ buffer, word: (AVAIL + 2) / 2, a: 0x00ff, b: 0x0100, stop });
    await started;
    const seen = new Map<number, number>();
    const end = performance.now() + 300;
    let reads = 0;
    while (performance.now() < end) {
      for (let k = 0; k < 1000; k++, reads++) {
        let n: number;
        try {
          n = vq.pending();
        } catch (e) {
          if (!(e instanceof QueueError)) throw e;
          n = -1;
        }
        seen.set(n, (seen.get(n) ?? 0) + 1);
      }
    }
    const done = next();
    Atomics.store(new Int32Array(stop), 0, 1);
    await done;
    const bad = [...seen].filter(([n]) => n !== 0 && n !== 1);
    assert.deepEqual(bad, [], `${reads} reads: pending() other than 0 or 1 (-1: refused as ahead)`);
    assert.ok((seen.get(0) ?? 0) > 0 && (seen.get(1) ?? 0) > 0, "the driver's stores were seen");
  } finally {
    w.terminate();
    URL.revokeObjectURL(url);
  }
});
