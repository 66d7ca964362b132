import assert from "node:assert/strict";
import type { BusDevice } from "../devices/device.ts";
import { MmioBus, PioBus } from "./bus.ts";

class Recorder implements BusDevice {
  log: string[] = [];
  read(offset: number, data: Uint8Array): void {
    this.log.push(`r${offset}/${data.length}`);
    data.fill(offset);
  }
  write(offset: number, data: Uint8Array): void {
    this.log.push(`w${offset}=${[...data].join(",")}`);
  }
}

Deno.test("PioBus dispatches reads and writes with the offset from the range base", () => {
  const bus = new PioBus();
  const d = new Recorder();
  bus.register(0x3f8, 8, d, "serial:ttyS0");
  const data = new Uint8Array(2);
  bus.read(0x3fd, data);
  bus.write(0x3f8, Uint8Array.of(0x41));
  assert.deepEqual(d.log, ["r5/2", "w0=65"]);
  assert.deepEqual([...data], [5, 5]);
});

Deno.test("PioBus refuses an overlapping range and names both ids", () => {
  const bus = new PioBus();
  bus.register(0x3f8, 8, new Recorder(), "serial:ttyS0");
  assert.throws(() => bus.register(0x3fc, 8, new Recorder(), "other"), {
    name: "RangeError",
    message: "Cannot register 'other' at 0x3fc..0x403: overlaps 'serial:ttyS0' at 0x3f8..0x3ff",
  });
  assert.throws(() => bus.register(0xffff, 2, new Recorder(), "wrap"), RangeError);
  bus.register(0x400, 1, new Recorder(), "adjacent");
  assert.deepEqual(bus.ranges().map((r) => r.id), ["serial:ttyS0", "adjacent"]);
});

Deno.test("PioBus reads 0xff from an unclaimed port and ignores writes to it", () => {
  const bus = new PioBus();
  const data = Uint8Array.of(1, 2, 3, 4);
  bus.read(0x1234, data);
  assert.deepEqual([...data], [0xff, 0xff, 0xff, 0xff]);
  for (let i = 0; i < 100; i++) bus.write(0x1234, Uint8Array.of(i)); // rate-limited debug log, no throw
});

Deno.test("PioBus unregister frees the ports for reuse", () => {
  const bus = new PioBus();
  bus.register(0x80, 1, new Recorder(), "debug-port");
  assert.equal(bus.unregister("debug-port"), 1);
  const d = Uint8Array.of(0);
  bus.read(0x80, d);
  assert.equal(d[0], 0xff);
  bus.register(0x80, 1, new Recorder(), "again");
});

Deno.test("MmioBus finds ranges by binary search, refuses overlaps, reads 0xff when unclaimed", () => {
  const bus = new MmioBus();
  const a = new Recorder(), b = new Recorder(), c = new Recorder();
  bus.register(0xfee00000, 0x1000, b, "lapic");
  bus.register(0xfec00000, 0x1000, a, "ioapic");
  bus.register(0xd0000000, 0x10000, c, "virtio-blk/rootfs");
  assert.throws(() => bus.register(0xfec00800, 0x1000, new Recorder(), "late"), {
    message: "Cannot register 'late' at 0xfec00800..0xfec017ff: overlaps 'ioapic' at 0xfec00000..0xfec00fff",
  });
  assert.throws(() => bus.register(0xfedff000, 0x2000, new Recorder(), "span"), /overlaps 'lapic'/);
  const d = new Uint8Array(4);
  bus.read(0xfec00010, d);
  bus.write(0xfee00ff0, Uint8Array.of(7));
  bus.read(0xd000ffff, d);
  assert.deepEqual(a.log, ["r16/4"]);
  assert.deepEqual(b.log, ["w4080=7"]);
  assert.deepEqual(c.log, ["r65535/4"]);
  bus.read(0xfec01000, d);
  assert.deepEqual([...d], [0xff, 0xff, 0xff, 0xff]);
  assert.deepEqual(bus.ranges().map((r) => r.id), ["virtio-blk/rootfs", "ioapic", "lapic"]);
  assert.equal(bus.unregister("ioapic"), 1);
  bus.register(0xfec00800, 0x1000, new Recorder(), "late");
});

Deno.test("PioBus lookup costs about nothing", () => {
  const bus = new PioBus();
  for (let i = 0; i < 64; i++) bus.register(0x1000 + i * 16, 16, new Recorder(), `d${i}`);
  const sink: BusDevice = { read() {}, write() {} };
  bus.register(0x80, 1, sink, "sink");
  const data = new Uint8Array(1);
  const n = 1_000_000;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) bus.write(0x80, data);
  const nsPerOp = (performance.now() - t0) * 1e6 / n;
  assert.ok(nsPerOp < 500, `dispatch took ${nsPerOp.toFixed(1)} ns`);
});
