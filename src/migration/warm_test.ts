import assert from "node:assert/strict";
import { FakeVm, listenDestination } from "./_fake_vm.ts";
import { MigrationStatusTracker } from "./status.ts";
import { startMigration } from "./source.ts";
import { DEFAULT_MIGRATION_PARAMETERS } from "./parameters.ts";
import { MIGRATION_SYMBOLS, warmMigrationPath } from "./warm.ts";
import { openedSymbols } from "../ffi/shim.ts";

Deno.test("warmMigrationPath opens every migration symbol, so a migration over unix and tcp opens none on its clock", async () => {
  warmMigrationPath();
  const warmed = new Set(openedSymbols());
  for (const name of MIGRATION_SYMBOLS) assert.ok(warmed.has(name), `${name} is open`);
  for (const kind of ["unix", "tcp"] as const) {
    const source = new FakeVm({ regions: [{ gpa: 0, sizeBytes: 4 * 1024 * 1024 }] });
    source.fillPattern(3);
    const dest = new FakeVm({ regions: [{ gpa: 0, sizeBytes: 4 * 1024 * 1024 }], paused: true });
    const d = await listenDestination(dest, kind);
    const status = new MigrationStatusTracker();
    const h = startMigration(source, d.uri, DEFAULT_MIGRATION_PARAMETERS, status);
    assert.equal(await h.done, "completed", status.errorDesc);
    assert.equal(await d.result, null);
  }
  const late = openedSymbols().filter((n) => !warmed.has(n));
  assert.deepEqual(late, [], "symbols a migration opened after the warm-up: add them to MIGRATION_SYMBOLS");
});
