import assert from "node:assert/strict";
import type { GuestMemory } from "../../memory/guest_memory.ts";
import { BOOT_CS, BOOT_DS, GDT_CODE64, GDT_DATA, setupBootCpu } from "./cpu_setup.ts";
import { fakeMemory } from "./_testing.ts";
import { BOOT_STACK_POINTER, GDT_GPA, PML4_GPA } from "./layout.ts";

/** Walks 4-level page tables; returns the physical address and whether U/S was set at every level. */
function translate(mem: GuestMemory, cr3: number, va: number): { pa: number; user: boolean } {
  const v = BigInt(va);
  let table = BigInt(cr3);
  let user = true;
  for (const [shift, level] of [[39n, 4], [30n, 3], [21n, 2]] as const) {
    const entry = mem.readU64(Number(table + ((v >> shift) & 0x1ffn) * 8n));
    assert.equal(entry & 1n, 1n, `level ${level} entry present for 0x${va.toString(16)}`);
    user &&= (entry & 4n) !== 0n;
    if (level === 2) {
      assert.equal(entry & 0x80n, 0x80n, "2 MiB page");
      return { pa: Number((entry & 0x000f_ffff_ffe0_0000n) | (v & 0x1f_ffffn)), user };
    }
    table = entry & 0x000f_ffff_ffff_f000n;
  }
  throw new Error("unreachable");
}

Deno.test("setupBootCpu() identity-maps 0..4 GiB with 2 MiB pages and U/S=1 at every level", () => {
  const mem = fakeMemory(16 * 2 ** 20);
  const { sregs } = setupBootCpu(mem, { entry: 0x1000000, bootParamsGpa: 0x2000 });
  assert.equal(sregs.cr3, PML4_GPA);
  for (
    const va of [
      0,
      0x1234,
      0x100000,
      0x1000200,
      0x7654321,
      0xb000_0000,
      0xfec0_0000,
      0xfee0_0300,
      0xffff_ffff,
    ]
  ) {
    const { pa, user } = translate(mem, sregs.cr3, va);
    assert.equal(pa, va);
    assert.ok(user, `U/S at every level for 0x${va.toString(16)}`);
  }
  assert.equal(mem.readU64(PML4_GPA + 8), 0n, "nothing above 512 GiB");
  assert.equal(mem.readU64(PML4_GPA + 0x1000 + 4 * 8), 0n, "nothing above 4 GiB");
});

Deno.test("setupBootCpu() returns 64-bit long-mode registers with __BOOT_CS/__BOOT_DS", () => {
  const mem = fakeMemory(16 * 2 ** 20);
  const { regs, sregs } = setupBootCpu(mem, { entry: 0x1000200, bootParamsGpa: 0x2000 });
  assert.deepEqual(regs, { rip: 0x1000200, rsp: BOOT_STACK_POINTER, rsi: 0x2000, rflags: 2 });
  assert.equal(sregs.cr0, 0x80050033);
  assert.equal(sregs.cr4, 0x20);
  assert.equal(sregs.efer, 0xd00);
  assert.deepEqual(sregs.idt, { base: 0, limit: 0 });
  assert.deepEqual(sregs.gdt, { base: GDT_GPA, limit: 47 });
  assert.equal(mem.readU64(GDT_GPA + BOOT_CS), GDT_CODE64);
  assert.equal(mem.readU64(GDT_GPA + BOOT_DS), GDT_DATA);
  assert.equal(mem.readU64(GDT_GPA), 0n);
  assert.deepEqual(sregs.cs, {
    base: 0,
    limit: 0xffffffff,
    selector: 0x10,
    type: 0xb,
    present: 1,
    dpl: 0,
    db: 0,
    s: 1,
    l: 1,
    g: 1,
  });
  for (const s of [sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss]) {
    assert.deepEqual(s, {
      base: 0,
      limit: 0xffffffff,
      selector: 0x18,
      type: 0x3,
      present: 1,
      dpl: 0,
      db: 1,
      s: 1,
      l: 0,
      g: 1,
    });
  }
  assert.equal(sregs.tr?.selector, 0x20);
  assert.equal(sregs.tr?.type, 0xb);
  // The TSS descriptor in the GDT agrees with tr.
  const low = mem.readU64(GDT_GPA + 0x20);
  assert.equal(Number(low & 0xffffn), sregs.tr?.limit);
  assert.equal(Number((low >> 16n) & 0xffffffn), sregs.tr?.base);
  assert.equal(Number((low >> 40n) & 0xffn), 0x8b);
});
