import assert from "node:assert/strict";
import { fakeMemory } from "./_testing.ts";
import { IOAPIC_GPA, LAPIC_GPA, MPTABLE_GPA } from "./layout.ts";
import { buildMpTable, byteSum, MAX_CPUS, writeMpTable } from "./mptable.ts";

function ascii(b: Uint8Array): string {
  return String.fromCharCode(...b);
}

for (const cpus of [1, 4, MAX_CPUS]) {
  Deno.test(`writeMpTable() describes ${cpus} CPUs with valid checksums`, () => {
    const mem = fakeMemory(64 * 2 ** 20);
    const r = writeMpTable(mem, cpus);
    assert.equal(r.floatingGpa % 16, 0);
    assert.ok(r.floatingGpa >= 0xf0000 && r.floatingGpa < 0x100000, "in the BIOS area Linux scans");
    const fp = mem.slice(r.floatingGpa, 16);
    assert.equal(ascii(fp.subarray(0, 4)), "_MP_");
    assert.equal(byteSum(fp), 0);
    assert.equal(mem.readU32(r.floatingGpa + 4), r.configGpa);
    assert.equal(fp[9], 4);

    const c = r.configGpa;
    const len = mem.readU16(c + 4);
    assert.equal(ascii(mem.slice(c, 4)), "PCMP");
    assert.equal(byteSum(mem.slice(c, len)), 0);
    assert.equal(mem.readU32(c + 36), LAPIC_GPA);
    const count = mem.readU16(c + 34);

    const cpuIds: number[] = [];
    const bsp: number[] = [];
    const irqToPin = new Map<number, number>();
    const lints: number[][] = [];
    let ioapic: number[] = [];
    let bus = "";
    let p = c + 44;
    for (let i = 0; i < count; i++) {
      const type = mem.readU8(p);
      if (type === 0) {
        cpuIds.push(mem.readU8(p + 1));
        assert.equal(mem.readU8(p + 3) & 1, 1, "enabled");
        if (mem.readU8(p + 3) & 2) bsp.push(mem.readU8(p + 1));
        p += 20;
        continue;
      }
      if (type === 1) bus = ascii(mem.slice(p + 2, 6));
      if (type === 2) ioapic = [mem.readU8(p + 1), mem.readU8(p + 2), mem.readU32(p + 4)];
      if (type === 3) {
        assert.equal(mem.readU8(p + 6), cpus, "destination IOAPIC id");
        irqToPin.set(mem.readU8(p + 5), mem.readU8(p + 7));
      }
      if (type === 4) lints.push([mem.readU8(p + 1), mem.readU8(p + 6), mem.readU8(p + 7)]);
      p += 8;
    }
    assert.equal(p, c + len, "entries fill the table exactly");
    assert.deepEqual(cpuIds, Array.from({ length: cpus }, (_, i) => i));
    assert.deepEqual(bsp, [0]);
    assert.equal(bus, "ISA   ");
    assert.deepEqual(ioapic, [cpus, 0x11, IOAPIC_GPA]);
    assert.equal(irqToPin.get(0), 2);
    assert.equal(irqToPin.has(2), false);
    for (const irq of [1, 3, 4, 8, 12, 14, 15]) assert.equal(irqToPin.get(irq), irq);
    assert.equal(irqToPin.size, 15);
    assert.deepEqual(lints, [[3, 0xff, 0], [1, 0xff, 1]]);
  });
}

Deno.test("buildMpTable() refuses CPU counts out of range", () => {
  assert.throws(() => buildMpTable(0), /^RangeError: Cannot build MP table for '0' CPUs: need 1 to 254/);
  assert.throws(() => buildMpTable(MAX_CPUS + 1), RangeError);
  assert.equal(buildMpTable(2, MPTABLE_GPA).length, 16 + 44 + 2 * 20 + 19 * 8);
});
