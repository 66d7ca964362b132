import assert from "node:assert/strict";
import { assertMigratable } from "../_testing.ts";
import { fakeMemory, TestDriver, testPlan, testTransport } from "./_testing.ts";
import {
  BAR_ISR,
  BAR_MSIX_TABLE,
  BAR_NOTIFY,
  CC_MSIX,
  CC_NUMQ,
  CC_Q_DESC,
  CC_Q_ENABLE,
  CC_Q_MSIX,
  CC_Q_NOFF,
  CC_Q_SELECT,
  CC_Q_SIZE,
  CC_STATUS,
  STATUS_DRIVER_OK,
  STATUS_FEATURES_OK,
  transportId,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_VERSION_1,
  type VirtioDeviceInfo,
  VirtioPciTransport,
} from "./pci_transport.ts";
import { PCI_CAP_ID_MSIX } from "../pci/msix.ts";

const INFO: VirtioDeviceInfo = {
  type: 1,
  queueSizes: [64, 64, 16],
  features: (1n << 5n) | (1n << BigInt(VIRTIO_F_EVENT_IDX)),
  config: Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0),
  writableConfig: [{ offset: 7, length: 1 }],
  pciClass: 0x020000,
};

function rig() {
  const memory = fakeMemory();
  const fired: Array<number | "intx"> = [];
  const notified: number[] = [];
  const plan = testPlan(INFO);
  const t = testTransport({ plan, memory, fire: (x) => fired.push(x), notify: (q) => notified.push(q) });
  const d = new TestDriver(memory, t.bar0);
  return { memory, plan, t, d, fired, notified };
}

Deno.test("VirtioPciTransport offers device features plus VERSION_1 and accepts a subset", () => {
  const r = rig();
  assert.equal(r.d.deviceFeatures(), INFO.features | (1n << BigInt(VIRTIO_F_VERSION_1)));
  const st = r.d.init({ numQueues: 3, features: (1n << 32n) | (1n << 5n) });
  assert.ok(st & STATUS_FEATURES_OK);
  assert.equal(r.t.driverFeatures, (1n << 32n) | (1n << 5n));
  assert.ok(r.t.hasFeature(5));
  assert.ok(!r.t.hasFeature(VIRTIO_F_EVENT_IDX));
  assert.ok(r.t.status & STATUS_DRIVER_OK);
});

Deno.test("VirtioPciTransport refuses FEATURES_OK for unknown features or without VERSION_1", () => {
  const r = rig();
  assert.equal(r.d.init({ numQueues: 3, features: (1n << 32n) | (1n << 40n) }) & STATUS_FEATURES_OK, 0);
  assert.equal(r.d.init({ numQueues: 3, features: 1n << 5n }) & STATUS_FEATURES_OK, 0);
});

Deno.test("VirtioPciTransport sets up queues through common config reads and writes", () => {
  const r = rig();
  assert.equal(r.d.read16(CC_NUMQ), 3);
  r.d.write16(CC_Q_SELECT, 2);
  assert.equal(r.d.read16(CC_Q_SIZE), 16);
  assert.equal(r.d.read16(CC_Q_NOFF), 2);
  r.d.write16(CC_Q_SIZE, 8);
  r.d.write16(CC_Q_SIZE, 12); // not a power of two: ignored
  assert.equal(r.d.read16(CC_Q_SIZE), 8);
  r.d.write32(CC_Q_DESC, 0x1000);
  r.d.write32(CC_Q_DESC + 4, 0x1);
  r.d.write16(CC_Q_MSIX, 3);
  assert.equal(r.d.read16(CC_Q_MSIX), 3);
  r.d.write16(CC_Q_MSIX, 9); // beyond the table: NO_VECTOR reads back
  assert.equal(r.d.read16(CC_Q_MSIX), 0xffff);
  r.d.write16(CC_Q_ENABLE, 1);
  r.d.write32(CC_Q_DESC, 0x2000); // ignored once enabled
  assert.equal(r.d.read32(CC_Q_DESC), 0x1000);
  assert.equal(r.d.read32(CC_Q_DESC + 4), 1);
  const q = r.t.queueRegs(2);
  assert.equal(q.descGpa, 0x1_0000_1000);
  assert.equal(q.size, 8);
  assert.ok(q.enabled);
  r.d.write16(CC_Q_SELECT, 7);
  assert.equal(r.d.read16(CC_Q_SIZE), 0, "a missing queue reads size 0");
});

Deno.test("VirtioPciTransport reset clears status, features and queues", () => {
  const r = rig();
  r.d.init({ numQueues: 3 });
  r.d.write16(CC_MSIX, 0);
  r.d.write8(CC_STATUS, 0);
  assert.equal(r.d.read8(CC_STATUS), 0);
  assert.equal(r.t.driverFeatures, 0n);
  assert.equal(r.d.read16(CC_MSIX), 0xffff);
  assert.ok(!r.t.queueRegs(0).enabled);
  assert.equal(r.t.queueRegs(0).size, 64);
  assert.equal(r.t.resetCount, 2, "init resets once, then the test");
});

Deno.test("VirtioPciTransport defers a reset while the I/O Worker is inside a pass", () => {
  const r = rig();
  r.d.init({ numQueues: 3 });
  assert.ok(r.t.beginWork());
  r.d.write8(CC_STATUS, 0);
  assert.notEqual(r.d.read8(CC_STATUS), 0, "status keeps reading non-zero until the pass ends");
  assert.ok(!r.t.beginWork() || (r.t.endWork(), false), "no new pass starts meanwhile");
  r.t.endWork();
  assert.equal(r.d.read8(CC_STATUS), 0);
  assert.equal(r.t.resetCount, 2, "init resets once, then the test");
});

Deno.test("VirtioPciTransport signals the queue eventfd on a notify write that reached userspace", () => {
  const r = rig();
  r.d.notify(1);
  r.d.write16(BAR_NOTIFY + 2, 0); // not a queue's address
  assert.deepEqual(r.notified, [1]);
});

Deno.test("VirtioPciTransport uses INTx and ISR without MSI-X, the vector with it", () => {
  const r = rig();
  r.d.init({ numQueues: 3 });
  r.t.signalQueue(0);
  assert.deepEqual(r.fired, ["intx"]);
  assert.equal(r.d.read8(BAR_ISR), 1);
  assert.equal(r.d.read8(BAR_ISR), 0, "reading ISR clears it");
  // Enable MSI-X, map queue 0 to vector 2, unmask it.
  const cap = r.t.config.findCapability(PCI_CAP_ID_MSIX);
  r.t.config.write(cap + 3, Uint8Array.of(0x80));
  r.d.write16(CC_Q_SELECT, 0);
  r.d.write16(CC_Q_MSIX, 2);
  r.d.write32(BAR_MSIX_TABLE + 2 * 16, 0xfee00000);
  r.d.write32(BAR_MSIX_TABLE + 2 * 16 + 8, 0x41);
  r.t.signalQueue(0);
  assert.deepEqual(r.fired, ["intx"], "masked vector: pending, not fired");
  r.d.write32(BAR_MSIX_TABLE + 2 * 16 + 12, 0);
  assert.deepEqual(r.fired, ["intx", 2], "unmask delivers the pending vector");
  r.t.signalQueue(0);
  assert.deepEqual(r.fired, ["intx", 2, 2]);
});

Deno.test("VirtioPciTransport device config reads, masked writes and generation", () => {
  const r = rig();
  assert.equal(r.d.read32(0x2000), 0x12005452);
  r.d.write8(0x2000, 0xff); // read-only byte
  r.d.write8(0x2007, 0x5a); // writable byte
  assert.deepEqual([...r.t.readDeviceConfig(0, 8)], [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0x5a]);
  const gen = r.d.read8(0x15);
  r.t.writeDeviceConfig(6, Uint8Array.of(3), false);
  assert.equal(r.d.read8(0x15), gen + 1);
});

Deno.test("VirtioPciTransport PCI_CFG capability reaches BAR registers through config space", () => {
  const r = rig();
  // Walk the capability list to the PCI_CFG (type 5) vendor capability.
  let cap = r.t.config.readU16(0x34) & 0xff;
  const isPciCfg = (c: number) =>
    (r.t.config.readU16(c) & 0xff) === 0x09 && r.t.config.readU16(c + 2) >> 8 === 5;
  while (cap !== 0 && !isPciCfg(cap)) cap = r.t.config.readU16(cap) >> 8;
  assert.notEqual(cap, 0, "a PCI_CFG capability is present");
  const cfgWrite32 = (off: number, v: number) => {
    const d = new Uint8Array(4);
    new DataView(d.buffer).setUint32(0, v, true);
    r.t.config.write(off, d);
  };
  r.t.config.write(cap + 4, Uint8Array.of(0)); // BAR 0
  cfgWrite32(cap + 8, CC_NUMQ); // offset: num_queues
  cfgWrite32(cap + 12, 2); // length
  const d = new Uint8Array(4);
  r.t.config.read(cap + 16, d);
  assert.equal(d[0]! | (d[1]! << 8), 3);
  cfgWrite32(cap + 8, CC_Q_SELECT);
  r.t.config.write(cap + 16, Uint8Array.of(2, 0));
  assert.equal(r.d.read16(CC_Q_SELECT), 2, "a write through the window lands in the BAR");
});

Deno.test("VirtioPciTransport id names bus, slot and function", () => {
  assert.equal(transportId("pcie.0", { slot: 4, fn: 0 }), "pci/pcie.0/04.0");
  assert.equal(rig().t.id, "pci/pcie.0/04.0");
});

Deno.test("VirtioPciTransport is migratable", () => {
  const plan = testPlan(INFO);
  const memory = fakeMemory(1 << 20);
  let n = 0;
  assertMigratable({
    make: () => {
      // Each instance gets its own shared state, as a fresh destination would.
      const p = { ...testPlan(INFO), routingShared: plan.routingShared, gsiBase: plan.gsiBase };
      n++;
      return testTransport({ plan: p, memory, fire: () => {} });
    },
    mutate: (t: VirtioPciTransport) => {
      const d = new TestDriver(memory, t.bar0);
      d.init({ numQueues: 3 });
      d.write16(CC_MSIX, 1);
      d.write32(BAR_MSIX_TABLE, 0xfee00000);
      d.write32(BAR_MSIX_TABLE + 8, 0x30);
      t.queueRegs(1).nextAvail = 5;
      t.queueRegs(1).nextUsed = 4;
    },
    invalid: [
      { field: "driverFeaturesHi", value: 0xffff },
      { field: "configVector", value: 40 },
      { field: "config", value: new Uint8Array(256) },
    ],
  });
  assert.ok(n > 3);
});
