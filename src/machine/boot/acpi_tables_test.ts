import assert from "node:assert/strict";
import { fakeMemory } from "./_testing.ts";
import { buildAcpiTables, FADT_HW_REDUCED_ACPI, writeAcpiTables } from "./acpi_tables.ts";
import { IOAPIC_GPA, LAPIC_GPA } from "./layout.ts";
import { byteSum } from "./mptable.ts";

function ascii(b: Uint8Array): string {
  return String.fromCharCode(...b);
}

Deno.test("writeAcpiTables() links RSDP → XSDT → FADT/DSDT/MADT with valid checksums", () => {
  const mem = fakeMemory(64 * 2 ** 20);
  const r = writeAcpiTables(mem, { cpus: 3 });
  const rsdp = mem.slice(r.rsdpGpa, 36);
  assert.equal(ascii(rsdp.subarray(0, 8)), "RSD PTR ");
  assert.equal(byteSum(rsdp.subarray(0, 20)), 0);
  assert.equal(byteSum(rsdp), 0);
  assert.equal(rsdp[15], 2);
  const xsdt = Number(mem.readU64(r.rsdpGpa + 24));
  assert.equal(xsdt, r.tables.XSDT.gpa);

  const tables = new Map<string, number>();
  const xlen = mem.readU32(xsdt + 4);
  for (let p = xsdt + 36; p < xsdt + xlen; p += 8) {
    const gpa = Number(mem.readU64(p));
    tables.set(ascii(mem.slice(gpa, 4)), gpa);
  }
  assert.deepEqual([...tables.keys()], ["FACP", "APIC"]);
  const fadt = tables.get("FACP")!;
  const dsdt = mem.readU32(fadt + 40);
  assert.equal(Number(mem.readU64(fadt + 140)), dsdt);
  assert.equal(ascii(mem.slice(dsdt, 4)), "DSDT");
  assert.equal(mem.readU32(fadt + 112) & FADT_HW_REDUCED_ACPI, FADT_HW_REDUCED_ACPI);
  for (const gpa of [xsdt, fadt, dsdt, tables.get("APIC")!]) {
    assert.equal(byteSum(mem.slice(gpa, mem.readU32(gpa + 4))), 0, `checksum of ${ascii(mem.slice(gpa, 4))}`);
  }

  const madt = tables.get("APIC")!;
  assert.equal(mem.readU32(madt + 36), LAPIC_GPA);
  const apicIds: number[] = [];
  let ioapic: number[] = [];
  const overrides: number[][] = [];
  for (let p = madt + 44; p < madt + mem.readU32(madt + 4); p += mem.readU8(p + 1)) {
    const type = mem.readU8(p);
    if (type === 0) apicIds.push(mem.readU8(p + 3));
    if (type === 1) ioapic = [mem.readU8(p + 2), mem.readU32(p + 4), mem.readU32(p + 8)];
    if (type === 2) overrides.push([mem.readU8(p + 3), mem.readU32(p + 4)]);
  }
  assert.deepEqual(apicIds, [0, 1, 2]);
  assert.deepEqual(ioapic, [3, IOAPIC_GPA, 0]);
  assert.deepEqual(overrides, [[0, 2]]);
});

Deno.test("buildAcpiTables() puts caller AML in the DSDT", () => {
  const aml = Uint8Array.of(0x10, 0x05, 0x5c, 0x5f, 0x53, 0x42, 0x5f); // Scope (\_SB_) {}
  const { bytes, result } = buildAcpiTables({ cpus: 1, dsdtAml: aml }, 0);
  const d = result.tables.DSDT;
  assert.equal(d.sizeBytes, 36 + aml.length);
  assert.deepEqual(bytes.subarray(d.gpa + 36, d.gpa + d.sizeBytes), aml);
  assert.equal(byteSum(bytes.subarray(d.gpa, d.gpa + d.sizeBytes)), 0);
  assert.throws(() => buildAcpiTables({ cpus: 0 }), RangeError);
});
