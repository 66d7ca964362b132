/**
 * Black box: what the source does after the switch-over (paused, all state sent) when the
 * destination does not confirm. The destination here is a scripted socket speaking the wire
 * format of docs/migration.md, so the failure lands exactly after `complete`; and a paused source
 * migrated to a real ferry.
 */
import assert from "node:assert/strict";
import {
  FINAL,
  KIND,
  runState,
  scriptedDestination,
  sleep,
  startVm,
  stopVm,
  tempDir,
  type Vm,
  waitMigration,
  withMigrationPair,
} from "./_fixture/migration.ts";

const APPEND = "mode=pattern mib=8 interval_ms=50";

for (const then of ["nack", "close"] as const) {
  for (const paused of [false, true]) {
    const before = paused ? "a paused source" : "a running source";
    const how = then === "nack"
      ? "refuses the state after complete"
      : "closes without confirming after complete";
    Deno.test(`${before} whose destination ${how} fails, rolls back and is ${paused ? "still paused" : "running again"}`, async () => {
      const dir = tempDir();
      let src: Vm | undefined;
      const dst = scriptedDestination(`${dir}/fake.sock`, then);
      try {
        src = await startVm({ dir, name: "src", append: APPEND });
        await src.ferry.waitLine(/PROBE VERIFY ok/);
        if (paused) {
          await src.qmp.call("stop");
          assert.equal(await runState(src.qmp), "paused");
          await sleep(200);
        }
        await src.qmp.call("migrate", { uri: `unix:${dir}/fake.sock` });
        const r = await waitMigration(src.qmp, FINAL, 20000);
        const kinds = await dst.done;
        assert.equal(kinds.at(-1), KIND.complete, `the source sent everything: ${kinds}`);
        assert.equal(r.status, "failed", JSON.stringify(r));
        assert.match(
          String(r["error-desc"]),
          then === "nack"
            ? /^Cannot wait for the destination to resume: destination failed: Cannot restore device state: scripted refusal$/
            : /^Cannot wait for the destination to resume: .*destination closed the connection/,
        );
        const from = src.ferry.lines.length;
        await sleep(400);
        if (paused) {
          assert.equal(await runState(src.qmp), "paused");
          assert.equal(
            src.ferry.lines.length,
            from,
            `the guest stays paused\n${src.ferry.lines.slice(from).join("\n")}`,
          );
          await src.qmp.call("cont");
        }
        assert.equal(await runState(src.qmp), "running");
        await src.ferry.waitLine(/PROBE VERIFY ok/, 5000, src.ferry.lines.length);
        assert.ok(!src.ferry.lines.some((l) => /FAIL/.test(l)), src.ferry.transcript());
      } finally {
        dst.listener.close();
        await stopVm(src);
        Deno.removeSync(dir, { recursive: true });
      }
    });
  }
}

Deno.test("a paused source migrated to a real destination completes and its guest stays paused there until cont", async () => {
  await withMigrationPair({ append: APPEND }, async ({ src, dst, uri }) => {
    await src.ferry.waitLine(/PROBE VERIFY ok/);
    await src.qmp.call("stop");
    await src.qmp.call("migrate", { uri });
    const r = await waitMigration(src.qmp, FINAL);
    assert.equal(r.status, "completed", JSON.stringify(r));
    assert.equal(await runState(src.qmp), "postmigrate");
    await sleep(500);
    assert.equal(
      await runState(dst.qmp),
      "paused",
      "the guest was paused on the source (QEMU keeps it paused)",
    );
    assert.ok(!dst.ferry.lines.some((l) => /PROBE/.test(l)), "the destination's guest has not run");
    await dst.qmp.call("cont");
    assert.equal(await runState(dst.qmp), "running");
    const m = await dst.ferry.waitLine(/PROBE VERIFY ok round=(\d+)/, 10000);
    assert.ok(Number(m[1]) > 0, "the guest continues from where it was paused");
    assert.ok(!dst.ferry.lines.some((l) => /FAIL|PROBE BOOT/.test(l)), dst.ferry.transcript());
  });
});
