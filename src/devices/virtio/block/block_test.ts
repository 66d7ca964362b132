import assert from "node:assert/strict";
import { assertMigratable } from "../../_testing.ts";
import { fakeMemory, TestDriver, testPlan, testTransport } from "../_testing.ts";
import {
  BLK_CFG_WRITEBACK,
  BlockRequestHandler,
  type DriveConfig,
  VIRTIO_BLK_F_RO,
  VIRTIO_BLK_S_IOERR,
  VIRTIO_BLK_S_OK,
  VIRTIO_BLK_S_UNSUPP,
  VIRTIO_BLK_T_FLUSH,
  VIRTIO_BLK_T_GET_ID,
  VIRTIO_BLK_T_IN,
  VIRTIO_BLK_T_OUT,
  VirtioBlk,
} from "./block.ts";
import { BlockImage } from "./image.ts";
import { BlockUringServer } from "./uring_server.ts";
import { CC_STATUS } from "../pci_transport.ts";
import { GuestMemory, newDirtyBitmap, PAGE_SIZE } from "../../../memory/guest_memory.ts";
import { shim, viewAt } from "../../../ffi/shim.ts";

function image(sizeBytes = 1 << 20): string {
  const path = Deno.makeTempFileSync({ prefix: "ferry-blk-", suffix: ".img" });
  Deno.truncateSync(path, sizeBytes);
  return path;
}

function header(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(16);
  const dv = new DataView(h.buffer);
  dv.setUint32(0, type, true);
  dv.setBigUint64(8, BigInt(sector), true);
  return h;
}

/** The two request paths: io_uring (the I/O Worker's) and one request at a time (without io_uring). */
const PATHS = ["uring", "sync"] as const;
type Path = typeof PATHS[number];

function rig(drive: Partial<DriveConfig> & { file: string }, path: Path = "uring") {
  const blk = new VirtioBlk({ drive: { id: "rootfs", readonly: false, direct: false, ...drive } });
  const memory = fakeMemory(8 << 20);
  const t = testTransport({ plan: { ...testPlan(blk.info), deviceId: blk.id }, memory, fire: () => {} });
  blk.attach(t);
  const d = new TestDriver(memory, t.bar0);
  d.init({ numQueues: 1 });
  let run: () => void, close: () => void;
  if (path === "uring") {
    const srv = new BlockUringServer({ plan: blk.backendPlan(), memory, transport: t });
    run = () => {
      srv.work();
      srv.drain();
    };
    close = () => srv.close();
  } else {
    const handler = new BlockRequestHandler({ plan: blk.backendPlan(), memory, transport: t });
    run = () => void t.process(0, (c) => handler.handle(c));
    close = () => handler.close();
  }
  const cleanup = () => {
    close();
    blk.close();
    Deno.removeSync(drive.file);
  };
  return { blk, memory, t, d, run, cleanup };
}

function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed) & 0xff;
  return b;
}

for (const path of PATHS) {
  for (const direct of [false, true]) {
    Deno.test(`VirtioBlk writes a pattern and reads it back; the file holds it (direct=${direct ? "on" : "off"}, ${path})`, () => {
      const r = rig({ file: image(), direct }, path);
      try {
        const data = pattern(4096 * 3, 5);
        // Split the data over three descriptors, one of them unaligned in guest RAM.
        const w = r.d.submit(0, [
          { data: header(VIRTIO_BLK_T_OUT, 8), writable: false },
          { data: data.subarray(0, 4096), writable: false },
          { data: data.subarray(4096), writable: false },
          { len: 1, writable: true },
        ]);
        r.run();
        assert.deepEqual(r.d.takeUsed(0), [{ id: w, len: 1 }]);
        assert.equal(r.d.buffer(0, w, 3)[0], VIRTIO_BLK_S_OK);
        const onDisk = Deno.readFileSync(r.blk.image.path).subarray(8 * 512, 8 * 512 + data.length);
        assert.deepEqual(onDisk, data);
        const rd = r.d.submit(0, [{ data: header(VIRTIO_BLK_T_IN, 8), writable: false }, {
          len: 8192,
          writable: true,
        }, {
          len: 4096,
          writable: true,
        }, { len: 1, writable: true }]);
        r.run();
        assert.deepEqual(r.d.takeUsed(0), [{ id: rd, len: 12289 }]);
        assert.equal(r.d.buffer(0, rd, 3)[0], VIRTIO_BLK_S_OK);
        assert.deepEqual(r.d.buffer(0, rd, 1), data.subarray(0, 8192));
        assert.deepEqual(r.d.buffer(0, rd, 2), data.subarray(8192));
      } finally {
        r.cleanup();
      }
    });
  }
}

for (const path of PATHS) {
  Deno.test(`VirtioBlk marks pages it read into as dirty (${path})`, () => {
    const r = rig({ file: image() }, path);
    try {
      const bitmap = new Uint32Array(r.memory.regions[0]!.dirtyWords.length);
      r.memory.takeVmmDirty(0, bitmap);
      bitmap.fill(0);
      const rd = r.d.submit(0, [{ data: header(VIRTIO_BLK_T_IN, 0), writable: false }, {
        len: 3 * 4096,
        writable: true,
      }, {
        len: 1,
        writable: true,
      }]);
      r.run();
      r.memory.takeVmmDirty(0, bitmap);
      const gpa = r.d.queues[0]!.buffers.get(rd)![1]!.gpa;
      for (let p = Math.floor(gpa / PAGE_SIZE); p <= Math.floor((gpa + 3 * 4096 - 1) / PAGE_SIZE); p++) {
        assert.ok(bitmap[p >>> 5]! & (1 << (p & 31)), `page ${p} is dirty`);
      }
    } finally {
      r.cleanup();
    }
  });
}

for (const path of PATHS) {
  Deno.test(`VirtioBlk read-only drive offers VIRTIO_BLK_F_RO and fails writes with IOERR (${path})`, () => {
    const file = image();
    Deno.writeFileSync(file, new Uint8Array(512).fill(0x11));
    Deno.truncateSync(file, 1 << 20);
    const r = rig({ file, readonly: true }, path);
    try {
      assert.ok(r.d.deviceFeatures() & (1n << BigInt(VIRTIO_BLK_F_RO)));
      const w = r.d.submit(0, [{ data: header(VIRTIO_BLK_T_OUT, 0), writable: false }, {
        data: new Uint8Array(512),
        writable: false,
      }, {
        len: 1,
        writable: true,
      }]);
      r.run();
      assert.equal(r.d.buffer(0, w, 2)[0], VIRTIO_BLK_S_IOERR);
      assert.equal(Deno.readFileSync(file)[0], 0x11, "the image is untouched");
      const f = r.d.submit(0, [{ data: header(VIRTIO_BLK_T_FLUSH, 0), writable: false }, {
        len: 1,
        writable: true,
      }]);
      r.run();
      assert.equal(r.d.buffer(0, f, 1)[0], VIRTIO_BLK_S_OK);
    } finally {
      r.cleanup();
    }
  });
}

for (const path of PATHS) {
  Deno.test(`VirtioBlk GET_ID returns the serial, NUL-padded (${path})`, () => {
    const r = rig({ file: image(), serial: "ferry-disk-1" }, path);
    try {
      const id = r.d.submit(0, [{ data: header(VIRTIO_BLK_T_GET_ID, 0), writable: false }, {
        len: 20,
        writable: true,
      }, {
        len: 1,
        writable: true,
      }]);
      r.run();
      assert.deepEqual(r.d.takeUsed(0), [{ id, len: 21 }]);
      const got = r.d.buffer(0, id, 1);
      assert.equal(new TextDecoder().decode(got.subarray(0, 12)), "ferry-disk-1");
      assert.ok(got.subarray(12).every((b) => b === 0));
      assert.throws(
        () =>
          new VirtioBlk({
            drive: { id: "x", file: "/nonexistent", readonly: false, direct: false, serial: "x".repeat(21) },
          }),
        /longer than 20 bytes/,
      );
    } finally {
      r.cleanup();
    }
  });
}

for (const path of PATHS) {
  Deno.test(`VirtioBlk answers bad requests with IOERR and unknown types with UNSUPP (${path})`, () => {
    const r = rig({ file: image(64 * 512) }, path);
    try {
      const past = r.d.submit(0, [{ data: header(VIRTIO_BLK_T_IN, 63), writable: false }, {
        len: 1024,
        writable: true,
      }, {
        len: 1,
        writable: true,
      }]);
      const odd = r.d.submit(0, [{ data: header(VIRTIO_BLK_T_OUT, 0), writable: false }, {
        data: new Uint8Array(100),
        writable: false,
      }, {
        len: 1,
        writable: true,
      }]);
      const unknown = r.d.submit(0, [{ data: header(77, 0), writable: false }, { len: 1, writable: true }]);
      const short = r.d.submit(0, [{ data: new Uint8Array(8), writable: false }, { len: 1, writable: true }]);
      r.run();
      assert.equal(r.d.buffer(0, past, 2)[0], VIRTIO_BLK_S_IOERR);
      assert.equal(r.d.buffer(0, odd, 2)[0], VIRTIO_BLK_S_IOERR);
      assert.equal(r.d.buffer(0, unknown, 1)[0], VIRTIO_BLK_S_UNSUPP);
      assert.equal(r.d.buffer(0, short, 1)[0], VIRTIO_BLK_S_IOERR);
      assert.equal(r.d.takeUsed(0).length, 4);
    } finally {
      r.cleanup();
    }
  });
}

for (const path of PATHS) {
  Deno.test(`VirtioBlk shows capacity in config space and flushes (${path})`, () => {
    const r = rig({ file: image(3 << 20) }, path);
    try {
      assert.equal(r.d.read32(0x2000), (3 << 20) / 512);
      const f = r.d.submit(0, [{ data: header(VIRTIO_BLK_T_FLUSH, 0), writable: false }, {
        len: 1,
        writable: true,
      }]);
      r.run();
      assert.equal(r.d.buffer(0, f, 1)[0], VIRTIO_BLK_S_OK);
    } finally {
      r.cleanup();
    }
  });
}

Deno.test("BlockImage refuses a second opener of the same image, and hands the lock over", () => {
  const file = image();
  const first = new BlockImage({ driveId: "rootfs", path: file, readonly: false, direct: false });
  try {
    assert.throws(
      () => new BlockImage({ driveId: "other", path: file, readonly: false, direct: false }),
      /Cannot lock image '.*' of drive 'other': another process holds it/,
    );
    assert.throws(
      () => new BlockImage({ driveId: "ro", path: file, readonly: true, direct: false }),
      /another process holds it/,
    );
    // Migration: the destination opens without the lock, the source releases, the destination takes it.
    const dest = new BlockImage({
      driveId: "rootfs",
      path: file,
      readonly: false,
      direct: false,
      lock: "deferred",
    });
    assert.equal(dest.lockHeld, false);
    assert.throws(() => dest.acquireLock(), /another process holds it/);
    first.releaseLock();
    dest.acquireLock();
    assert.throws(
      () => first.acquireLock(),
      /another process holds it/,
      "the source cannot take it back while the destination runs",
    );
    dest.close();
    first.acquireLock(); // after a failed migration the source takes it back
    assert.ok(first.lockHeld);
  } finally {
    first.close();
    Deno.removeSync(file);
  }
});

Deno.test("BlockImage lets read-only users share an image", () => {
  const file = image();
  const a = new BlockImage({ driveId: "a", path: file, readonly: true, direct: false });
  const b = new BlockImage({ driveId: "b", path: file, readonly: true, direct: false });
  a.close();
  b.close();
  Deno.removeSync(file);
});

Deno.test("VirtioBlk write-through mode (writeback=0) is the driver's choice and migrates", () => {
  const file = image();
  const blks: VirtioBlk[] = [];
  try {
    assertMigratable({
      make: () => {
        // Unlocked, so several instances can coexist as the conformance check needs.
        const blk = new VirtioBlk({
          drive: { id: "rootfs", file, readonly: false, direct: false, serial: "s1" },
          lock: "deferred",
        });
        blks.push(blk);
        blk.attach(testTransport({ plan: testPlan(blk.info), fire: () => {} }));
        return blk;
      },
      mutate: (blk) => {
        const t = testTransport({ plan: testPlan(blk.info), fire: () => {} });
        blk.attach(t);
        t.bar0.write(0x2000 + BLK_CFG_WRITEBACK, Uint8Array.of(0));
      },
      invalid: [{ field: "capacitySectors", value: 1 }, { field: "serial", value: Uint8Array.of(1) }],
    });
  } finally {
    for (const b of blks) b.close();
    Deno.removeSync(file);
  }
});

/** Guest RAM in a real page-aligned mapping (so O_DIRECT can take its buffers), with its unmap. */
function mappedMemory(sizeBytes: number): { memory: GuestMemory; unmap: () => void } {
  const addr = BigInt(shim().ferry_mmap(0n, BigInt(sizeBytes), 3, 0x22, -1, 0n));
  assert.ok(addr > 0n, "mmap");
  const memory = new GuestMemory(
    { regions: [{ gpa: 0, sizeBytes, slot: 0, hostAddr: addr, vmmDirty: newDirtyBitmap(sizeBytes) }] },
    (a, n) => viewAt(a, n),
  );
  return { memory, unmap: () => void shim().ferry_munmap(addr, BigInt(sizeBytes)) };
}

/**
 * A virtio-blk device on a 4 MiB temp image, driven by a TestDriver (one queue of 256) through a
 * BlockUringServer; `close()` releases everything.
 */
function uringRig(o: { direct: boolean; writeback?: boolean; pollUs?: number; refillPollUs?: number }) {
  const file = image(4 << 20);
  const blk = new VirtioBlk({ drive: { id: "rootfs", file, readonly: false, direct: o.direct } });
  const { memory, unmap } = mappedMemory(8 << 20);
  const t = testTransport({ plan: { ...testPlan(blk.info), deviceId: blk.id }, memory, fire: () => {} });
  blk.attach(t);
  const d = new TestDriver(memory, t.bar0);
  d.init({ numQueues: 1, queueSizes: [256] });
  if (o.writeback === false) t.bar0.write(0x2000 + BLK_CFG_WRITEBACK, Uint8Array.of(0));
  const srv = new BlockUringServer({
    plan: blk.backendPlan(),
    memory,
    transport: t,
    ...(o.pollUs !== undefined ? { pollUs: o.pollUs } : {}),
    ...(o.refillPollUs !== undefined ? { refillPollUs: o.refillPollUs } : {}),
  });
  const close = () => {
    srv.close();
    blk.close();
    unmap();
    Deno.removeSync(file);
  };
  return { file, t, d, srv, close };
}

for (const direct of [false, true]) {
  for (const writeback of [true, false]) {
    Deno.test(
      `BlockUringServer: 64 writes then 64 reads taken in one pass each all complete with the data ` +
        `(direct=${direct ? "on" : "off"}, ${writeback ? "writeback" : "write-through"})`,
      () => {
        const { file, d, srv, close } = uringRig({ direct, writeback });
        try {
          const n = 64, size = 4096;
          const heads = [];
          for (let i = 0; i < n; i++) {
            heads.push(d.submit(0, [
              { data: header(VIRTIO_BLK_T_OUT, i * 8), writable: false },
              { data: pattern(size, i), writable: false, align: 4096 },
              { len: 1, writable: true },
            ]));
          }
          assert.equal(srv.work(), "idle");
          srv.drain();
          assert.equal(srv.inFlight, 0);
          const used = d.takeUsed(0);
          assert.deepEqual(used.map((u) => u.id).sort((a, b) => a - b), [...heads].sort((a, b) => a - b));
          assert.ok(used.every((u) => u.len === 1));
          for (const h of heads) assert.equal(d.buffer(0, h, 2)[0], VIRTIO_BLK_S_OK);
          const disk = Deno.readFileSync(file);
          for (let i = 0; i < n; i++) {
            assert.deepEqual(disk.subarray(i * size, (i + 1) * size), pattern(size, i), `block ${i} on disk`);
          }
          const reads = [];
          for (let i = 0; i < n; i++) {
            reads.push(d.submit(0, [
              { data: header(VIRTIO_BLK_T_IN, i * 8), writable: false },
              { len: size, writable: true, align: 4096 },
              { len: 1, writable: true },
            ]));
          }
          srv.work();
          srv.drain();
          const rused = d.takeUsed(0);
          assert.equal(rused.length, n);
          assert.ok(rused.every((u) => u.len === size + 1));
          reads.forEach((h, i) => {
            assert.equal(d.buffer(0, h, 2)[0], VIRTIO_BLK_S_OK);
            assert.deepEqual(d.buffer(0, h, 1), pattern(size, i), `block ${i} read back`);
          });
        } finally {
          close();
        }
      },
    );
  }
}

Deno.test("BlockUringServer drain: requests submitted and not yet reaped complete before drain returns", () => {
  const { file, t, d, srv, close } = uringRig({ direct: true, pollUs: 0 });
  try {
    for (let i = 0; i < 32; i++) {
      d.submit(0, [
        { data: header(VIRTIO_BLK_T_OUT, i * 8), writable: false },
        { data: pattern(4096, i), writable: false, align: 4096 },
        { len: 1, writable: true },
      ]);
    }
    srv.submitAvailable();
    assert.equal(srv.inFlight, 32, "all 32 are in flight at once");
    assert.equal(d.usedIdx(0), 0, "none is completed before its CQE is reaped");
    assert.equal(srv.drain(), 32);
    assert.equal(srv.inFlight, 0);
    assert.equal(d.usedIdx(0), 32);
    const q = (t.save() as { queues: { nextAvail: number; nextUsed: number }[] }).queues[0]!;
    assert.equal(q.nextAvail, 32);
    assert.equal(q.nextUsed, 32, "the saved queue has nothing taken and not used");
    const disk = Deno.readFileSync(file);
    for (let i = 0; i < 32; i++) assert.deepEqual(disk.subarray(i * 4096, (i + 1) * 4096), pattern(4096, i));
  } finally {
    close();
  }
});

Deno.test("BlockUringServer refill poll: after completions it takes the chains the driver added without notifying, then asks for notifications again", () => {
  const { d, srv, close } = uringRig({ direct: false, pollUs: 0, refillPollUs: 32 });
  const read = (sector: number) =>
    d.submit(0, [
      { data: header(VIRTIO_BLK_T_IN, sector), writable: false },
      { len: 4096, writable: true, align: 4096 },
      { len: 1, writable: true },
    ]);
  try {
    const first = read(0);
    srv.submitAvailable();
    assert.equal(srv.inFlight, 1);
    while (srv.ring.completed === 0) srv.ring.submit(1); // wait for its CQE
    const second = read(8); // the driver refills without a notification (it polls)
    assert.equal(srv.completions(), "idle");
    assert.equal(d.usedIdx(0) >= 1, true, "the completion is published");
    assert.equal(srv.inFlight + d.usedIdx(0), 2, "the refilled chain was taken in the same pass");
    assert.equal(d.usedFlags(0) & 1, 0, "notifications are on again after the pass");
    srv.drain();
    const used = d.takeUsed(0).map((u) => u.id);
    assert.deepEqual(used, [first, second]);
    // No refill: the pass polls, publishes the completion, and turns notifications back on.
    read(16);
    srv.submitAvailable();
    while (srv.ring.completed === 0) srv.ring.submit(1);
    srv.completions();
    assert.equal(srv.inFlight, 0);
    assert.equal(d.usedIdx(0), 3);
    assert.equal(d.usedFlags(0) & 1, 0);
  } finally {
    close();
  }
});

Deno.test("BlockUringServer: a driver reset with requests in flight completes only after them, and publishes none", () => {
  const { t, d, srv, close } = uringRig({ direct: true, pollUs: 0 });
  try {
    for (let i = 0; i < 8; i++) {
      d.submit(0, [
        { data: header(VIRTIO_BLK_T_IN, i * 8), writable: false },
        { len: 4096, writable: true, align: 4096 },
        { len: 1, writable: true },
      ]);
    }
    srv.submitAvailable();
    assert.equal(srv.inFlight, 8);
    const before = t.resetCount;
    d.write8(CC_STATUS, 0);
    assert.notEqual(d.read8(CC_STATUS), 0, "the reset waits for the requests in flight");
    srv.drain();
    assert.equal(d.read8(CC_STATUS), 0, "then it completes");
    assert.equal(t.resetCount, before + 1);
    assert.equal(d.usedIdx(0), 0, "no completion reached the reset ring");
  } finally {
    close();
  }
});

for (const direct of [false, true]) {
  Deno.test(
    `BlockUringServer merges adjacent requests of a pass, in sector order, each with its own status ` +
      `(direct=${direct ? "on" : "off"})`,
    () => {
      const { file, d, srv, close } = uringRig({ direct, pollUs: 0 });
      try {
        // Two runs of 8 KiB requests (8 KiB blocks 0..11 and 20..23) given in shuffled order; each request's
        // data in two 4 KiB buffers.
        const blocks = [5, 21, 0, 3, 11, 20, 1, 7, 2, 23, 9, 4, 10, 22, 6, 8];
        const heads = blocks.map((b) =>
          d.submit(0, [
            { data: header(VIRTIO_BLK_T_OUT, b * 16), writable: false },
            { data: pattern(4096, 2 * b), writable: false, align: 4096 },
            { data: pattern(4096, 2 * b + 1), writable: false, align: 4096 },
            { len: 1, writable: true },
          ])
        );
        const ops0 = srv.operations;
        srv.work();
        srv.drain();
        assert.equal(srv.operations - ops0, 2, "one operation per run of adjacent requests");
        assert.equal(d.takeUsed(0).length, blocks.length);
        for (const h of heads) assert.equal(d.buffer(0, h, 3)[0], VIRTIO_BLK_S_OK);
        const disk = Deno.readFileSync(file);
        for (const b of blocks) {
          assert.deepEqual(disk.subarray(b * 8192, b * 8192 + 4096), pattern(4096, 2 * b), `block ${b}`);
          assert.deepEqual(disk.subarray(b * 8192 + 4096, (b + 1) * 8192), pattern(4096, 2 * b + 1));
        }
        // Read 4 KiB blocks 0..15 back in 16 requests: past the first 12 the image was truncated meanwhile,
        // so the merged read comes back short and is redone buffer by buffer: zeros there, each OK.
        Deno.truncateSync(file, 12 * 4096);
        const reads = [];
        for (let b = 0; b < 16; b++) {
          reads.push(d.submit(0, [
            { data: header(VIRTIO_BLK_T_IN, b * 8), writable: false },
            { data: new Uint8Array(4096).fill(0xee), writable: true, align: 4096 },
            { len: 1, writable: true },
          ]));
        }
        const ops1 = srv.operations;
        srv.work();
        srv.drain();
        assert.equal(srv.operations - ops1, 1);
        assert.equal(d.takeUsed(0).length, 16);
        reads.forEach((h, b) => {
          assert.equal(d.buffer(0, h, 2)[0], VIRTIO_BLK_S_OK, `status of block ${b}`);
          const got = d.buffer(0, h, 1);
          if (b < 12) assert.deepEqual(got, pattern(4096, b), `block ${b} read back`);
          else assert.ok(got.every((x) => x === 0), `block ${b} past the end reads as zeros`);
        });
      } finally {
        close();
      }
    },
  );
}
