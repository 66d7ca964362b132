import assert from "node:assert/strict";
import { fakeMemory, TestDriver } from "./_testing.ts";
import { IO_ST_PAUSED, IO_ST_RUNNING, IoControl } from "./io_control.ts";
import { type PciVm, VirtioPciDevices } from "../../machine/pci.ts";
import { VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT } from "./block/block.ts";
import { BAR_NOTIFY } from "./pci_transport.ts";
import { drainEventfd } from "../../sys/eventfd.ts";
import { pciSlotName } from "../pci/pci_address.ts";

function header(type: number, sector: number): Uint8Array {
  const h = new Uint8Array(16);
  const dv = new DataView(h.buffer);
  dv.setUint32(0, type, true);
  dv.setBigUint64(8, BigInt(sector), true);
  return h;
}

function fakeVm() {
  const calls: string[] = [];
  const vm: PciVm & { fd: number } = {
    fd: -1,
    ioeventfd: (o) => void calls.push(`ioeventfd ${o.deassign ? "-" : "+"}0x${o.addr.toString(16)}/${o.len}`),
    irqfd: (o) => void calls.push(`irqfd gsi ${o.gsi}`),
    setGsiRouting: (r) => void calls.push(`routes ${r.length}`),
  };
  return { vm, calls };
}

async function until(cond: () => boolean, what: string, timeoutMs = 10000, detail = () => ""): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${detail()}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

Deno.test("VirtioPciDevices places devices, wires irqfds/ioeventfds, and refuses unknown device types", () => {
  const file = Deno.makeTempFileSync({ suffix: ".img" });
  Deno.truncateSync(file, 1 << 20);
  const { vm, calls } = fakeVm();
  const pci = new VirtioPciDevices({ vm });
  try {
    const blk = pci.addBlock({ id: "rootfs", file, readonly: false, direct: false }, {
      addr: { slot: 4, fn: 0 },
    });
    assert.throws(
      () => pci.addBlock({ id: "data", file, readonly: false, direct: false }, { addr: { slot: 4, fn: 0 } }),
      /already used by 'virtio-blk\/rootfs'/,
    );
    const plan = pci.pciPlan().functions[0]!;
    assert.equal(pciSlotName(plan.addr), "04.0");
    pci.wireKvm();
    assert.ok(calls.includes(`ioeventfd +0x${(plan.barGpa + BAR_NOTIFY).toString(16)}/2`));
    assert.ok(calls.includes(`irqfd gsi ${plan.gsiBase}`) && calls.includes(`irqfd gsi ${plan.gsiBase + 1}`));
    assert.ok(calls.includes(`irqfd gsi ${plan.intxGsi}`));
    assert.equal(pci.configAttributes()[`device ${blk.id}: addr`], "pcie.0/04.0");
    assert.deepEqual(pci.migratables().map((m) => m.id), ["pci/pcie.0/04.0", "virtio-blk/rootfs"]);
    // The guest moves the BAR: the ioeventfd follows it.
    const ecam = (reg: number, v: number) =>
      pci.root.ecam.write(
        (4 << 15) | reg,
        Uint8Array.of(v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, v >>> 24),
      );
    ecam(0x04, 0x2);
    ecam(0x10, 0xc010_0004);
    assert.ok(calls.includes(`ioeventfd -0x${(plan.barGpa + BAR_NOTIFY).toString(16)}/2`));
    assert.ok(calls.includes(`ioeventfd +0x${(0xc010_0000 + BAR_NOTIFY).toString(16)}/2`));
  } finally {
    pci.close();
    Deno.removeSync(file);
  }
});

Deno.test("IoControl runs the I/O Worker: notify → request served; pause holds requests; resume serves them", async () => {
  const file = Deno.makeTempFileSync({ suffix: ".img" });
  Deno.truncateSync(file, 1 << 20);
  const memory = fakeMemory(4 << 20, true);
  const { vm } = fakeVm();
  const pci = new VirtioPciDevices({ vm });
  let io: IoControl | undefined;
  try {
    pci.addBlock({ id: "rootfs", file, readonly: false, direct: false }, { addr: { slot: 3, fn: 0 } });
    pci.wireKvm();
    const plan = pci.pciPlan().functions[0]!;
    // The guest enables memory decode, then drives the device through the BAR window.
    pci.root.ecam.write((3 << 15) | 0x04, Uint8Array.of(0x06, 0));
    const base = plan.barGpa - pci.root.window.base;
    const d = new TestDriver(memory, {
      read: (o, data) => pci.root.barWindow.read(base + o, data),
      write: (o, data) => pci.root.barWindow.write(base + o, data),
    });
    d.init({ numQueues: 1 });
    io = await IoControl.start({ plan: pci.ioPlan(memory.layout) });
    io.resume();
    await until(
      () => io!.state === IO_ST_RUNNING,
      "running",
      10000,
      () => ` (state ${io!.state}, worker errors: ${JSON.stringify(io!.errors)})`,
    );

    const data = new Uint8Array(4096).map((_, i) => i * 13);
    const w = d.submit(0, [
      { data: header(VIRTIO_BLK_T_OUT, 2), writable: false },
      { data, writable: false },
      { len: 1, writable: true },
    ]);
    d.notify(0); // reaches userspace here (no KVM), which signals the queue's eventfd
    await until(() => d.usedIdx(0) === 1, "the write to complete");
    assert.equal(d.buffer(0, w, 2)[0], VIRTIO_BLK_S_OK);
    assert.deepEqual(Deno.readFileSync(file).subarray(1024, 1024 + 4096), data);
    assert.ok(drainEventfd(plan.intxFd) > 0, "MSI-X off: the INTx irqfd was signalled");

    await io.pause();
    assert.equal(io.state, IO_ST_PAUSED);
    const r = d.submit(0, [{ data: header(VIRTIO_BLK_T_IN, 2), writable: false }, {
      len: 4096,
      writable: true,
    }, { len: 1, writable: true }]);
    d.notify(0);
    await new Promise((res) => setTimeout(res, 100));
    assert.equal(d.usedIdx(0), 1, "nothing is served while paused");
    const saved = pci.migratables().map((m) => m.save());
    assert.equal(saved.length, 2);
    io.resume();
    await until(() => d.usedIdx(0) === 2, "the read after resume");
    assert.deepEqual(d.buffer(0, r, 1), data);
  } finally {
    await io?.stop();
    pci.close();
    Deno.removeSync(file);
  }
});

const SEND = `
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind((sys.argv[1], 0))
for f in sys.argv[2:]:
    s.send(bytes.fromhex(f))
`;

Deno.test({
  name:
    "I/O Worker: frames that wait in the tap while the RX ring is empty arrive after the driver posts buffers, and so do later ones",
  ignore: Deno.uid() !== 0,
  async fn() {
    const ns = `ferry-iow${Deno.pid}`, ifname = `fyw${Deno.pid % 100000}`;
    const run = (...a: string[]) =>
      new Deno.Command(a[0]!, { args: a.slice(1), stdout: "null" }).outputSync();
    run("ip", "netns", "add", ns);
    run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1");
    const memory = fakeMemory(4 << 20, true);
    const { vm } = fakeVm();
    const pci = new VirtioPciDevices({ vm });
    let io: IoControl | undefined;
    const mac = Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56);
    const send = (...payloads: string[]) => {
      const frames = payloads.map((p) => {
        const f = new Uint8Array(60);
        f.set(mac);
        f.set([2, 0, 0, 0, 0, 9], 6);
        f.set([0x88, 0xb9], 12);
        f.set(new TextEncoder().encode(p), 14);
        return [...f].map((b) => b.toString(16).padStart(2, "0")).join("");
      });
      run("ip", "netns", "exec", ns, "python3", "-c", SEND, ifname, ...frames);
    };
    try {
      pci.addNet({ id: "net0", ifname, mac }, { addr: { slot: 3, fn: 0 } });
      run("ip", "link", "set", ifname, "netns", ns);
      run("ip", "-n", ns, "link", "set", ifname, "up");
      pci.wireKvm();
      const plan = pci.pciPlan().functions[0]!;
      pci.root.ecam.write((3 << 15) | 0x04, Uint8Array.of(0x06, 0));
      const base = plan.barGpa - pci.root.window.base;
      const d = new TestDriver(memory, {
        read: (o, data) => pci.root.barWindow.read(base + o, data),
        write: (o, data) => pci.root.barWindow.write(base + o, data),
      });
      d.init({ numQueues: 3 });
      io = await IoControl.start({ plan: pci.ioPlan(memory.layout) });
      io.resume();
      await until(() => io!.state === IO_ST_RUNNING, "running");
      // No RX buffer yet: the frames wait in the tap.
      send("early 1", "early 2");
      await new Promise((res) => setTimeout(res, 100));
      const ours = () =>
        d.takeUsed(0).map((u) => d.buffer(0, u.id, 0).subarray(12, u.len)).filter((f) =>
          f[12] === 0x88 && f[13] === 0xb9
        ).map((f) => new TextDecoder().decode(f.subarray(14, 21)));
      const got: string[] = [];
      for (let i = 0; i < 4; i++) d.submit(0, [{ len: 1538, writable: true }]);
      d.notify(0);
      await until(() => (got.push(...ours()), got.length >= 2), "the frames that waited");
      assert.deepEqual(got, ["early 1", "early 2"]);
      // Buffers are left: a later frame wakes the I/O Worker through the tap alone (no notify).
      send("later 1");
      await until(() => (got.push(...ours()), got.length >= 3), "a frame sent after the buffers were posted");
      assert.deepEqual(got, ["early 1", "early 2", "later 1"]);
    } finally {
      await io?.stop();
      pci.close();
      run("ip", "netns", "del", ns);
    }
  },
});
