import assert from "node:assert/strict";
import { BOOT_PARAMS } from "./boot_params.ts";
import { buildBzImage, buildElf, fakeMemory } from "./_testing.ts";
import { loadKernel } from "./mod.ts";
import { BOOT_AREA_START, CMDLINE_GPA, MPTABLE_GPA, ZERO_PAGE_GPA } from "./layout.ts";

const MIB = 2 ** 20;

Deno.test("loadKernel() boots a synthetic ELF: entry, zero page, MP table, vCPU state", () => {
  const mem = fakeMemory(64 * MIB);
  const code = Uint8Array.from({ length: 0x2000 }, (_, i) => i & 0xff);
  const kernel = buildElf({
    entry: 0x100000,
    segments: [{ paddr: 0x100000, data: code }],
    pvhEntry: 0x100100,
  });
  const setup = loadKernel(mem, {
    kernel,
    kernelPath: "probe.elf",
    cmdline: "mode=idle",
    initrd: new Uint8Array(100).fill(7),
    cpus: 2,
    ramBytes: 64 * MIB,
  });
  assert.equal(setup.kind, "elf");
  assert.equal(setup.entry, 0x100000);
  assert.equal(setup.pvhEntry, 0x100100);
  assert.equal(setup.bootParamsGpa, ZERO_PAGE_GPA);
  assert.equal(setup.mpTableGpa, MPTABLE_GPA);
  assert.equal(setup.acpiRsdpGpa, undefined);
  assert.equal(setup.vcpu.regs.rip, 0x100000);
  assert.equal(setup.vcpu.regs.rsi, ZERO_PAGE_GPA);
  assert.deepEqual(mem.slice(0x100000, code.length), code);
  assert.equal(mem.readU32(ZERO_PAGE_GPA + BOOT_PARAMS.cmdLinePtr), CMDLINE_GPA);
  assert.equal(mem.readU32(ZERO_PAGE_GPA + BOOT_PARAMS.ramdiskImage), setup.initrdGpa);
  assert.equal(mem.readU64(ZERO_PAGE_GPA + BOOT_PARAMS.acpiRsdpAddr), 0n);
  assert.equal(String.fromCharCode(...mem.slice(MPTABLE_GPA, 4)), "_MP_");
});

Deno.test("loadKernel() with acpi hands the RSDP to the kernel", () => {
  const mem = fakeMemory(64 * MIB);
  const setup = loadKernel(mem, {
    kernel: buildBzImage({ kernel: new Uint8Array(0x1000) }),
    kernelPath: "bz",
    cmdline: "",
    cpus: 4,
    ramBytes: 64 * MIB,
    acpi: true,
  });
  assert.equal(setup.kind, "bzimage");
  assert.equal(setup.entry, 0x1000200);
  assert.equal(setup.acpiRsdpGpa, 0xe0000);
  assert.equal(mem.readU64(ZERO_PAGE_GPA + BOOT_PARAMS.acpiRsdpAddr), 0xe0000n);
});

Deno.test("loadKernel() clears stale boot tables and rejects memory smaller than ramBytes", () => {
  const mem = fakeMemory(64 * MIB);
  mem.fill(BOOT_AREA_START, 0x6000, 0xee);
  const kernel = buildElf({ entry: 0x100000, segments: [{ paddr: 0x100000, data: new Uint8Array(16) }] });
  loadKernel(mem, { kernel, kernelPath: "k", cmdline: "", cpus: 1, ramBytes: 64 * MIB });
  assert.equal(mem.readU8(0x4000), 0, "boot stack page cleared");
  assert.throws(
    () =>
      loadKernel(fakeMemory(32 * MIB), { kernel, kernelPath: "k", cmdline: "", cpus: 1, ramBytes: 64 * MIB }),
    /^RangeError: Cannot boot with '67108864' bytes of RAM: guest memory does not cover 0x0/,
  );
});

Deno.test("loadKernel() marks every page it writes in the VMM dirty bitmap", () => {
  const mem = fakeMemory(64 * MIB);
  const kernel = buildElf({ entry: 0x100000, segments: [{ paddr: 0x100000, data: new Uint8Array(0x3000) }] });
  const setup = loadKernel(mem, {
    kernel,
    kernelPath: "k",
    cmdline: "",
    initrd: new Uint8Array(10),
    cpus: 1,
    ramBytes: 64 * MIB,
  });
  const bitmap = new Uint32Array(64 * MIB / 4096 / 32);
  mem.takeVmmDirty(0, bitmap);
  const dirty = (gpa: number) => ((bitmap[gpa >>> 17]! >>> ((gpa >>> 12) & 31)) & 1) === 1;
  for (
    const gpa of [0x1000, 0x2000, 0x3000, 0xa0000, 0xa5000, 0xf0000, 0x100000, 0x102000, setup.initrdGpa!]
  ) {
    assert.ok(dirty(gpa), `page 0x${gpa.toString(16)} dirty`);
  }
  assert.ok(!dirty(0x8000), "the guest's low area is untouched");
  assert.ok(!dirty(0x200000));
});
