import assert from "node:assert/strict";
import {
  BOOT_AREA_END,
  BOOT_AREA_START,
  E820_RAM,
  E820_RESERVED,
  e820Map,
  EBDA_START,
  HIGH_RAM_START,
  isUsableRam,
  KERNEL_LOW_GPA,
  PCIE_ECAM_GPA,
  ramRegions,
} from "./layout.ts";

const MIB = 2 ** 20;
const GIB = 2 ** 30;

Deno.test("ramRegions() keeps small RAM in one region from 0", () => {
  assert.deepEqual(ramRegions(512 * MIB), [{ gpa: 0, sizeBytes: 512 * MIB }]);
});

Deno.test("ramRegions() splits RAM above the ECAM to 4 GiB", () => {
  assert.deepEqual(ramRegions(4 * GIB), [
    { gpa: 0, sizeBytes: 0xb000_0000 },
    { gpa: HIGH_RAM_START, sizeBytes: 4 * GIB - 0xb000_0000 },
  ]);
  assert.deepEqual(ramRegions(0xb000_0000), [{ gpa: 0, sizeBytes: 0xb000_0000 }]);
});

Deno.test("ramRegions() rejects sizes that are too small or not page multiples", () => {
  assert.throws(() => ramRegions(0), RangeError);
  assert.throws(() => ramRegions(MIB), RangeError);
  assert.throws(() => ramRegions(512 * MIB + 1), /Cannot lay out guest RAM of '536870913' bytes/);
});

for (const ram of [2 * MIB, 512 * MIB, 3 * GIB, 6 * GIB]) {
  Deno.test(`e820Map() is sorted, disjoint and counts all ${ram / MIB} MiB of RAM`, () => {
    const map = e820Map(ram);
    let ramSum = 0;
    for (let i = 0; i < map.length; i++) {
      const e = map[i]!;
      if (i > 0) assert.ok(e.gpa >= map[i - 1]!.gpa + map[i - 1]!.sizeBytes, `entry ${i} overlaps`);
      if (e.type === E820_RAM) ramSum += e.sizeBytes;
    }
    const reservedLow = (BOOT_AREA_END - BOOT_AREA_START) + (KERNEL_LOW_GPA - EBDA_START);
    assert.equal(ramSum, ram - reservedLow);
  });
}

Deno.test("e820Map() reserves ferry's boot area, the EBDA/BIOS area and the ECAM, and leaves 0x7000 free", () => {
  const map = e820Map(512 * MIB);
  assert.deepEqual(map, [
    { gpa: 0, sizeBytes: 0x1000, type: E820_RAM },
    { gpa: 0x1000, sizeBytes: 0x6000, type: E820_RESERVED },
    { gpa: 0x7000, sizeBytes: 0x9fc00 - 0x7000, type: E820_RAM },
    { gpa: 0x9fc00, sizeBytes: 0x100000 - 0x9fc00, type: E820_RESERVED },
    { gpa: 0x100000, sizeBytes: 512 * MIB - 0x100000, type: E820_RAM },
    { gpa: PCIE_ECAM_GPA, sizeBytes: 0x1000_0000, type: E820_RESERVED },
  ]);
  assert.ok(isUsableRam(512 * MIB, 0x8000, 0x1000));
  assert.ok(!isUsableRam(512 * MIB, 0x2000, 0x10));
  assert.ok(!isUsableRam(512 * MIB, 0xf0000, 0x10));
  assert.ok(!isUsableRam(512 * MIB, 512 * MIB - 0x1000, 0x2000));
});
