import assert from "node:assert/strict";
import type { GuestMemory } from "../../memory/guest_memory.ts";
import { BOOT_PARAMS, placeInitrd, writeBootParams } from "./boot_params.ts";
import { buildBzImage, buildElf, fakeMemory } from "./_testing.ts";
import { CMDLINE_GPA, type E820Entry, e820Map, ZERO_PAGE_GPA } from "./layout.ts";
import { loadKernelImage, parseKernel } from "./linux_loader.ts";

const MIB = 2 ** 20;

function readCString(mem: GuestMemory, gpa: number): string {
  const bytes = mem.slice(gpa, 4096);
  return new TextDecoder().decode(bytes.subarray(0, bytes.indexOf(0)));
}

function readE820(mem: GuestMemory): E820Entry[] {
  const n = mem.readU8(ZERO_PAGE_GPA + BOOT_PARAMS.e820Entries);
  return Array.from({ length: n }, (_, i) => {
    const at = ZERO_PAGE_GPA + BOOT_PARAMS.e820Table + i * 20;
    return {
      gpa: Number(mem.readU64(at)),
      sizeBytes: Number(mem.readU64(at + 8)),
      type: mem.readU32(at + 16),
    };
  });
}

function loadElf(ramBytes: number) {
  const mem = fakeMemory(ramBytes);
  const elf = buildElf({ entry: 0x1000000, segments: [{ paddr: 0x1000000, data: new Uint8Array(0x1000) }] });
  const kernel = loadKernelImage(mem, parseKernel(elf, "k"), { ramBytes, path: "k" });
  return { mem, kernel };
}

Deno.test("writeBootParams() writes a minimal header, cmdline, e820 and initrd for an ELF kernel", () => {
  const ram = 64 * MIB;
  const { mem, kernel } = loadElf(ram);
  const initrd = Uint8Array.from({ length: 5000 }, (_, i) => i & 0xff);
  const r = writeBootParams(mem, { kernel, cmdline: "console=ttyS0 quiet", initrd, ramBytes: ram });
  const zp = ZERO_PAGE_GPA;
  assert.equal(r.gpa, zp);
  assert.equal(mem.readU16(zp + BOOT_PARAMS.bootFlag), 0xaa55);
  assert.equal(mem.readU32(zp + BOOT_PARAMS.header), 0x53726448);
  assert.equal(mem.readU16(zp + BOOT_PARAMS.version), 0x020f);
  assert.equal(mem.readU8(zp + BOOT_PARAMS.typeOfLoader), 0xff);
  assert.equal(mem.readU8(zp + BOOT_PARAMS.loadflags), 0x81);
  assert.equal(mem.readU16(zp + BOOT_PARAMS.heapEndPtr), 0xfe00);
  assert.equal(mem.readU8(zp + BOOT_PARAMS.sentinel), 0);
  assert.equal(mem.readU32(zp + BOOT_PARAMS.cmdLinePtr), CMDLINE_GPA);
  assert.equal(readCString(mem, CMDLINE_GPA), "console=ttyS0 quiet");
  assert.deepEqual(readE820(mem), e820Map(ram));
  const image = mem.readU32(zp + BOOT_PARAMS.ramdiskImage);
  assert.equal(mem.readU32(zp + BOOT_PARAMS.ramdiskSize), 5000);
  assert.equal(image, r.initrdGpa);
  assert.equal(image % 4096, 0);
  assert.equal(image, 64 * MIB - 8192, "as high as possible, page aligned");
  assert.deepEqual(mem.slice(image, 5000), initrd);
  assert.equal(mem.readU64(zp + BOOT_PARAMS.acpiRsdpAddr), 0n);
});

Deno.test("writeBootParams() copies a bzImage setup header and fills the loader fields", () => {
  const ram = 64 * MIB;
  const mem = fakeMemory(ram);
  const file = buildBzImage({ kernel: new Uint8Array(0x1000), cmdlineSize: 255, initrdAddrMax: 0x27ffffff });
  const kernel = loadKernelImage(mem, parseKernel(file, "k"), { ramBytes: ram, path: "k" });
  writeBootParams(mem, { kernel, cmdline: "root=/dev/vda", ramBytes: ram, acpiRsdpGpa: 0xe0000 });
  const zp = ZERO_PAGE_GPA;
  const changed = new Set([
    BOOT_PARAMS.typeOfLoader,
    BOOT_PARAMS.loadflags,
    BOOT_PARAMS.cmdLinePtr,
    BOOT_PARAMS.cmdLinePtr + 1,
    BOOT_PARAMS.heapEndPtr,
    BOOT_PARAMS.heapEndPtr + 1,
  ]);
  for (let off = 0x1f1; off < 0x26c; off++) {
    if (changed.has(off as never) || (off >= BOOT_PARAMS.code32Start && off < BOOT_PARAMS.code32Start + 4)) {
      continue;
    }
    assert.equal(mem.readU8(zp + off), file[off], `byte 0x${off.toString(16)}`);
  }
  assert.equal(mem.readU8(zp + 0x26c), 0, "nothing past the header end");
  assert.equal(mem.readU8(zp + BOOT_PARAMS.typeOfLoader), 0xff);
  assert.equal(mem.readU8(zp + BOOT_PARAMS.loadflags), 0x81);
  assert.equal(mem.readU32(zp + BOOT_PARAMS.code32Start), 0x1000000);
  assert.equal(mem.readU32(zp + BOOT_PARAMS.cmdLinePtr), CMDLINE_GPA);
  assert.equal(mem.readU32(zp + BOOT_PARAMS.cmdlineSize), 255);
  assert.equal(mem.readU64(zp + BOOT_PARAMS.acpiRsdpAddr), 0xe0000n);
  assert.equal(mem.readU32(zp + BOOT_PARAMS.ramdiskImage), 0);
});

Deno.test("writeBootParams() refuses a command line longer than cmdline_size", () => {
  const ram = 64 * MIB;
  const mem = fakeMemory(ram);
  const file = buildBzImage({ kernel: new Uint8Array(0x1000), cmdlineSize: 16 });
  const kernel = loadKernelImage(mem, parseKernel(file, "k"), { ramBytes: ram, path: "k" });
  writeBootParams(mem, { kernel, cmdline: "x".repeat(16), ramBytes: ram });
  assert.equal(readCString(mem, CMDLINE_GPA), "x".repeat(16));
  assert.throws(
    () => writeBootParams(mem, { kernel, cmdline: "x".repeat(17), ramBytes: ram }),
    (e: Error) =>
      e instanceof RangeError &&
      e.message === "Cannot set kernel command line: 17 bytes exceed the limit of 16",
  );
  const elf = loadElf(ram);
  assert.throws(
    () => writeBootParams(elf.mem, { kernel: elf.kernel, cmdline: "y".repeat(2048), ramBytes: ram }),
    RangeError,
  );
});

Deno.test("placeInitrd() stays below initrd_addr_max and above the kernel", () => {
  assert.equal(
    placeInitrd({ sizeBytes: 4096, kernelEndGpa: 0x2000000, initrdAddrMax: 0x7fffffff, ramBytes: 512 * MIB }),
    512 * MIB - 4096,
  );
  assert.equal(
    placeInitrd({ sizeBytes: 100, kernelEndGpa: 0x2000000, initrdAddrMax: 0x0fffffff, ramBytes: 512 * MIB }),
    0x10000000 - 4096,
  );
  assert.equal(
    placeInitrd({ sizeBytes: 100, kernelEndGpa: 0, initrdAddrMax: 0x7fffffff, ramBytes: 4 * 2 ** 30 }),
    0x80000000 - 4096,
  );
  assert.equal(
    placeInitrd({ sizeBytes: 100, kernelEndGpa: 0, initrdAddrMax: 0xffffffff, ramBytes: 4 * 2 ** 30 }),
    0xb0000000 - 4096,
  );
  assert.throws(
    () =>
      placeInitrd({
        sizeBytes: 40 * MIB,
        kernelEndGpa: 0x2000000,
        initrdAddrMax: 0x7fffffff,
        ramBytes: 64 * MIB,
      }),
    /^RangeError: Cannot place initrd of 41943040 bytes/,
  );
});
