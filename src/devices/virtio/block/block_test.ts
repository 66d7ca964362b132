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
import { PAGE_SIZE } from "../../../memory/guest_memory.ts";

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

function rig(drive: Partial<DriveConfig> & { file: string }) {
  const blk = new VirtioBlk({ drive: { id: "rootfs", readonly: false, direct: false, ...drive } });
  const memory = fakeMemory(8 << 20);
  const t = testTransport({ plan: { ...testPlan(blk.info), deviceId: blk.id }, memory, fire: () => {} });
  blk.attach(t);
  const handler = new BlockRequestHandler({ plan: blk.backendPlan(), memory, transport: t });
  const d = new TestDriver(memory, t.bar0);
  d.init({ numQueues: 1 });
  const run = () => t.process(0, (c) => handler.handle(c));
  const cleanup = () => {
    handler.close();
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

for (const direct of [false, true]) {
  Deno.test(`VirtioBlk writes a pattern and reads it back; the file holds it (direct=${direct ? "on" : "off"})`, () => {
    const r = rig({ file: image(), direct });
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

Deno.test("VirtioBlk marks pages it read into as dirty", () => {
  const r = rig({ file: image() });
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

Deno.test("VirtioBlk read-only drive offers VIRTIO_BLK_F_RO and fails writes with IOERR", () => {
  const file = image();
  Deno.writeFileSync(file, new Uint8Array(512).fill(0x11));
  Deno.truncateSync(file, 1 << 20);
  const r = rig({ file, readonly: true });
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

Deno.test("VirtioBlk GET_ID returns the serial, NUL-padded", () => {
  const r = rig({ file: image(), serial: "ferry-disk-1" });
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

Deno.test("VirtioBlk answers bad requests with IOERR and unknown types with UNSUPP", () => {
  const r = rig({ file: image(64 * 512) });
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

Deno.test("VirtioBlk shows capacity in config space and flushes", () => {
  const r = rig({ file: image(3 << 20) });
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
