import assert from "node:assert/strict";
import { PciConfigSpace, type PciFunctionSpec } from "./config_space.ts";
import {
  defaultIrqchipRoutes,
  type GsiRoute,
  MSI_GSI_BASE,
  MsiRouting,
  msixCapability,
  MsixVectors,
} from "./msix.ts";
import { Kvm } from "../../kvm/kvm.ts";

function rig(vectors = 4) {
  const spec: PciFunctionSpec = {
    vendorId: 0x1af4,
    deviceId: 0x1041,
    revisionId: 1,
    classCode: 0x020000,
    subsystemVendorId: 0x1af4,
    subsystemId: 0x1100,
    bars: [{ index: 0, sizeBytes: 0x8000, is64: true, prefetchable: false }],
    interruptPin: 1,
    capabilities: [msixCapability(vectors, 0, 0x4000, 0x5000)],
  };
  const config = new PciConfigSpace({ shared: PciConfigSpace.createShared(spec), spec });
  const committed: GsiRoute[][] = [];
  const routingShared = MsiRouting.createShared(16);
  const routing = new MsiRouting(routingShared, { setGsiRouting: (r) => committed.push(r) });
  const gsiBase = routing.allocate(vectors);
  const fired: number[] = [];
  const msix = new MsixVectors({
    shared: MsixVectors.createShared(vectors),
    vectors,
    config,
    gsiBase,
    routing,
    fire: (v) => fired.push(v),
  });
  const cap = config.findCapability(0x11);
  const entry = (v: number, addr: number, data: number, masked: boolean) => {
    const b = new Uint8Array(16);
    const dv = new DataView(b.buffer);
    dv.setUint32(0, addr, true);
    dv.setUint32(8, data, true);
    dv.setUint32(12, masked ? 1 : 0, true);
    msix.writeTable(v * 16, b);
  };
  const control = (v: number) => {
    config.write(cap + 2, Uint8Array.of(v & 0xff, v >> 8));
    msix.controlChanged();
  };
  return { config, msix, committed, fired, entry, control, gsiBase, cap };
}

Deno.test("MsixVectors capability reads table size and BIR/offsets; only enable and mask are writable", () => {
  const r = rig(4);
  assert.equal(r.config.readU16(r.cap + 2), 3);
  assert.equal(r.config.readU32(r.cap + 4), 0x4000);
  assert.equal(r.config.readU32(r.cap + 8), 0x5000);
  r.config.write(r.cap + 2, Uint8Array.of(0xff, 0xff));
  assert.equal(r.config.readU16(r.cap + 2), 0xc003);
});

Deno.test("MsixVectors reports disabled until the driver enables MSI-X", () => {
  const r = rig();
  assert.equal(r.msix.signal(0), "disabled");
});

Deno.test("MsixVectors keeps a masked vector pending in the PBA and delivers it on unmask", () => {
  const r = rig();
  r.control(0x8000);
  r.entry(1, 0xfee00000, 0x31, true);
  assert.equal(r.msix.signal(1), "pending");
  const pba = new Uint8Array(8);
  r.msix.readPba(0, pba);
  assert.equal(pba[0], 0b10);
  r.entry(1, 0xfee00000, 0x31, false);
  assert.deepEqual(r.fired, [1]);
  r.msix.readPba(0, pba);
  assert.equal(pba[0], 0);
  assert.equal(r.msix.signal(1), "delivered");
  assert.deepEqual(r.fired, [1, 1]);
});

Deno.test("MsixVectors function mask holds every vector, unmask delivers", () => {
  const r = rig();
  r.entry(0, 0xfee00000, 0x40, false);
  r.control(0xc000);
  assert.equal(r.msix.signal(0), "pending");
  r.control(0x8000);
  assert.deepEqual(r.fired, [0]);
});

Deno.test("MsiRouting commits irqchip defaults plus each unmasked vector's route", () => {
  const r = rig();
  r.control(0x8000);
  r.entry(2, 0xfee01000, 0x4041, true);
  assert.equal(r.committed.length, 0, "a masked entry is not routed yet");
  r.entry(2, 0xfee01000, 0x4041, false);
  assert.equal(r.committed.length, 1);
  const routes = r.committed[0]!;
  assert.deepEqual(routes.slice(0, defaultIrqchipRoutes().length), defaultIrqchipRoutes());
  assert.deepEqual(routes.at(-1), {
    gsi: r.gsiBase + 2,
    kind: "msi",
    addressLo: 0xfee01000,
    addressHi: 0,
    data: 0x4041,
  });
  assert.equal(r.gsiBase, MSI_GSI_BASE);
  r.entry(2, 0xfee01000, 0x4041, false);
  assert.equal(r.committed.length, 1, "an unchanged route is not sent again");
});

Deno.test("MsixVectors save/restore carries the table and PBA and re-installs routes", () => {
  const a = rig();
  a.control(0x8000);
  a.entry(0, 0xfee00000, 0x22, false);
  a.entry(3, 0xfee00000, 0x23, true);
  a.msix.signal(3);
  const saved = a.msix.save();
  const b = rig();
  b.msix.restore(saved.table, saved.pba);
  assert.deepEqual(b.msix.save(), saved);
  assert.ok(b.committed.at(-1)!.some((x) => x.kind === "msi" && x.data === 0x22));
});

Deno.test("VmFd.setGsiRouting and signalMsi are accepted by KVM", { ignore: !exists("/dev/kvm") }, () => {
  const kvm = new Kvm();
  const vm = kvm.createVm();
  try {
    vm.createIrqchip();
    const vcpu = vm.createVcpu(0); // an MSI needs a destination APIC
    vm.setGsiRouting([...defaultIrqchipRoutes(), {
      gsi: 24,
      kind: "msi",
      addressLo: 0xfee00000,
      addressHi: 0,
      data: 0x30,
    }]);
    assert.ok(vm.signalMsi({ addressLo: 0xfee00000, addressHi: 0, data: 0x30 }) >= 0);
    vcpu.close();
  } finally {
    vm.close();
    kvm.close();
  }
});

function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}
