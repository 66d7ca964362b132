import assert from "node:assert/strict";
import { migrationAttributes } from "./migration_attributes.ts";
import { parseArgs } from "./parse_args.ts";
import { SOURCE_ARGS } from "./_testing.ts";

const DIGEST = "sha256:0123456789abcdef";

function replace(argv: string[], from: string, to: string): string[] {
  const i = argv.indexOf(from);
  assert.ok(i >= 0, from);
  return argv.with(i, to);
}

/** The first attribute whose value differs, or that only one side has. */
function firstDifference(a: Record<string, string>, b: Record<string, string>): string | undefined {
  for (const k of Object.keys(a)) if (a[k] !== b[k]) return k;
  for (const k of Object.keys(b)) if (!(k in a)) return k;
  return undefined;
}

Deno.test("migrationAttributes lists the machine, kernel, devices and drives in order", () => {
  assert.deepEqual(migrationAttributes(parseArgs(SOURCE_ARGS), DIGEST), {
    "-machine": "q35",
    "-m": "2147483648",
    "-smp": "2",
    "kernel": DIGEST,
    "-append": "console=ttyS0 root=/dev/vda",
    "initrd": "no",
    "device rootfs: driver": "virtio-blk-pci",
    "device rootfs: bus": "pcie.0",
    "device rootfs: addr": "0x2.0",
    "device rootfs: drive": "rootfs",
    "device net0: driver": "virtio-net-pci",
    "device net0: bus": "pcie.0",
    "device net0: addr": "0x3.0",
    "device net0: mac": "52:54:00:12:34:56",
    "device net0: netdev": "net0",
    "drive rootfs: readonly": "off",
    "drive rootfs: direct": "off",
    "drive rootfs: format": "raw",
    "netdev net0: kind": "tap",
  });
});

Deno.test("migrationAttributes are equal for a source and its destination on another host", () => {
  const source = parseArgs(SOURCE_ARGS);
  let dest = replace(SOURCE_ARGS, "unix:/run/src.sock,server,nowait", "unix:/run/dst.sock,server,nowait");
  dest = replace(
    dest,
    "file=rootfs.img,id=rootfs,readonly=off,direct=off",
    "file=/mnt/shared/rootfs.img,id=rootfs,readonly=off,direct=off",
  );
  dest = replace(dest, "tap,id=net0,ifname=tap0", "tap,id=net0,ifname=tap7");
  dest = replace(dest, "stdio", "file:/var/log/guest.log");
  dest.push("-incoming", "tcp:192.168.0.2:4446", "-name", "dst", "-D", "/tmp/dst.log");
  assert.deepEqual(migrationAttributes(parseArgs(dest), DIGEST), migrationAttributes(source, DIGEST));
  assert.deepEqual(
    migrationAttributes(parseArgs([...SOURCE_ARGS.slice(0, -2), "-incoming", "unix:/tmp/m.sock"]), DIGEST),
    migrationAttributes(source, DIGEST),
  );
});

Deno.test("migrationAttributes differ, naming the attribute, when -m, -smp, a mac or the kernel differs", () => {
  const source = migrationAttributes(parseArgs(SOURCE_ARGS), DIGEST);
  const cases: [string, string, string][] = [
    ["2G", "4G", "-m"],
    ["2", "4", "-smp"],
    [
      "virtio-net-pci,netdev=net0,id=net0,mac=52:54:00:12:34:56,bus=pcie.0,addr=0x3",
      "virtio-net-pci,netdev=net0,id=net0,mac=52:54:00:12:34:57,bus=pcie.0,addr=0x3",
      "device net0: mac",
    ],
    [
      "virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0x2",
      "virtio-blk-pci,drive=rootfs,id=rootfs,bus=pcie.0,addr=0x4",
      "device rootfs: addr",
    ],
    ["console=ttyS0 root=/dev/vda", "console=ttyS0 root=/dev/vdb", "-append"],
    [
      "file=rootfs.img,id=rootfs,readonly=off,direct=off",
      "file=rootfs.img,id=rootfs,readonly=on,direct=off",
      "drive rootfs: readonly",
    ],
  ];
  for (const [from, to, attribute] of cases) {
    const dest = migrationAttributes(parseArgs(replace(SOURCE_ARGS, from, to)), DIGEST);
    assert.equal(firstDifference(source, dest), attribute);
  }
  assert.equal(
    firstDifference(source, migrationAttributes(parseArgs(SOURCE_ARGS), "sha256:other")),
    "kernel",
  );
});

Deno.test("migrationAttributes notice a device missing on one side", () => {
  const source = migrationAttributes(parseArgs(SOURCE_ARGS), DIGEST);
  const withoutNet = SOURCE_ARGS.slice(0, SOURCE_ARGS.indexOf("-netdev")).concat(
    SOURCE_ARGS.slice(SOURCE_ARGS.indexOf("-qmp")),
  );
  assert.equal(
    firstDifference(source, migrationAttributes(parseArgs(withoutNet), DIGEST)),
    "device net0: driver",
  );
});

Deno.test("migrationAttributes leave out the kernel attribute without a digest", () => {
  assert.equal("kernel" in migrationAttributes(parseArgs(SOURCE_ARGS)), false);
});
