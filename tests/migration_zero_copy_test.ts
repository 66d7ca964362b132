/**
 * Black box: capability `zero-copy-send` (QEMU's name). A paused guest's RAM goes over `unix:` by
 * reference (src/migration/splice.ts), into a destination that lands it in fresh pages and into one
 * whose RAM is pre-backed (`-mem-prealloc`), and the guest verifies every page of its pattern there.
 */
import assert from "node:assert/strict";
import { FINAL, waitMigration, withMigrationPair } from "./_fixture/migration.ts";

Deno.test("zero-copy-send (on by default): a paused guest's RAM goes over unix by reference, and the guest verifies it on the destination", async () => {
  for (const prealloc of [false, true]) {
    await withMigrationPair(
      {
        append: "mode=pattern mib=64 interval_ms=50",
        mem: "256M",
        ...(prealloc ? { dst: { extra: ["-mem-prealloc"] } } : {}),
      },
      async ({ src, dst, uri }) => {
        await src.ferry.waitLine(/PROBE VERIFY ok round=/);
        const capabilities = await src.qmp.call("query-migrate-capabilities") as {
          capability: string;
          state: boolean;
        }[];
        assert.deepEqual(
          capabilities.find((c) => c.capability === "zero-copy-send"),
          { capability: "zero-copy-send", state: true },
          "on by default in ferry",
        );
        await src.qmp.call("stop");
        await src.qmp.call("migrate", { uri });
        const r = await waitMigration(src.qmp, FINAL);
        assert.equal(r.status, "completed", JSON.stringify(r));
        await dst.qmp.call("cont");
        const m = await dst.ferry.waitLine(/PROBE VERIFY ok round=(\d+)/, 20000);
        assert.ok(Number(m[1]) > 0, `the guest continues, its pattern intact (prealloc: ${prealloc})`);
        assert.ok(!dst.ferry.lines.some((l) => /FAIL|PROBE BOOT/.test(l)), dst.ferry.transcript());
      },
    );
  }
});
