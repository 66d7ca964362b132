import assert from "node:assert/strict";
import { allocateRam, freeRam, hostGuestMemory, residency } from "./host_memory.ts";

Deno.test("residency() reports never-touched guest RAM as not resident and written pages as resident", () => {
  const layout = allocateRam([{ gpa: 0, sizeBytes: 64 << 20 }]);
  try {
    const mem = hostGuestMemory(layout);
    mem.writeU8(5 * 4096 + 7, 1);
    const vec = residency(layout, 0, 16);
    if (vec === undefined) return; // a host with swap: the optimisation is off by design
    assert.equal(vec.length, 16);
    assert.equal(vec[5]! & 1, 1, "the written page is resident");
    // With transparent huge pages the whole 2 MiB around it may be backed; far pages are not.
    const far = residency(layout, 32 << 20, 4)!;
    assert.deepEqual([...far].map((b) => b & 1), [0, 0, 0, 0], "untouched pages are not resident");
    assert.equal(residency(layout, (64 << 20) - 4096, 2), undefined, "a range past RAM has no answer");
  } finally {
    freeRam(layout);
  }
});
