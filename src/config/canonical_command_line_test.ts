import assert from "node:assert/strict";
import { canonicalArgs, canonicalCommandLine } from "./canonical_command_line.ts";
import { parseArgs } from "./parse_args.ts";
import { SOURCE_ARGS } from "./_testing.ts";

Deno.test("canonicalArgs parses back to an equal config", () => {
  const configs = [
    parseArgs(SOURCE_ARGS),
    parseArgs([]),
    parseArgs([
      "-m",
      "1025M",
      "-kernel",
      "k",
      "-initrd",
      "i",
      "-name",
      "a,,b",
      "-drive",
      "id=d,file=x,,y.img,readonly=on,serial=S1",
      "-netdev",
      "tap,id=n,fd=3",
      "-device",
      "virtio-blk-pci,id=b,drive=d,bus=pcie.0,addr=0x5,multifunction=on,serial=Z,num-queues=2",
      "-device",
      "virtio-net-pci,id=v,netdev=n,bus=pcie.0,addr=0x5.0x1,mq=off,queue-size=1024,vectors=3",
      "-serial",
      "file:/tmp/a,b",
      "-chardev",
      "socket,id=m,path=/run/m.sock,server",
      "-mon",
      "chardev=m,mode=control",
      "-incoming",
      "tcp:[::1]:7",
      "-D",
      "/tmp/l",
    ]),
  ];
  for (const c of configs) assert.deepEqual(parseArgs(canonicalArgs(c)), c);
});

Deno.test("canonicalCommandLine is the same for command lines that mean the same", () => {
  const a = parseArgs(SOURCE_ARGS);
  const b = parseArgs([
    "-serial",
    "stdio",
    "-smp",
    "cpus=2",
    "-m",
    "2048",
    "-machine",
    "type=q35,accel=kvm",
    "-qmp",
    "unix:/run/src.sock,server=on,wait=off",
    "-netdev",
    "tap,id=net0,ifname=tap0",
    "-drive",
    "id=rootfs,file=rootfs.img,direct=off,readonly=off,aio=off",
    "-device",
    "virtio-blk-pci,id=rootfs,drive=rootfs,bus=pcie.0,addr=2",
    "-device",
    "virtio-net-pci,id=net0,netdev=net0,bus=pcie.0,addr=0x3.0,mac=52:54:00:12:34:56",
    "-kernel",
    "vmlinux.bin",
    "-append",
    "console=ttyS0",
    "root=/dev/vda",
  ]);
  assert.equal(canonicalCommandLine(a), canonicalCommandLine(b));
  assert.equal(
    canonicalCommandLine(a),
    "-machine q35,accel=kvm -m 2G -smp 2 -kernel vmlinux.bin -append 'console=ttyS0 root=/dev/vda' " +
      "-drive id=rootfs,file=rootfs.img,readonly=off,direct=off -netdev tap,id=net0,ifname=tap0 " +
      "-device virtio-blk-pci,id=rootfs,bus=pcie.0,addr=0x2.0,drive=rootfs " +
      "-device virtio-net-pci,id=net0,bus=pcie.0,addr=0x3.0,mac=52:54:00:12:34:56,netdev=net0 " +
      "-serial stdio -qmp unix:/run/src.sock,server,nowait",
  );
  assert.notEqual(canonicalCommandLine(parseArgs([...SOURCE_ARGS.slice(0, -2)])), canonicalCommandLine(a));
});
