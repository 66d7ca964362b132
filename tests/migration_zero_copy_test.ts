/**
 * Black box: capability `zero-copy-send` (QEMU's name). A paused guest's RAM goes over `unix:` by
 * reference (src/migration/splice.ts) into a destination whose RAM is pre-backed, and the guest
 * verifies every page of its pattern there.
 */
import assert from "node:assert/strict";
import { FINAL, waitMigration, withMigrationPair } from "./_fixture/migration.ts";

Deno.test("zero-copy-send: a paused guest's RAM goes over unix by reference, and the guest verifies it on a -mem-prealloc destination", async () => {
  await withMigrationPair(
    { append: "mode=pattern mib=64 interval_ms=50", mem: "256M", dst: { extra: ["-mem-prealloc"] } },
    async ({ src, dst, uri }) => {
      await src.ferry.waitLine(/PROBE VERIFY ok round=/);
      const capabilities = await src.qmp.call("query-migrate-capabilities") as {
        capability: string;
        state: boolean;
      }[];
      assert.deepEqual(
        capabilities.find((c) => c.capability === "zero-copy-send"),
        { capability: "zero-copy-send", state: false },
        "off by default, as in QEMU",
      );
      await src.qmp.call("migrate-set-capabilities", {
        capabilities: [{ capability: "zero-copy-send", state: true }],
      });
      await src.qmp.call("stop");
      await src.qmp.call("migrate", { uri });
      const r = await waitMigration(src.qmp, FINAL);
      assert.equal(r.status, "completed", JSON.stringify(r));
      await dst.qmp.call("cont");
      const m = await dst.ferry.waitLine(/PROBE VERIFY ok round=(\d+)/, 20000);
      assert.ok(Number(m[1]) > 0, "the guest continues from where it was paused, its pattern intact");
      assert.ok(!dst.ferry.lines.some((l) => /FAIL|PROBE BOOT/.test(l)), dst.ferry.transcript());
    },
  );
});
