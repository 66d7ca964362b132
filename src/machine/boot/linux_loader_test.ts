import assert from "node:assert/strict";
import { buildBzImage, buildElf, fakeMemory } from "./_testing.ts";
import { loadKernelImage, parseKernel } from "./linux_loader.ts";

const MIB = 2 ** 20;
const NOT_KERNEL = "Cannot load kernel 'k': not an ELF64 x86_64 or bzImage file";

function pattern(n: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => (i * 7 + seed) & 0xff);
}

function sampleElf(): Uint8Array {
  return buildElf({
    entry: 0x100040,
    segments: [
      { paddr: 0x100000, data: pattern(0x300, 1) },
      { paddr: 0x200000, data: pattern(0x80, 2), memBytes: 0x2000 },
    ],
    pvhEntry: 0x100010,
  });
}

Deno.test("parseKernel() reads an ELF64's PT_LOADs, entry and PVH note", () => {
  const k = parseKernel(sampleElf(), "k");
  assert.equal(k.kind, "elf");
  if (k.kind !== "elf") return;
  assert.equal(k.entry, 0x100040);
  assert.equal(k.pvhEntry, 0x100010);
  assert.deepEqual(k.segments.map((s) => [s.paddr, s.fileBytes, s.memBytes]), [
    [0x100000, 0x300, 0x300],
    [0x200000, 0x80, 0x2000],
  ]);
});

Deno.test("loadKernelImage() copies ELF segments to p_paddr and zeroes the bss", () => {
  const mem = fakeMemory(8 * MIB);
  mem.fill(0x200000, 0x3000, 0xaa);
  const loaded = loadKernelImage(mem, parseKernel(sampleElf(), "k"), { ramBytes: 8 * MIB, path: "k" });
  assert.equal(loaded.entry, 0x100040);
  assert.equal(loaded.loadGpa, 0x100000);
  assert.equal(loaded.endGpa, 0x202000);
  assert.equal(loaded.pvhEntry, 0x100010);
  assert.deepEqual(mem.slice(0x100000, 0x300), pattern(0x300, 1));
  assert.deepEqual(mem.slice(0x200000, 0x80), pattern(0x80, 2));
  assert.ok(mem.slice(0x200080, 0x2000 - 0x80).every((b) => b === 0), "bss zeroed");
  assert.equal(mem.readU8(0x202000), 0xaa, "nothing past p_memsz");
});

Deno.test("parseKernel() rejects garbage, empty files and foreign ELFs with one line", () => {
  for (const bytes of [new Uint8Array(0), new Uint8Array(3), new Uint8Array(4096).fill(0x41)]) {
    assert.throws(
      () => parseKernel(bytes, "k"),
      (e: Error) => e instanceof SyntaxError && e.message === NOT_KERNEL,
    );
  }
  const elf32 = buildElf({ entry: 0x100000, segments: [{ paddr: 0x100000, data: pattern(16, 0) }], cls: 1 });
  assert.throws(
    () => parseKernel(elf32, "k"),
    /^SyntaxError: Cannot load kernel 'k': not an ELF64 x86_64 or bzImage file \(ELF class 1/,
  );
  const arm = buildElf({
    entry: 0x100000,
    segments: [{ paddr: 0x100000, data: pattern(16, 0) }],
    machine: 183,
  });
  assert.throws(() => parseKernel(arm, "k"), /machine 183/);
});

Deno.test("parseKernel() gives a SyntaxError for every truncation of an ELF and a bzImage", () => {
  const files = [sampleElf(), buildBzImage({ kernel: pattern(0x400, 3) })];
  for (const file of files) {
    for (let n = 0; n < file.length; n++) {
      assert.throws(() => parseKernel(file.subarray(0, n), "k"), (e: Error) => {
        assert.ok(e instanceof SyntaxError, `length ${n}: ${e}`);
        assert.match(e.message, /^Cannot load kernel 'k': /);
        assert.ok(!e.message.includes("\n"));
        return true;
      });
    }
    parseKernel(file, "k");
  }
});

Deno.test("parseKernel() rejects p_filesz above p_memsz and an entry outside the segments", () => {
  const bad = buildElf({
    entry: 0x100000,
    segments: [{ paddr: 0x100000, data: pattern(64, 0), memBytes: 32 }],
  });
  assert.throws(() => parseKernel(bad, "k"), /p_filesz 64 above p_memsz 32/);
  const far = buildElf({ entry: 0x900000, segments: [{ paddr: 0x100000, data: pattern(64, 0) }] });
  assert.throws(() => parseKernel(far, "k"), /entry 0x900000 is outside every PT_LOAD segment/);
});

Deno.test("loadKernelImage() refuses ELF segments outside usable RAM", () => {
  for (const paddr of [0x7f0000 + 0x8000, 0x2000, 0xf0000]) {
    const elf = buildElf({ entry: paddr, segments: [{ paddr, data: pattern(0x10000, 0) }] });
    assert.throws(
      () => loadKernelImage(fakeMemory(8 * MIB), parseKernel(elf, "k"), { ramBytes: 8 * MIB, path: "k" }),
      (e: Error) => e instanceof RangeError && /outside usable guest RAM/.test(e.message),
    );
  }
});

Deno.test("parseKernel() reads a bzImage setup header", () => {
  const file = buildBzImage({ setupSects: 0, kernel: pattern(0x800, 4) });
  const k = parseKernel(file, "k");
  assert.equal(k.kind, "bzimage");
  if (k.kind !== "bzimage") return;
  assert.equal(k.header.setupSects, 4);
  assert.equal(k.header.protocolVersion, 0x020f);
  assert.equal(k.header.xloadflags, 0x7f);
  assert.equal(k.header.kernelAlignment, 0x200000);
  assert.equal(k.header.relocatable, true);
  assert.equal(k.header.prefAddress, 0x1000000);
  assert.equal(k.header.cmdlineSize, 2047);
  assert.equal(k.header.headerEnd, 0x26c);
  assert.equal(k.setupHeader.length, 0x26c - 0x1f1);
  assert.deepEqual(k.protectedMode, pattern(0x800, 4));
});

Deno.test("parseKernel() refuses bzImages without a 64-bit entry or with an old protocol", () => {
  assert.throws(
    () => parseKernel(buildBzImage({ kernel: pattern(64, 0), xloadflags: 0 }), "k"),
    /no 64-bit entry/,
  );
  assert.throws(
    () => parseKernel(buildBzImage({ kernel: pattern(64, 0), version: 0x0205 }), "k"),
    /boot protocol 2\.05 is older than 2\.06/,
  );
  assert.throws(() => parseKernel(buildBzImage({ kernel: pattern(64, 0), loadflags: 0 }), "k"), /zImage/);
});

Deno.test("loadKernelImage() loads a bzImage at pref_address with the entry at +0x200", () => {
  const mem = fakeMemory(32 * MIB);
  const kernel = pattern(0x1000, 5);
  const loaded = loadKernelImage(mem, parseKernel(buildBzImage({ kernel }), "k"), {
    ramBytes: 32 * MIB,
    path: "k",
  });
  assert.equal(loaded.loadGpa, 0x1000000);
  assert.equal(loaded.entry, 0x1000200);
  assert.equal(loaded.endGpa, 0x1000000 + 0x400000);
  assert.deepEqual(mem.slice(0x1000000, kernel.length), kernel);
});

Deno.test("loadKernelImage() loads at 1 MiB when there is no pref_address", () => {
  const mem = fakeMemory(32 * MIB);
  const kernel = pattern(0x1000, 6);
  const file = buildBzImage({ kernel, prefAddress: 0 });
  const loaded = loadKernelImage(mem, parseKernel(file, "k"), { ramBytes: 32 * MIB, path: "k" });
  assert.equal(loaded.loadGpa, 0x100000);
  assert.equal(loaded.entry, 0x100200);
  assert.deepEqual(mem.slice(0x100000, kernel.length), kernel);
});

Deno.test("loadKernelImage() refuses a bzImage whose init_size does not fit in RAM", () => {
  const file = buildBzImage({ kernel: pattern(0x1000, 0), initSize: 0x2000000 });
  assert.throws(
    () => loadKernelImage(fakeMemory(32 * MIB), parseKernel(file, "k"), { ramBytes: 32 * MIB, path: "k" }),
    /^RangeError: Cannot load kernel 'k': it needs RAM from 0x100000 to 0x3000000 \(init_size 33554432\)/,
  );
});
