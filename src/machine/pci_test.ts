import assert from "node:assert/strict";
import { fakeMemory, TestDriver } from "../devices/virtio/_testing.ts";
import { VirtioPciDevices } from "./pci.ts";
import {
  BlockRequestHandler,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
} from "../devices/virtio/block/block.ts";
import { VirtioPciTransport } from "../devices/virtio/pci_transport.ts";
import type { GuestMemory } from "../memory/guest_memory.ts";

function header(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(16);
  const dv = new DataView(h.buffer);
  dv.setUint32(0, type, true);
  dv.setBigUint64(8, BigInt(sector), true);
  return h;
}

/** Serves queue 0 of the first block device in this thread (what the I/O Worker does). */
function serve(pci: VirtioPciDevices, memory: GuestMemory): () => void {
  const plan = pci.ioPlan(memory.layout).devices[0]!;
  if (plan.kind !== "virtio-blk") throw new TypeError("expected a block device");
  // A view of the same function with guest memory, as the I/O Worker builds it.
  const worker = new VirtioPciTransport({ plan: plan.transport, memory });
  const h = new BlockRequestHandler({ plan: plan.block, memory, transport: worker });
  return () => void worker.process(0, (c) => h.handle(c));
}

Deno.test("virtio-blk-pci migrates: a fresh destination continues the rings and takes over the image lock", () => {
  const file = Deno.makeTempFileSync({ suffix: ".img" });
  Deno.truncateSync(file, 1 << 20);
  const memory = fakeMemory(4 << 20);
  const drive = { id: "rootfs", file, readonly: false, direct: false, serial: "mig" };
  const src = new VirtioPciDevices();
  let dst: VirtioPciDevices | undefined;
  try {
    src.addBlock(drive, { addr: { slot: 4, fn: 0 } });
    src.wireKvm();
    const srcT = src.migratables()[0] as VirtioPciTransport;
    const d = new TestDriver(memory, srcT.bar0);
    d.init({ numQueues: 1 });
    const serveSrc = serve(src, memory);
    const a = new Uint8Array(512).fill(0xa1);
    d.submit(0, [{ data: header(VIRTIO_BLK_T_OUT, 0), writable: false }, { data: a, writable: false }, {
      len: 1,
      writable: true,
    }]);
    serveSrc();
    assert.equal(d.takeUsed(0).length, 1);
    // A request the guest queued but the source never served (notified after the pause).
    const b = new Uint8Array(512).fill(0xb2);
    const pending = d.submit(0, [{ data: header(VIRTIO_BLK_T_OUT, 1), writable: false }, {
      data: b,
      writable: false,
    }, {
      len: 1,
      writable: true,
    }]);

    // Source paused: save every section, release the lock at switchover.
    const sections = src.migratables().map((m) => ({ id: m.id, version: m.stateVersion, state: m.save() }));
    dst = new VirtioPciDevices();
    dst.addBlock(drive, { addr: { slot: 4, fn: 0 }, lock: "deferred" });
    assert.deepEqual(dst.configAttributes(), src.configAttributes(), "same configuration digest");
    assert.throws(() => dst!.acquireLocks(), /another process holds it/, "the source still holds the image");
    src.onSwitchover();
    for (const m of dst.migratables()) {
      const s = sections.find((x) => x.id === m.id)!;
      m.restore(s.state, s.version);
    }
    dst.acquireLocks();
    // The destination serves the pending request and a new one on the same rings.
    const dstT = dst.migratables()[0] as VirtioPciTransport;
    const d2 = new TestDriver(memory, dstT.bar0);
    Object.assign(d2.queues, d.queues);
    const serveDst = serve(dst, memory);
    serveDst();
    const used = d2.takeUsed(0);
    assert.deepEqual(used.map((u) => u.id), [pending]);
    assert.equal(d2.buffer(0, pending, 2)[0], VIRTIO_BLK_S_OK);
    const rd = d2.submit(0, [{ data: header(VIRTIO_BLK_T_IN, 0), writable: false }, {
      len: 1024,
      writable: true,
    }, {
      len: 1,
      writable: true,
    }]);
    serveDst();
    assert.deepEqual(d2.buffer(0, rd, 1), new Uint8Array([...a, ...b]));
    assert.equal(dstT.queueRegs(0).nextUsed, 3);
  } finally {
    dst?.close();
    src.close();
    Deno.removeSync(file);
  }
});
