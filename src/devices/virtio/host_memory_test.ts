import assert from "node:assert/strict";
import { fakeMemory } from "./_testing.ts";
import { HostMemory } from "./host_memory.ts";
import { PAGE_SIZE } from "../../memory/guest_memory.ts";

Deno.test("HostMemory reads a little-endian u32 and writes a byte that marks its page dirty", () => {
  const mem = fakeMemory();
  const host = new HostMemory(mem);
  const gpa = 5 * PAGE_SIZE + 12;
  mem.write(gpa, Uint8Array.of(0x78, 0x56, 0x34, 0x12));
  assert.equal(host.u32(gpa), 0x12345678);
  const page = 9, at = page * PAGE_SIZE + 100;
  const dirty = () => (mem.regions[0]!.dirtyWords[page >>> 5]! >>> (page & 31)) & 1;
  mem.regions[0]!.dirtyWords.fill(0);
  host.setU8(at, 0xab);
  assert.equal(mem.readU8(at), 0xab);
  assert.equal(dirty(), 1);
  assert.throws(() => host.u32(mem.sizeBytes - 2), RangeError);
  assert.throws(() => host.setU8(mem.sizeBytes, 1), RangeError);
});
