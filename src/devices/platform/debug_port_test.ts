import assert from "node:assert/strict";
import { assertMigratable } from "../_testing.ts";
import { DebugPort } from "./debug_port.ts";

Deno.test("DebugPort remembers the last POST code and reports changes only", () => {
  const codes: number[] = [];
  const shared = DebugPort.createShared();
  const port = new DebugPort({ shared, onCode: (c) => codes.push(c) });
  for (const v of [0x10, 0x10, 0x20, 0x00, 0x00]) port.write(0, Uint8Array.of(v));
  assert.deepEqual(codes, [0x10, 0x20, 0x00]);
  port.write(0, Uint8Array.of(0xab));
  assert.equal(port.lastCode, 0xab);
  const d = new Uint8Array(1);
  new DebugPort({ shared }).read(0, d);
  assert.equal(d[0], 0xab, "another thread's object sees the same code");
});

Deno.test("DebugPort save/restore passes assertMigratable", () => {
  assertMigratable({
    make: () => new DebugPort({ shared: DebugPort.createShared() }),
    mutate: (d) => d.write(0, Uint8Array.of(0x5a)),
  });
});
