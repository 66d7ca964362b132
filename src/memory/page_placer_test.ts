import assert from "node:assert/strict";
import { allocateRam, freeRam, hostGuestMemory, residency } from "./host_memory.ts";
import { PagePlacer } from "./page_placer.ts";

const PAGE = 4096;

Deno.test("PagePlacer places pages into never-backed guest RAM and over present ones, and RAM faults normally once closed", async () => {
  const layout = allocateRam([{ gpa: 0x100000, sizeBytes: 64 * PAGE }], { hugePages: false });
  const mem = hostGuestMemory(layout);
  try {
    mem.write(0x100000 + 3 * PAGE, Uint8Array.of(1)); // page 3 present before the placer opens
    const placer = PagePlacer.open(layout);
    assert.ok(placer, "this host has userfaultfd and no swap");
    const bytes = Uint8Array.from({ length: 8 * PAGE }, (_, i) => (i >> 12) + 1);
    await placer.place(0x100000, bytes);
    // Another chunk while the first is done, and one more in flight at once.
    await Promise.all([placer.place(0x100000 + 16 * PAGE, bytes), placer.place(0x100000 + 32 * PAGE, bytes)]);
    const res = residency(layout, 0x100000, 64)!;
    const present = [...res.keys()].filter((p) => res[p]! & 1);
    assert.deepEqual(present, [
      0,
      1,
      2,
      3,
      4,
      5,
      6,
      7,
      16,
      17,
      18,
      19,
      20,
      21,
      22,
      23,
      32,
      33,
      34,
      35,
      36,
      37,
      38,
      39,
    ]);
    await assert.rejects(
      () => placer.place(0x100000 + 60 * PAGE, bytes),
      RangeError,
      "past the region's end",
    );
    placer.close();
    assert.deepEqual(mem.slice(0x100000, 8 * PAGE), bytes);
    assert.deepEqual(mem.slice(0x100000 + 32 * PAGE, 8 * PAGE), bytes);
    // Closed: a never-backed page reads as zero and takes a write again (no wait on the descriptor).
    assert.equal(mem.readU8(0x100000 + 50 * PAGE), 0);
    mem.write(0x100000 + 50 * PAGE, Uint8Array.of(9));
    assert.equal(mem.readU8(0x100000 + 50 * PAGE), 9);
    await assert.rejects(() => placer.place(0x100000, bytes), /closed/);
  } finally {
    freeRam(layout);
  }
});
