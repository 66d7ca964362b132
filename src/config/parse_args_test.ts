import assert from "node:assert/strict";
import { parseArgs } from "./parse_args.ts";
import type { MachineConfig } from "./machine_config.ts";
import { assertConfigError, SOURCE_ARGS } from "./_testing.ts";

Deno.test("parseArgs parses the example source command", () => {
  const expected: MachineConfig = {
    machine: { type: "q35", accel: "kvm" },
    memoryBytes: 2 * 1024 ** 3,
    cpus: 2,
    kernel: { path: "vmlinux.bin", cmdline: "console=ttyS0 root=/dev/vda" },
    serial: { kind: "stdio" },
    qmp: [{ path: "/run/src.sock", wait: false }],
    drives: [{ id: "rootfs", file: "rootfs.img", readonly: false, direct: false }],
    devices: [
      {
        driver: "virtio-blk-pci",
        id: "rootfs",
        bus: "pcie.0",
        addr: { slot: 2, fn: 0 },
        props: { drive: "rootfs" },
      },
      {
        driver: "virtio-net-pci",
        id: "net0",
        bus: "pcie.0",
        addr: { slot: 3, fn: 0 },
        props: { netdev: "net0", mac: "52:54:00:12:34:56" },
        mac: Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56),
      },
    ],
    netdevs: [{ kind: "tap", id: "net0", ifname: "tap0" }],
    daemonize: false,
  };
  assert.deepEqual(parseArgs(SOURCE_ARGS), expected);
});

Deno.test("parseArgs parses the destination with -incoming tcp or unix", () => {
  const tcp = parseArgs([...SOURCE_ARGS, "-incoming", "tcp:192.168.0.1:4446"]);
  assert.deepEqual(tcp.incoming, {
    kind: "tcp",
    uri: "tcp:192.168.0.1:4446",
    host: "192.168.0.1",
    port: 4446,
  });
  const unix = parseArgs([...SOURCE_ARGS, "-incoming", "unix:/tmp/migrate.sock"]);
  assert.deepEqual(unix.incoming, { kind: "unix", uri: "unix:/tmp/migrate.sock", path: "/tmp/migrate.sock" });
});

Deno.test("parseArgs gives StratoVirt's defaults for an empty command line", () => {
  assert.deepEqual(parseArgs([]), {
    machine: { type: "q35", accel: "kvm" },
    memoryBytes: 256 * 1024 * 1024,
    cpus: 1,
    serial: { kind: "none" },
    qmp: [],
    drives: [],
    devices: [],
    netdevs: [],
    daemonize: false,
  });
});

Deno.test("parseArgs joins -append values, repeated or unquoted, as StratoVirt", () => {
  assert.equal(
    parseArgs(["-kernel", "k", "-append", "console=ttyS0", "quiet", "-append", "panic=1"]).kernel?.cmdline,
    "console=ttyS0 quiet panic=1",
  );
  assert.deepEqual(parseArgs(["-kernel", "k", "-initrd", "i.img"]).kernel, {
    path: "k",
    cmdline: "",
    initrd: "i.img",
  });
});

Deno.test("parseArgs takes bare words after -drive and -device as more of them, as StratoVirt", () => {
  const c = parseArgs(["-drive", "id=a,file=a.img", "id=b,file=b.img", "-netdev", "tap,id=n,fd=3"]);
  assert.deepEqual(c.drives.map((d) => d.id), ["a", "b"]);
});

Deno.test("parseArgs reads every -serial and QMP form", () => {
  assert.deepEqual(parseArgs(["-serial", "file,path=/tmp/s.log"]).serial, {
    kind: "file",
    path: "/tmp/s.log",
  });
  assert.deepEqual(parseArgs(["-serial", "file:/tmp/s.log"]).serial, { kind: "file", path: "/tmp/s.log" });
  assert.deepEqual(parseArgs(["-serial", "none"]).serial, { kind: "none" });
  assert.deepEqual(parseArgs(["-chardev", "stdio,id=con", "-serial", "chardev:con"]).serial, {
    kind: "stdio",
  });
  assert.deepEqual(parseArgs(["-chardev", "file,id=f,path=/tmp/o", "-serial", "chardev:f"]).serial, {
    kind: "file",
    path: "/tmp/o",
  });
  const c = parseArgs([
    "-qmp",
    "unix:/run/a.sock,server,nowait",
    "-chardev",
    "socket,id=qmp1,path=/run/b.sock,server,nowait",
    "-mon",
    "chardev=qmp1,id=mon1,mode=control",
    "-qmp",
    "unix:/run/c.sock,server=on,wait=off",
    "-qmp",
    "unix:/run/d.sock,server",
  ]);
  assert.deepEqual(c.qmp, [
    { path: "/run/a.sock", wait: false },
    { path: "/run/b.sock", wait: false },
    { path: "/run/c.sock", wait: false },
    { path: "/run/d.sock", wait: true },
  ]);
});

Deno.test("parseArgs reads -name, -D, -accel, -cpu and ignores StratoVirt's no-op options", () => {
  const c = parseArgs([
    "-name",
    "guest=vm1,debug-threads=on",
    "-D",
    "/tmp/ferry.log",
    "-accel",
    "kvm",
    "-cpu",
    "host",
    "-nodefaults",
    "-nographic",
    "-no-user-config",
    "-rtc",
    "base=utc",
    "-boot",
    "strict=on",
    "-disable-seccomp",
  ]);
  assert.equal(c.name, "vm1");
  assert.equal(c.logFile, "/tmp/ferry.log");
  assert.equal(parseArgs(["-name", "vm2"]).name, "vm2");
  assert.equal(parseArgs(["-D"]).logFile, undefined);
  assert.equal(parseArgs(["-D", "-m", "1G"]).logFile, undefined);
});

Deno.test("parseArgs error cases give one-line messages naming the option", () => {
  const cases: [string[], ErrorConstructor, string, RegExp | string][] = [
    [["-foo"], TypeError, "-foo", "Unknown option '-foo': see 'ferry -help'"],
    [["-m"], TypeError, "-m", "Missing value for -m: expected -m [size=]N[K|M|G][,maxmem=N[K|M|G]]"],
    [["-kernel"], TypeError, "-kernel", /Missing value for -kernel/],
    [["-m", "0"], RangeError, "-m", /128M..512G/],
    [["-m", "5X"], SyntaxError, "-m", /'5X' is not a size/],
    [["-m", "1024G"], RangeError, "-m", /128M..512G/],
    [["-smp", "0"], RangeError, "-smp", /1..254/],
    [["-smp", "255"], RangeError, "-smp", /1..254/],
    [
      ["-machine", "virt"],
      TypeError,
      "virt",
      "Machine type 'virt' is not supported: ferry emulates x86_64 q35 only (use -machine q35)",
    ],
    [["-machine", "q35,", "-m", "1G"], SyntaxError, "-machine", /stray comma/],
    [["-drive", "id=a,file=a,bogus=1"], TypeError, "-drive", /unknown key 'bogus'/],
    [
      ["-device", "virtio-blk-pci,id=x,drive=a,bus=pcie.0,addr=2,wat=1"],
      TypeError,
      "-device",
      /unknown key 'wat'/,
    ],
    [["-netdev", "tap,id=n,ifname=t,foo=bar"], TypeError, "-netdev", /unknown key 'foo'/],
    [["-drive", "id=a,file=a", "-drive", "id=a,file=b"], TypeError, "-drive", /another -drive has that id/],
    [
      ["-netdev", "tap,id=n,fd=3", "-netdev", "tap,id=n,fd=4"],
      TypeError,
      "-netdev",
      /another -netdev has that id/,
    ],
    [
      ["-chardev", "stdio,id=c", "-chardev", "stdio,id=c", "-serial", "chardev:c"],
      TypeError,
      "-chardev",
      /another -chardev has that id/,
    ],
    [
      ["-device", "virtio-blk-pci,id=b,drive=nope,bus=pcie.0,addr=2"],
      TypeError,
      "-device",
      /drive=nope names no -drive/,
    ],
    [
      ["-device", "virtio-net-pci,id=n,netdev=nope,bus=pcie.0,addr=2"],
      TypeError,
      "-device",
      /netdev=nope names no -netdev/,
    ],
    [["-incoming", "bogus:1"], TypeError, "-incoming", /expected -incoming tcp:HOST:PORT \| unix:PATH/],
    [["-incoming", "tcp:1.2.3.4"], TypeError, "-incoming", /want tcp:HOST:PORT/],
    [["-daemonize"], TypeError, "-daemonize", "Option -daemonize is not supported yet"],
    [["-pidfile", "/run/f.pid"], TypeError, "-pidfile", "Option -pidfile is not supported yet"],
    [["-S"], TypeError, "-S", "Option -S is not supported yet"],
    [
      ["-object", "iothread,id=io0"],
      TypeError,
      "-object",
      "Cannot use -object 'iothread,id=io0': object type 'iothread' is not supported yet",
    ],
    [["-mem-path", "/dev/hugepages"], TypeError, "-mem-path", /not supported yet/],
    [["-no-shutdown"], TypeError, "-no-shutdown", /not supported yet/],
    [["-m", "1G", "-m", "2G"], TypeError, "-m", /given more than once/],
    [["-serial", "stdio", "-serial", "none"], TypeError, "-serial", /given more than once/],
    [["-chardev", "stdio,id=c"], TypeError, "-chardev", /nothing uses it/],
    [["-mon", "chardev=zz,mode=control"], TypeError, "-mon", /no -chardev has id=zz/],
    [["-serial", "chardev:zz"], TypeError, "-serial", /no -chardev has id=zz/],
    [["-qmp", "unix:/s,server", "-qmp", "unix:/s,server,nowait"], TypeError, "-qmp", /QMP twice on '\/s'/],
    [["-append", "quiet"], TypeError, "-append", /without -kernel/],
    [
      ["-drive", "id=a,file=same.img", "-drive", "id=b,file=same.img"],
      TypeError,
      "-drive",
      /share an image only readonly=on/,
    ],
    [["-help"], TypeError, "-help", /run 'ferry -help' alone/],
    [["-m", "1G", "oops"], TypeError, "oops", /Unexpected argument 'oops' after -m/],
  ];
  for (const [argv, kind, option, pattern] of cases) {
    assertConfigError(() => parseArgs(argv), kind as TypeErrorConstructor, option, pattern);
  }
});

Deno.test("parseArgs lets readonly drives share an image", () => {
  const c = parseArgs([
    "-drive",
    "id=a,file=same.img,readonly=on",
    "-drive",
    "id=b,file=same.img,readonly=on",
  ]);
  assert.equal(c.drives.length, 2);
});
