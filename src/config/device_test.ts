import assert from "node:assert/strict";
import { checkDevices, formatPciAddr, LATER_DRIVERS, parseDevice, parsePciAddr } from "./device.ts";
import type { DriveConfig, NetdevConfig } from "./machine_config.ts";
import { assertConfigError } from "./_testing.ts";

Deno.test("parsePciAddr reads hex and decimal slots and functions", () => {
  assert.deepEqual(parsePciAddr("0x3"), { slot: 3, fn: 0 });
  assert.deepEqual(parsePciAddr("3"), { slot: 3, fn: 0 });
  assert.deepEqual(parsePciAddr("0x3.0x1"), { slot: 3, fn: 1 });
  assert.deepEqual(parsePciAddr("0x10.0x4"), { slot: 16, fn: 4 });
  assert.deepEqual(parsePciAddr("8.2"), { slot: 8, fn: 2 });
  assert.deepEqual(parsePciAddr("0x1f"), { slot: 31, fn: 0 });
  for (const bad of [".0x5", "0x111", "0x20", "1.8", "1.2.3", "abcd.dcba", ""]) {
    assert.equal(typeof parsePciAddr(bad), "string");
  }
  assert.equal(formatPciAddr({ slot: 0x1f, fn: 7 }), "0x1f.7");
});

Deno.test("parseDevice reads virtio-blk-pci and virtio-net-pci", () => {
  assert.deepEqual(parseDevice("virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0x2"), {
    driver: "virtio-blk-pci",
    id: "rootfs",
    bus: "pcie.0",
    addr: { slot: 2, fn: 0 },
    props: { drive: "rootfs" },
  });
  assert.deepEqual(
    parseDevice(
      "virtio-net-pci,netdev=net0,id=net0,mac=52:54:00:12:34:AB,bus=pcie.0,addr=3,mq=off,queue-size=512",
    ),
    {
      driver: "virtio-net-pci",
      id: "net0",
      bus: "pcie.0",
      addr: { slot: 3, fn: 0 },
      props: { netdev: "net0", mac: "52:54:00:12:34:ab", mq: "off", "queue-size": "512" },
      mac: Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0xab),
    },
  );
  const blk = parseDevice(
    "driver=virtio-blk-pci,id=b,drive=d,bus=pcie.0,addr=0x4.0x0,serial=SN,bootindex=0,num-queues=2,queue-size=128,multifunction=on",
  );
  assert.deepEqual(blk.props, {
    drive: "d",
    serial: "SN",
    bootindex: "0",
    "num-queues": "2",
    "queue-size": "128",
    multifunction: "on",
  });
});

Deno.test("parseDevice refuses StratoVirt's other drivers as not supported yet, naming them", () => {
  for (
    const d of [
      "virtio-blk-device",
      "virtio-net-device",
      "vhost-vsock-pci",
      "vhost-user-blk-pci",
      "vfio-pci",
      "virtio-balloon-pci",
      "virtio-rng-pci",
      "virtio-serial-pci",
      "pcie-root-port",
    ]
  ) {
    assert.ok(LATER_DRIVERS.includes(d));
    assertConfigError(
      () => parseDevice(`${d},id=x,bus=pcie.0,addr=0x5`),
      TypeError,
      d,
      `Device driver '${d}' is not supported yet: -device accepts virtio-blk-pci, virtio-net-pci`,
    );
  }
  assertConfigError(() => parseDevice("e1000,id=x"), TypeError, "e1000", /is unknown: -device accepts/);
});

Deno.test("parseDevice refuses unknown keys, missing parts, other buses and bad values", () => {
  const blk = "virtio-blk-pci,id=b,drive=d,bus=pcie.0,addr=0x2";
  assertConfigError(
    () => parseDevice(`${blk},mac=52:54:00:00:00:01`),
    TypeError,
    "-device",
    /unknown key 'mac'/,
  );
  assertConfigError(
    () => parseDevice("virtio-blk-pci,drive=d,bus=pcie.0,addr=2"),
    TypeError,
    "-device",
    /missing 'id'/,
  );
  assertConfigError(
    () => parseDevice("virtio-blk-pci,id=b,drive=d,addr=2"),
    TypeError,
    "-device",
    /missing 'bus'/,
  );
  assertConfigError(
    () => parseDevice("virtio-blk-pci,id=b,drive=d,bus=pcie.0"),
    TypeError,
    "-device",
    /missing 'addr'/,
  );
  assertConfigError(
    () => parseDevice("virtio-blk-pci,id=b,bus=pcie.0,addr=2"),
    TypeError,
    "-device",
    /missing 'drive'/,
  );
  assertConfigError(
    () => parseDevice("virtio-net-pci,id=n,bus=pcie.0,addr=2"),
    TypeError,
    "-device",
    /missing 'netdev'/,
  );
  assertConfigError(
    () => parseDevice("virtio-blk-pci,id=b,drive=d,bus=pcie.1,addr=2"),
    TypeError,
    "-device",
    /bus 'pcie.1' does not exist/,
  );
  assertConfigError(
    () => parseDevice("virtio-blk-pci,id=b,drive=d,bus=pcie.0,addr=0x20"),
    SyntaxError,
    "-device",
    /slot 32 is outside 0..31/,
  );
  assertConfigError(
    () => parseDevice(`${blk},iothread=io0`),
    TypeError,
    "-device",
    /iothread .* is not supported yet/,
  );
  assertConfigError(() => parseDevice(`${blk},queue-size=100`), RangeError, "-device", /not a power of 2/);
  assertConfigError(
    () => parseDevice(`${blk},serial=${"x".repeat(21)}`),
    RangeError,
    "-device",
    /longer than 20 bytes/,
  );
  const net = "virtio-net-pci,id=n,netdev=t,bus=pcie.0,addr=0x3";
  assertConfigError(
    () => parseDevice(`${net},mac=52:54:00:12:34`),
    SyntaxError,
    "-device",
    /mac '52:54:00:12:34' is not six hex bytes/,
  );
  assertConfigError(() => parseDevice(`${net},mac=01:00:5e:00:00:01`), TypeError, "-device", /multicast/);
  assertConfigError(
    () => parseDevice(`${net},mq=on`),
    TypeError,
    "-device",
    /mq=on \(multiqueue\) is not supported yet/,
  );
  assertConfigError(() => parseDevice(`${net},queue-size=128`), RangeError, "-device", /outside 256..4096/);
});

const drives: DriveConfig[] = [{ id: "d1", file: "a", readonly: false, direct: true }, {
  id: "d2",
  file: "b",
  readonly: false,
  direct: true,
}];
const netdevs: NetdevConfig[] = [{ kind: "tap", id: "t1", ifname: "tap0" }];

Deno.test("checkDevices accepts devices whose references resolve", () => {
  checkDevices(
    [
      parseDevice("virtio-blk-pci,id=b1,drive=d1,bus=pcie.0,addr=0x2,multifunction=on"),
      parseDevice("virtio-blk-pci,id=b2,drive=d2,bus=pcie.0,addr=0x2.0x1"),
      parseDevice("virtio-net-pci,id=n1,netdev=t1,bus=pcie.0,addr=0x3"),
    ],
    drives,
    netdevs,
  );
});

Deno.test("checkDevices refuses dangling, shared and duplicate references and addresses", () => {
  const b = (id: string, drive: string, addr: string) =>
    parseDevice(`virtio-blk-pci,id=${id},drive=${drive},bus=pcie.0,addr=${addr}`);
  assertConfigError(
    () => checkDevices([b("b1", "nope", "2")], drives, netdevs),
    TypeError,
    "-device",
    /drive=nope names no -drive/,
  );
  assertConfigError(
    () => checkDevices([parseDevice("virtio-net-pci,id=n,netdev=zz,bus=pcie.0,addr=3")], drives, netdevs),
    TypeError,
    "-device",
    /netdev=zz names no -netdev/,
  );
  assertConfigError(
    () => checkDevices([b("b1", "d1", "2"), b("b2", "d1", "3")], drives, netdevs),
    TypeError,
    "-device",
    /drive 'd1' is already used by device 'b1'/,
  );
  assertConfigError(
    () => checkDevices([b("b1", "d1", "2"), b("b1", "d2", "3")], drives, netdevs),
    TypeError,
    "-device",
    /another -device has id=b1/,
  );
  assertConfigError(
    () => checkDevices([b("b1", "d1", "2"), b("b2", "d2", "0x2")], drives, netdevs),
    TypeError,
    "-device",
    /pcie.0 0x2.0 is taken by device 'b1'/,
  );
  assertConfigError(
    () => checkDevices([b("b1", "d1", "2"), b("b2", "d2", "0x2.0x1")], drives, netdevs),
    TypeError,
    "-device",
    /multifunction=on/,
  );
  assertConfigError(
    () => checkDevices([b("b2", "d2", "0x4.0x1")], drives, netdevs),
    TypeError,
    "-device",
    /multifunction=on/,
  );
});

Deno.test("parseArgs moves a device asked for at pcie.0 addr=0 (the host bridge) to the first free slot, with one notice", async () => {
  const { parseArgs } = await import("./parse_args.ts");
  const config = parseArgs([
    "-machine",
    "q35",
    "-drive",
    "file=/tmp/rootfs,id=rootfs,readonly=off,direct=off",
    "-device",
    "virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0",
    "-drive",
    "file=/tmp/data,id=data",
    "-device",
    "virtio-blk-pci,drive=data,id=data,bus=pcie.0,addr=0x1",
  ]);
  assert.deepEqual(config.devices.map((d) => [d.id, d.addr]), [
    ["rootfs", { slot: 2, fn: 0 }],
    ["data", { slot: 1, fn: 0 }],
  ]);
  assert.deepEqual(config.notices, [
    "-device virtio-blk-pci,id=rootfs: pcie.0 addr 0x0.0 is the q35 host bridge's; placed at 0x2.0, the first free slot",
  ]);
  const plain = parseArgs([
    "-drive",
    "file=/tmp/d,id=d",
    "-device",
    "virtio-blk-pci,drive=d,id=d,bus=pcie.0,addr=0x2",
  ]);
  assert.equal(plain.notices, undefined);
});
