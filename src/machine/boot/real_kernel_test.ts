/**
 * The loader against real Debian kernel files (scripts/fetch_kernel.sh puts them in .cache/kernels/;
 * FERRY_TEST_BZIMAGE / FERRY_TEST_VMLINUX override). Expected values measured on
 * linux-image-6.1.0-56-cloud-amd64 (research/qemu-anchor §1); they hold for Debian 6.x x86_64 kernels.
 */
import assert from "node:assert/strict";
import { BOOT_PARAMS } from "./boot_params.ts";
import { fakeMemory, readRealKernel, realKernelPaths } from "./_testing.ts";
import { ZERO_PAGE_GPA } from "./layout.ts";
import { parseKernel } from "./linux_loader.ts";
import { loadKernel } from "./mod.ts";

const MIB = 2 ** 20;
const paths = realKernelPaths();

Deno.test("parseKernel() reads the real Debian bzImage header", () => {
  const file = readRealKernel(paths.bzImage);
  const k = parseKernel(file, paths.bzImage);
  assert.equal(k.kind, "bzimage");
  if (k.kind !== "bzimage") return;
  const h = k.header;
  assert.equal(h.protocolVersion, 0x020f, "boot protocol 2.15");
  assert.equal(h.setupSects, 39);
  assert.equal(h.xloadflags & 1, 1, "XLF_KERNEL_64");
  assert.equal(h.relocatable, true);
  assert.equal(h.kernelAlignment, 0x200000);
  assert.equal(h.prefAddress, 0x1000000);
  assert.equal(h.cmdlineSize, 2047);
  assert.equal(h.initrdAddrMax, 0x7fffffff);
  assert.ok(h.initSize > 32 * MIB && h.initSize < 128 * MIB, `init_size ${h.initSize}`);
  assert.equal(h.headerEnd, 0x26c);
  const magic = Array.from(k.protectedMode.subarray(h.payloadOffset, h.payloadOffset + 4));
  assert.ok(
    [[0x02, 0x21, 0x4c, 0x18], [0xfd, 0x37, 0x7a, 0x58]].some((m) => m.every((b, i) => b === magic[i])),
    `payload is LZ4 or XZ, got ${magic}`,
  );
  assert.ok(h.payloadOffset + h.payloadLength <= k.protectedMode.length);
});

Deno.test("parseKernel() reads the real vmlinux: entry 16 MiB, PT_LOADs, PVH note", () => {
  const k = parseKernel(readRealKernel(paths.vmlinux), paths.vmlinux);
  assert.equal(k.kind, "elf");
  if (k.kind !== "elf") return;
  assert.equal(k.entry, 0x1000000);
  // 6.1.0-56-cloud has four: .text, .data, .data..percpu (vaddr 0), .init/.bss.
  assert.ok(k.segments.length >= 3, `${k.segments.length} PT_LOADs`);
  assert.equal(k.segments[0]!.paddr, 0x1000000);
  for (const s of k.segments) assert.ok(s.paddr >= 0x1000000 && s.fileBytes <= s.memBytes);
  assert.equal(k.pvhEntry, 0x1000850);
});

Deno.test("loadKernel() loads the real bzImage into 512 MiB at 16 MiB", () => {
  const file = readRealKernel(paths.bzImage);
  const mem = fakeMemory(512 * MIB);
  const initrd = new Uint8Array(3 * MIB).fill(0x5a);
  const setup = loadKernel(mem, {
    kernel: file,
    kernelPath: paths.bzImage,
    cmdline: "console=ttyS0 earlyprintk=serial",
    initrd,
    cpus: 2,
    ramBytes: 512 * MIB,
  });
  assert.equal(setup.kind, "bzimage");
  assert.equal(setup.entry, 0x1000200);
  assert.equal(setup.vcpu.regs.rip, 0x1000200);
  const setupBytes = (file[0x1f1]! + 1) * 512;
  assert.deepEqual(mem.slice(0x1000000, 0x10000), file.subarray(setupBytes, setupBytes + 0x10000));
  const end = file.length - setupBytes;
  assert.deepEqual(mem.slice(0x1000000 + end - 4096, 4096), file.subarray(file.length - 4096));
  assert.equal(mem.readU32(ZERO_PAGE_GPA + BOOT_PARAMS.header), 0x53726448);
  assert.equal(mem.readU16(ZERO_PAGE_GPA + BOOT_PARAMS.version), 0x020f);
  assert.equal(mem.readU32(ZERO_PAGE_GPA + BOOT_PARAMS.ramdiskSize), initrd.length);
  const image = mem.readU32(ZERO_PAGE_GPA + BOOT_PARAMS.ramdiskImage);
  assert.ok(image >= setup.endGpa && image + initrd.length <= 512 * MIB);
});

Deno.test("loadKernel() loads the real vmlinux into 512 MiB at its p_paddr", () => {
  const file = readRealKernel(paths.vmlinux);
  const mem = fakeMemory(512 * MIB);
  const setup = loadKernel(mem, {
    kernel: file,
    kernelPath: paths.vmlinux,
    cmdline: "console=ttyS0",
    cpus: 1,
    ramBytes: 512 * MIB,
  });
  assert.equal(setup.kind, "elf");
  assert.equal(setup.entry, 0x1000000);
  assert.equal(setup.pvhEntry, 0x1000850);
  const k = parseKernel(file, "vmlinux");
  if (k.kind !== "elf") throw new Error("not ELF");
  for (const s of k.segments) {
    const n = Math.min(s.fileBytes, 0x4000);
    assert.deepEqual(
      mem.slice(s.paddr, n),
      file.subarray(s.offset, s.offset + n),
      `segment at 0x${s.paddr.toString(16)}`,
    );
  }
  // The first instruction bytes at the entry are the file's bytes at the first segment's offset.
  assert.deepEqual(
    mem.slice(0x1000000, 16),
    file.subarray(k.segments[0]!.offset, k.segments[0]!.offset + 16),
  );
});
