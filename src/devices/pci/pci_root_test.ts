import assert from "node:assert/strict";
import { PciConfigSpace, type PciFunctionSpec } from "./config_space.ts";
import { type PciFunction, PciRoot, Q35_HOST_DEVICE_ID, Q35_HOST_VENDOR_ID } from "./pci_root.ts";

/** q35's windows (the machine passes them from its memory map). */
const Q35 = {
  ecam: { base: 0xb000_0000, sizeBytes: 0x1000_0000 },
  window: { base: 0xc000_0000, sizeBytes: 0xfec0_0000 - 0xc000_0000 },
};

const SPEC: PciFunctionSpec = {
  vendorId: 0x1af4,
  deviceId: 0x1042,
  revisionId: 1,
  classCode: 0x010000,
  subsystemVendorId: 0x1af4,
  subsystemId: 0x1100,
  bars: [{ index: 0, sizeBytes: 0x8000, is64: true, prefetchable: false }, {
    index: 2,
    sizeBytes: 0x1000,
    is64: false,
    prefetchable: false,
  }],
  interruptPin: 1,
  capabilities: [{ id: 0x09, bytes: Uint8Array.of(0, 0, 4, 0xaa) }],
};

class FakeFn implements PciFunction {
  readonly id: string;
  readonly config: PciConfigSpace;
  readonly log: string[] = [];
  constructor(id: string, shared = PciConfigSpace.createShared(SPEC)) {
    this.id = id;
    this.config = new PciConfigSpace({ shared, spec: SPEC });
  }
  readBar(bar: number, offset: number, data: Uint8Array): void {
    this.log.push(`r${bar}:${offset.toString(16)}`);
    data.fill(0x5a);
  }
  writeBar(bar: number, offset: number, data: Uint8Array): void {
    this.log.push(`w${bar}:${offset.toString(16)}=${data[0]}`);
  }
}

function cf8Read(root: PciRoot, slot: number, fn: number, reg: number, len = 4): number {
  const a = new Uint8Array(4);
  new DataView(a.buffer).setUint32(0, (0x80000000 | (slot << 11) | (fn << 8) | (reg & 0xfc)) >>> 0, true);
  root.configAddressPort.write(0, a);
  const d = new Uint8Array(len);
  root.configDataPort.read(reg & 3, d);
  return len === 4
    ? new DataView(d.buffer).getUint32(0, true)
    : len === 2
    ? new DataView(d.buffer).getUint16(0, true)
    : d[0]!;
}

function cf8Write(root: PciRoot, slot: number, fn: number, reg: number, v: number): void {
  const a = new Uint8Array(4);
  new DataView(a.buffer).setUint32(0, (0x80000000 | (slot << 11) | (fn << 8) | (reg & 0xfc)) >>> 0, true);
  root.configAddressPort.write(0, a);
  const d = new Uint8Array(4);
  new DataView(d.buffer).setUint32(0, v >>> 0, true);
  root.configDataPort.write(0, d);
}

function ecamRead(root: PciRoot, slot: number, fn: number, reg: number): number {
  const d = new Uint8Array(4);
  root.ecam.read((slot << 15) | (fn << 12) | reg, d);
  return new DataView(d.buffer).getUint32(0, true);
}

function ecamWrite(root: PciRoot, slot: number, fn: number, reg: number, v: number): void {
  const d = new Uint8Array(4);
  new DataView(d.buffer).setUint32(0, v >>> 0, true);
  root.ecam.write((slot << 15) | (fn << 12) | reg, d);
}

Deno.test("PciRoot has the Q35 host bridge at 00.0", () => {
  const root = new PciRoot({ ...Q35, shared: PciRoot.createShared() });
  assert.equal(cf8Read(root, 0, 0, 0), (Q35_HOST_DEVICE_ID << 16 | Q35_HOST_VENDOR_ID) >>> 0);
  assert.equal(cf8Read(root, 0, 0, 8) >>> 8, 0x060000);
  assert.equal(ecamRead(root, 0, 0, 0x60), 0xb0000001, "PCIEXBAR points at the ECAM, enabled");
  assert.equal(cf8Read(root, 1, 0, 0), 0xffffffff, "an empty slot reads all-ones");
});

Deno.test("PciRoot config reads through 0xCF8/0xCFC and ECAM agree", () => {
  const root = new PciRoot({ ...Q35, shared: PciRoot.createShared() });
  const a = root.place("dev/a", { slot: 4, fn: 0 });
  root.attach(a, new FakeFn("dev/a"));
  for (let reg = 0; reg < 0x48; reg += 4) {
    assert.equal(cf8Read(root, 4, 0, reg), ecamRead(root, 4, 0, reg), `reg 0x${reg.toString(16)}`);
  }
  assert.equal(cf8Read(root, 4, 0, 2, 2), 0x1042, "a 16-bit read at 0xCFE");
  ecamWrite(root, 4, 0, 0x3c, 0x0b);
  assert.equal(cf8Read(root, 4, 0, 0x3c, 1), 0x0b, "a write through ECAM reads back through 0xCFC");
  assert.equal(ecamRead(root, 4, 0, 0x34) & 0xff, 0x40, "capability pointer");
  assert.equal(ecamRead(root, 4, 0, 0x04) >>> 16 & 0x10, 0x10, "status shows a capability list");
  // A byte access at 0xCF8 is not the address latch.
  root.configAddressPort.write(0, Uint8Array.of(0));
  assert.equal(cf8Read(root, 4, 0, 0), 0x10421af4);
});

Deno.test("PciRoot BAR sizing reads back the size mask, 32- and 64-bit", () => {
  const root = new PciRoot({ ...Q35, shared: PciRoot.createShared() });
  const a = root.place("dev/a", { slot: 3, fn: 0 });
  root.attach(a, new FakeFn("dev/a"));
  cf8Write(root, 3, 0, 0x10, 0xffffffff);
  cf8Write(root, 3, 0, 0x14, 0xffffffff);
  assert.equal(cf8Read(root, 3, 0, 0x10), (~(0x8000 - 1) & 0xfffffff0 | 0x4) >>> 0, "64-bit type bits stay");
  assert.equal(cf8Read(root, 3, 0, 0x14), 0xffffffff);
  cf8Write(root, 3, 0, 0x18, 0xffffffff);
  assert.equal(cf8Read(root, 3, 0, 0x18), 0xfffff000);
  assert.equal(cf8Read(root, 3, 0, 0x1c), 0, "BAR 3 (none) stays 0");
  cf8Write(root, 3, 0, 0x30, 0xffffffff);
  assert.equal(cf8Read(root, 3, 0, 0x30), 0, "no expansion ROM");
});

Deno.test("PciRoot dispatches BAR accesses by the programmed address while memory decode is on", () => {
  const root = new PciRoot({ ...Q35, shared: PciRoot.createShared() });
  const a = root.place("dev/a", { slot: 5, fn: 0 });
  const fn = new FakeFn("dev/a");
  root.attach(a, fn);
  const [bar0, bar2] = root.allocateBars("dev/a", SPEC.bars);
  assert.equal(bar0, 0xc000_0000);
  assert.equal(bar2, 0xc000_8000);
  fn.config.setBarAddress(0, bar0!);
  fn.config.setBarAddress(2, bar2!);
  const d = new Uint8Array(4);
  root.barWindow.read(0x10, d);
  assert.deepEqual([...d], [0xff, 0xff, 0xff, 0xff], "decode off");
  cf8Write(root, 5, 0, 0x04, 0x2);
  root.barWindow.read(0x10, d);
  root.barWindow.write(0x8004, Uint8Array.of(7));
  assert.deepEqual(fn.log, ["r0:10", "w2:4=7"]);
  // The guest moves BAR 2.
  cf8Write(root, 5, 0, 0x18, 0xc010_0000);
  root.barWindow.read(0x10_0008, d);
  assert.equal(fn.log.at(-1), "r2:8");
});

Deno.test("PciRoot refuses address conflicts and out-of-range addresses, naming the device", () => {
  const root = new PciRoot({ ...Q35, shared: PciRoot.createShared() });
  root.place("virtio-blk/rootfs", { slot: 4, fn: 0 });
  assert.throws(
    () => root.place("virtio-net/net0", { slot: 4, fn: 0 }),
    /Cannot place 'virtio-net\/net0' at pcie.0 addr '0x4.0': already used by 'virtio-blk\/rootfs'/,
  );
  assert.throws(() => root.place("virtio-net/net0", { slot: 0, fn: 0 }), /already used by 'pci-host\/q35'/);
  assert.throws(
    () => root.place("virtio-net/net0", { slot: 0x20, fn: 0 }),
    /Cannot place 'virtio-net\/net0' at addr '0x20.0': outside 0x0..0x1f.7/,
  );
  assert.throws(() => root.place("virtio-net/net0", { slot: 4, fn: 8 }), /outside 0x0..0x1f.7/);
  assert.deepEqual(root.place("auto/1"), { slot: 1, fn: 0 });
  assert.deepEqual(root.place("auto/2"), { slot: 2, fn: 0 });
});

Deno.test("PciRoot validate refuses a function without function 0 in its slot", () => {
  const root = new PciRoot({ ...Q35, shared: PciRoot.createShared() });
  root.place("dev/b", { slot: 6, fn: 2 });
  assert.throws(
    () => root.validate(),
    /Cannot place 'dev\/b' at pcie.0 addr '0x6.2': function 0 of slot 06 is empty/,
  );
  root.place("dev/a", { slot: 6, fn: 0 });
  root.validate();
});

Deno.test("PciRoot sets header type bit 7 on function 0 of a multi-function slot", () => {
  const root = new PciRoot({ ...Q35, shared: PciRoot.createShared() });
  root.attach(root.place("dev/a", { slot: 6, fn: 0 }), new FakeFn("dev/a"));
  assert.equal(cf8Read(root, 6, 0, 0x0e, 1), 0);
  root.attach(root.place("dev/b", { slot: 6, fn: 1 }), new FakeFn("dev/b"));
  assert.equal(cf8Read(root, 6, 0, 0x0c) >>> 16 & 0xff, 0x80);
  assert.equal(cf8Read(root, 6, 1, 0x0e, 1), 0);
});

Deno.test("PciRoot writes the INTx GSI into the interrupt line and shares config across threads", () => {
  const shared = PciConfigSpace.createShared(SPEC);
  const rootShared = PciRoot.createShared();
  const main = new PciRoot({ ...Q35, shared: rootShared });
  const a = main.place("dev/a", { slot: 7, fn: 0 });
  main.attach(a, new FakeFn("dev/a", shared));
  assert.equal(cf8Read(main, 7, 0, 0x3c) & 0xffff, 0x0100 | main.intxGsi(a));
  // A second "thread" over the same buffers sees the same latch and bytes.
  const other = new PciRoot({ ...Q35, shared: rootShared });
  other.attach(a, new FakeFn("dev/a", shared));
  cf8Write(main, 7, 0, 0x04, 0x6);
  const d = new Uint8Array(4);
  other.configDataPort.read(0, d); // the latch set by `main` still points at 07.0 reg 4
  assert.equal(new DataView(d.buffer).getUint16(0, true), 0x6);
});

Deno.test("PciRoot refuses BARs past the end of the window", () => {
  const root = new PciRoot({
    ...Q35,
    shared: PciRoot.createShared(),
    window: { base: 0xc000_0000, sizeBytes: 0x10000 },
  });
  root.allocateBars("dev/a", [{ index: 0, sizeBytes: 0x8000, is64: false, prefetchable: false }]);
  assert.throws(
    () => root.allocateBars("dev/b", [{ index: 0, sizeBytes: 0x10000, is64: false, prefetchable: false }]),
    /Cannot allocate BAR 0 of 'dev\/b' \(0x10000 bytes\): the MMIO window 0xc0000000..0xc000ffff is full/,
  );
});
