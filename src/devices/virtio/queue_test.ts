import assert from "node:assert/strict";
import { fakeMemory, TestDriver, testPlan, testTransport } from "./_testing.ts";
import {
  type DescriptorChain,
  readFromChain,
  VIRTQ_DESC_F_INDIRECT,
  VIRTQ_DESC_F_NEXT,
  VIRTQ_DESC_F_WRITE,
  VIRTQ_USED_F_NO_NOTIFY,
  writeToChain,
} from "./queue.ts";
import {
  CHAIN_WAIT_SOURCE,
  STATUS_NEEDS_RESET,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  type VirtioDeviceInfo,
} from "./pci_transport.ts";
import { PAGE_SIZE } from "../../memory/guest_memory.ts";

const INFO: VirtioDeviceInfo = {
  type: 2,
  queueSizes: [16],
  features: (1n << BigInt(VIRTIO_F_INDIRECT_DESC)) | (1n << BigInt(VIRTIO_F_EVENT_IDX)),
  config: new Uint8Array(8),
  writableConfig: [],
  pciClass: 0x010000,
};

function rig(features?: bigint) {
  const memory = fakeMemory();
  const fired: Array<number | "intx"> = [];
  const t = testTransport({ plan: testPlan(INFO), memory, fire: (x) => fired.push(x) });
  const d = new TestDriver(memory, t.bar0);
  d.init({ numQueues: 1, ...(features !== undefined ? { features } : {}) });
  const chains: DescriptorChain[] = [];
  const run = () =>
    t.process(0, (c) => {
      chains.push(c);
      return c.writableBytes;
    });
  return { memory, t, d, chains, run, fired };
}

Deno.test("Virtqueue walks a chain of readable then writable buffers", () => {
  const r = rig();
  const head = r.d.submit(0, [{ data: Uint8Array.of(1, 2, 3), writable: false }, {
    data: Uint8Array.of(4, 5),
    writable: false,
  }, {
    len: 7,
    writable: true,
  }]);
  r.run();
  assert.equal(r.chains.length, 1);
  const c = r.chains[0]!;
  assert.equal(c.head, head);
  assert.equal(c.readableBytes, 5);
  assert.equal(c.writableBytes, 7);
  assert.deepEqual([...readFromChain(r.memory, c, 1, 3)], [2, 3, 4]);
  assert.deepEqual(r.d.takeUsed(0), [{ id: head, len: 7 }]);
});

Deno.test("Virtqueue follows an indirect table", () => {
  const r = rig();
  const head = r.d.submit(0, [{ data: Uint8Array.of(9, 8), writable: false }, { len: 4, writable: true }], {
    indirect: true,
  });
  r.run();
  const c = r.chains[0]!;
  assert.equal(c.error, undefined);
  assert.equal(c.head, head);
  assert.deepEqual(c.segments.map((s) => [s.len, s.writable]), [[2, false], [4, true]]);
  assert.equal(writeToChain(r.memory, c, 0, Uint8Array.of(1, 2, 3, 4, 5)), 4);
});

Deno.test("Virtqueue returns a looping chain with length 0 and keeps going", () => {
  const r = rig();
  const q = r.d.queues[0]!;
  const buf = r.d.alloc(64);
  r.d.writeDesc(q.desc, 0, buf, 8, VIRTQ_DESC_F_NEXT, 1);
  r.d.writeDesc(q.desc, 1, buf, 8, VIRTQ_DESC_F_NEXT, 0); // 1 → 0 → 1 …
  r.d.pushAvail(0, 0);
  r.d.writeDesc(q.desc, 2, buf, 8, VIRTQ_DESC_F_WRITE, 0);
  r.d.pushAvail(0, 2);
  r.run();
  assert.deepEqual(r.chains.map((c) => c.head), [2], "the good chain after the loop is served");
  assert.deepEqual(r.d.takeUsed(0), [{ id: 0, len: 0 }, { id: 2, len: 8 }]);
});

Deno.test("Virtqueue rejects bad chains: nested indirect, out-of-RAM, oversize, bad order", () => {
  const r = rig();
  const q = r.d.queues[0]!;
  const buf = r.d.alloc(64);
  // Nested indirect.
  const table = r.d.alloc(32, 16);
  r.d.writeDesc(table, 0, table, 16, VIRTQ_DESC_F_INDIRECT, 0);
  r.d.writeDesc(q.desc, 0, table, 16, VIRTQ_DESC_F_INDIRECT, 0);
  r.d.pushAvail(0, 0);
  // Buffer outside RAM.
  r.d.writeDesc(q.desc, 1, 0x7fff_0000_0000, 16, 0, 0);
  r.d.pushAvail(0, 1);
  // Indirect table of a size that is not a multiple of 16, and one of 2^20 entries.
  r.d.writeDesc(q.desc, 2, table, 17, VIRTQ_DESC_F_INDIRECT, 0);
  r.d.pushAvail(0, 2);
  r.d.writeDesc(q.desc, 3, table, 16 << 20, VIRTQ_DESC_F_INDIRECT, 0);
  r.d.pushAvail(0, 3);
  // Readable after writable.
  r.d.writeDesc(q.desc, 4, buf, 8, VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT, 5);
  r.d.writeDesc(q.desc, 5, buf, 8, 0, 0);
  r.d.pushAvail(0, 4);
  // Next index past the table.
  r.d.writeDesc(q.desc, 6, buf, 8, VIRTQ_DESC_F_NEXT, 999);
  r.d.pushAvail(0, 6);
  r.run();
  assert.equal(r.chains.length, 0, "no bad chain reaches the device");
  assert.deepEqual(r.d.takeUsed(0).map((u) => [u.id, u.len]), [[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [
    6,
    0,
  ]]);
  assert.equal(r.t.status & STATUS_NEEDS_RESET, 0, "bad chains alone do not break the queue");
});

Deno.test("Virtqueue marks the device NEEDS_RESET when the available index runs ahead", () => {
  const r = rig();
  const q = r.d.queues[0]!;
  new DataView(r.memory.regions[0]!.bytes.buffer).setUint16(q.avail + 2, 100, true);
  r.run();
  assert.ok(r.t.status & STATUS_NEEDS_RESET);
  assert.ok(r.t.queueRegs(0).broken);
  r.run(); // a broken queue is left alone
  assert.equal(r.chains.length, 0);
});

Deno.test("Virtqueue used-ring writes show in the VMM dirty bitmap", () => {
  const r = rig();
  const bitmap = new Uint32Array(r.memory.regions[0]!.dirtyWords.length);
  r.memory.takeVmmDirty(0, bitmap); // clear what setup wrote
  bitmap.fill(0);
  r.d.submit(0, [{ len: 4, writable: true }]);
  r.run();
  r.memory.takeVmmDirty(0, bitmap);
  const page = Math.floor(r.d.queues[0]!.used / PAGE_SIZE);
  assert.ok(bitmap[page >>> 5]! & (1 << (page & 31)), "the used ring's page is dirty");
});

Deno.test("Virtqueue with event idx writes avail_event and interrupts only past used_event", () => {
  const r = rig();
  r.d.setUsedEvent(0, 1); // interrupt when used idx passes 1
  r.d.submit(0, [{ len: 4, writable: true }]);
  r.run();
  assert.equal(r.d.availEvent(0), 1);
  assert.equal(r.fired.length, 0, "used idx 1 has not passed used_event 1");
  r.d.submit(0, [{ len: 4, writable: true }]);
  r.run();
  assert.equal(r.fired.length, 1);
});

Deno.test("Virtqueue without event idx interrupts unless NO_INTERRUPT is set", () => {
  const r = rig(1n << 32n);
  r.d.submit(0, [{ len: 4, writable: true }]);
  r.run();
  assert.equal(r.fired.length, 1, "MSI-X off: INTx");
  assert.deepEqual(r.fired, ["intx"]);
  new DataView(r.memory.regions[0]!.bytes.buffer).setUint16(r.d.queues[0]!.avail, 1, true);
  r.d.submit(0, [{ len: 4, writable: true }]);
  r.run();
  assert.equal(r.fired.length, 1);
});

Deno.test("the transport reuses its checked queue view, and a reset that moves the rings gets a new one", () => {
  const r = rig();
  const vq = r.t.queue(0);
  assert.ok(vq);
  assert.equal(r.t.queue(0), vq, "same registers: same view");
  r.d.submit(0, [{ data: Uint8Array.of(1), writable: false }, { len: 2, writable: true }]);
  r.run();
  assert.equal(r.d.takeUsed(0).length, 1);
  // The driver resets the device and sets it up again with its rings elsewhere in RAM.
  const d2 = new TestDriver(r.memory, r.t.bar0, 0x200000);
  d2.init({ numQueues: 1 });
  const vq2 = r.t.queue(0);
  assert.ok(vq2);
  assert.notEqual(vq2, vq);
  const head = d2.submit(0, [{ data: Uint8Array.of(7), writable: false }, { len: 3, writable: true }]);
  r.run();
  assert.deepEqual(d2.takeUsed(0), [{ id: head, len: 3 }], "the used entry lands in the new ring");
  assert.deepEqual(r.d.takeUsed(0), [], "nothing more in the old one");
});

Deno.test("A pass whose handler waits for its own source leaves the chain and the driver's notifications off", () => {
  const r = rig(1n << 32n); // VERSION_1 only, no event idx: the used ring's flags say it
  const head = r.d.submit(0, [{ len: 64, writable: true }]);
  const usedFlags = () => r.memory.readU16(r.d.queues[0]!.used);
  r.t.process(0, () => CHAIN_WAIT_SOURCE);
  assert.equal(usedFlags() & VIRTQ_USED_F_NO_NOTIFY, VIRTQ_USED_F_NO_NOTIFY, "the driver need not kick");
  assert.equal(r.d.usedIdx(0), 0, "the chain stays on the ring");
  r.t.process(0, () => undefined);
  assert.equal(usedFlags() & VIRTQ_USED_F_NO_NOTIFY, 0, "undefined asks for the driver's kick");
  r.run();
  assert.deepEqual(r.d.takeUsed(0), [{ id: head, len: 64 }], "the same chain is served later");
  assert.equal(usedFlags() & VIRTQ_USED_F_NO_NOTIFY, 0, "the ring ran dry: notifications on");
});
