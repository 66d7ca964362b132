/**
 * Black box: precopy convergence on real KVM with the probe guest — a converging dirtying
 * workload, and forced non-convergence (tiny bandwidth, 1 ms downtime) under both policies.
 */
import assert from "node:assert/strict";
import {
  assertGuestRuns,
  assertNoFail,
  FINAL,
  type QmpMessage,
  ram,
  runState,
  sleep,
  waitMigration,
  withMigrationPair,
} from "./_fixture/migration.ts";

Deno.test("migration under a converging dirtying workload completes, reports downtime and several dirty syncs, and the guest continues on the destination", async () => {
  const append = "mode=dirty mib=64 rate=20000 interval_ms=50";
  await withMigrationPair({ append }, async ({ src, dst, uri }) => {
    await src.ferry.waitLine(/PROBE READY .*mib=64/);
    await sleep(500);
    assert.deepEqual(await src.qmp.execute("migrate", { uri }), { return: {} });
    const r = await waitMigration(src.qmp, FINAL, 30000);
    assert.equal(r.status, "completed", JSON.stringify(r));
    assert.equal(typeof r.downtime, "number", JSON.stringify(r));
    assert.ok((r.downtime as number) >= 0 && (r.downtime as number) < 2000, `downtime ${r.downtime} ms`);
    assert.ok((ram(r)["dirty-sync-count"] as number) >= 2, JSON.stringify(r));
    assert.ok((ram(r).normal as number) > 0, JSON.stringify(r));
    assert.equal(typeof r["total-time"], "number");
    assert.equal(typeof r["setup-time"], "number");

    const lastSrc = src.ferry.progress(0);
    await assertGuestRuns(dst.ferry, "destination");
    await dst.ferry.waitLine(/PROBE PROGRESS cpu=0 /, 5000, dst.ferry.lines.length);
    assert.ok(
      dst.ferry.progress(0) > lastSrc,
      `destination count ${dst.ferry.progress(0)} continues ${lastSrc}`,
    );
    assert.ok(!dst.ferry.lines.some((l) => /PROBE BOOT/.test(l)), "the destination did not reboot the guest");
    assertNoFail(dst.ferry, "destination");
    assert.equal(await runState(dst.qmp), "running");
    assert.equal(await runState(src.qmp), "postmigrate");
  });
});

/** Parameters that cannot converge against `mode=dirty mib=8` (every page dirty each pass). */
const NON_CONVERGING = { "max-bandwidth": 16 << 20, "downtime-limit": 1, "max-iterations": 3 };
const FAST_DIRTY = "mode=dirty mib=8 rate=0 interval_ms=50";

Deno.test("migration that cannot converge keeps iterating, then convergence-policy cancel fails it with a clear error and the source keeps running", async () => {
  await withMigrationPair({ append: FAST_DIRTY }, async ({ src, dst, uri }) => {
    await src.ferry.waitLine(/PROBE READY/);
    await src.qmp.call("migrate-set-parameters", { ...NON_CONVERGING, "convergence-policy": "cancel" });
    await src.qmp.call("migrate", { uri });
    const syncs: number[] = [];
    for (;;) {
      const r = await src.qmp.call("query-migrate") as QmpMessage;
      if (FINAL.includes(r.status as string)) break;
      if (r.status === "active") {
        syncs.push(ram(r)["dirty-sync-count"] as number);
        if ((ram(r)["dirty-sync-count"] as number) > 0) {
          assert.equal(
            typeof r["expected-downtime"],
            "number",
            `expected-downtime while active: ${JSON.stringify(r)}`,
          );
        }
      }
      await sleep(50);
    }
    const distinct = [...new Set(syncs)];
    assert.ok(
      distinct.length >= 2 && distinct.at(-1)! > distinct[0]!,
      `dirty-sync-count grew while active: ${distinct}`,
    );
    const r = await src.qmp.call("query-migrate") as QmpMessage;
    assert.equal(r.status, "failed", JSON.stringify(r));
    assert.match(String(r["error-desc"]), /^Cannot converge: \d+ bytes still dirty after 3 dirty passes/);
    assert.match(String(r["error-desc"]), /convergence-policy is cancel/);
    assert.equal(await runState(src.qmp), "running");
    await assertGuestRuns(src.ferry, "source after the failed migration");
    const st = await dst.ferry.wait(10000);
    assert.notEqual(st.code, 0, "the destination exits with an error");
    assert.ok(!dst.ferry.lines.some((l) => /PROBE/.test(l)), "the destination never ran the guest");
  });
});

Deno.test("migration that cannot converge completes with convergence-policy force, and the guest runs and verifies on the destination", async () => {
  const append = "mode=pattern mib=8 interval_ms=50";
  await withMigrationPair({ append }, async ({ src, dst, uri }) => {
    await src.ferry.waitLine(/PROBE VERIFY ok round=/);
    await src.qmp.call("migrate-set-parameters", { ...NON_CONVERGING, "convergence-policy": "force" });
    const params = await src.qmp.call("query-migrate-parameters") as QmpMessage;
    assert.equal(params["convergence-policy"], "force");
    assert.equal(params["downtime-limit"], 1);
    await src.qmp.call("migrate", { uri });
    const r = await waitMigration(src.qmp, FINAL, 30000);
    assert.equal(r.status, "completed", JSON.stringify(r));
    // Full pass, 3 dirty passes, the capped sync, the final sync.
    assert.ok((ram(r)["dirty-sync-count"] as number) >= 4, JSON.stringify(r));
    assert.equal(typeof r.downtime, "number");
    const srcRound = Number(
      src.ferry.lines.findLast((l) => /round=/.test(l))?.match(/round=(\d+)/)?.[1] ?? 0,
    );
    const m = await dst.ferry.waitLine(/PROBE VERIFY ok round=(\d+)/, 10000);
    assert.ok(Number(m[1]) >= srcRound, `destination round ${m[1]} continues ${srcRound}`);
    await assertGuestRuns(dst.ferry, "destination");
    assert.equal(await runState(dst.qmp), "running");
    assert.equal(await runState(src.qmp), "postmigrate");
  });
});
