/**
 * Black box: a peer dies mid-stream (SIGKILL of either side), and repeated failed or canceled
 * migrations do not leak file descriptors or memory in the source. Real KVM, the probe guest.
 */
import assert from "node:assert/strict";
import {
  assertGuestRuns,
  assertNoStackTrace,
  fdCount,
  FINAL,
  freePort,
  type QmpMessage,
  ram,
  rssKib,
  runState,
  sleep,
  startVm,
  stopVm,
  tempDir,
  type Vm,
  waitMigration,
  withMigrationPair,
} from "./_fixture/migration.ts";

const PATTERN = "mode=pattern mib=8 interval_ms=50";
/** Several seconds of active precopy for `PATTERN`. */
const VERY_SLOW = { "max-bandwidth": 2 << 20, "downtime-limit": 2000 };

for (const transport of ["tcp", "unix"] as const) {
  Deno.test(`migration over ${transport} whose destination is killed mid-stream fails with a clear error-desc and the source keeps running`, async () => {
    await withMigrationPair({ append: PATTERN, transport }, async ({ src, dst, uri }) => {
      await src.ferry.waitLine(/PROBE VERIFY ok/);
      await src.qmp.call("migrate-set-parameters", VERY_SLOW);
      await src.qmp.call("migrate", { uri });
      await waitMigration(src.qmp, ["active"], 5000, 5);
      await sleep(300);
      const mid = await src.qmp.call("query-migrate") as QmpMessage;
      assert.equal(mid.status, "active");
      assert.ok((ram(mid).transferred as number) > 0, "RAM is on its way");
      const t0 = Date.now();
      await dst.ferry.kill("SIGKILL");
      const r = await waitMigration(src.qmp, FINAL, 5000);
      assert.equal(r.status, "failed", JSON.stringify(r));
      assert.ok(Date.now() - t0 < 3000, `noticed in ${Date.now() - t0} ms`);
      assert.match(
        String(r["error-desc"]),
        /^Cannot send (full|dirty) RAM.*: .*(closed|reset|[Bb]roken pipe)/,
        `error-desc: ${r["error-desc"]}`,
      );
      assert.equal(await runState(src.qmp), "running");
      await src.ferry.waitLine(/PROBE VERIFY ok/, 5000, src.ferry.lines.length);
      await assertGuestRuns(src.ferry, "source after the failed migration");
      assertNoStackTrace(src.ferry);
    });
  });
}

for (const moment of ["before the configuration was answered", "in the middle of RAM"] as const) {
  Deno.test(`a destination whose source is killed ${moment} exits non-zero with a clear error and never runs the guest`, async () => {
    await withMigrationPair({ append: PATTERN }, async ({ src, dst, uri }) => {
      await src.ferry.waitLine(/PROBE VERIFY ok/);
      await src.qmp.call("migrate-set-parameters", VERY_SLOW);
      if (moment === "before the configuration was answered") {
        // The stopped destination's kernel takes the connection, hello and config; nobody answers.
        dst.ferry.child.kill("SIGSTOP");
        await src.qmp.call("migrate", { uri });
        await waitMigration(src.qmp, ["setup"], 5000, 5);
        await sleep(200);
        await src.ferry.kill("SIGKILL");
        dst.ferry.child.kill("SIGCONT");
      } else {
        await src.qmp.call("migrate", { uri });
        await waitMigration(dst.qmp, ["active"], 5000, 5);
        while ((ram(await dst.qmp.call("query-migrate") as QmpMessage).normal as number) < 256) {
          await sleep(20);
        }
        await src.ferry.kill("SIGKILL");
      }
      const st = await dst.ferry.wait(10000);
      assert.notEqual(st.code, 0, dst.ferry.transcript());
      assert.equal(st.signal, null, "exited, not killed");
      const last = dst.ferry.stderrLines.at(-1) ?? "";
      assert.match(
        last,
        /^ferry: incoming migration failed: .*source closed the connection/,
        dst.ferry.transcript(),
      );
      assert.ok(
        !dst.ferry.lines.some((l) => /PROBE/.test(l)),
        `the destination never ran the guest\n${dst.ferry.transcript()}`,
      );
      assertNoStackTrace(dst.ferry);
    });
  });
}

Deno.test("a source that failed or canceled migrations 10 times has as many open fds as before and keeps running", async () => {
  const dir = tempDir();
  let src: Vm | undefined;
  try {
    src = await startVm({ dir, name: "src", append: PATTERN });
    await src.ferry.waitLine(/PROBE VERIFY ok/);
    const pid = src.ferry.child.pid;
    // One warm-up round so lazily created resources exist before counting.
    const once = async (i: number) => {
      const uri = i % 2 === 0 ? `unix:${dir}/nobody.sock` : `tcp:127.0.0.1:${freePort()}`;
      await src!.qmp.call("migrate", { uri });
      if (i % 3 === 2) await src!.qmp.call("migrate_cancel");
      const r = await waitMigration(src!.qmp, ["failed", "canceled", "completed"], 5000);
      assert.notEqual(r.status, "completed");
    };
    await once(0);
    await sleep(200);
    const fds0 = fdCount(pid);
    const rss0 = rssKib(pid);
    for (let i = 1; i <= 10; i++) await once(i);
    await sleep(300);
    const fds1 = fdCount(pid);
    const rss1 = rssKib(pid);
    assert.ok(fds1 <= fds0, `open fds ${fds0} → ${fds1}`);
    assert.ok(rss1 - rss0 < 32 * 1024, `RSS ${rss0} → ${rss1} KiB`);
    assert.equal(await runState(src.qmp), "running");
    await src.ferry.waitLine(/PROBE VERIFY ok/, 5000, src.ferry.lines.length);
    await assertGuestRuns(src.ferry, "source");
  } finally {
    await stopVm(src);
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a source that had migrations canceled mid-stream 5 times has as many open fds as before", async () => {
  const dir = tempDir();
  let src: Vm | undefined;
  try {
    src = await startVm({ dir, name: "src", append: PATTERN });
    await src.ferry.waitLine(/PROBE VERIFY ok/);
    await src.qmp.call("migrate-set-parameters", VERY_SLOW);
    const pid = src.ferry.child.pid;
    const once = async (i: number) => {
      const uri = `unix:${dir}/d${i}.sock`;
      const dst = await startVm({ dir, name: `d${i}`, append: PATTERN, incoming: uri });
      try {
        await src!.qmp.call("migrate", { uri });
        await waitMigration(src!.qmp, ["active"], 5000, 5);
        await sleep(100);
        await src!.qmp.call("migrate_cancel");
        assert.equal((await waitMigration(src!.qmp, FINAL, 5000)).status, "canceled");
        assert.notEqual((await dst.ferry.wait(10000)).code, 0);
      } finally {
        await stopVm(dst);
      }
    };
    await once(0);
    await sleep(200);
    const fds0 = fdCount(pid);
    for (let i = 1; i <= 5; i++) await once(i);
    await sleep(300);
    assert.ok(fdCount(pid) <= fds0, `open fds ${fds0} → ${fdCount(pid)}`);
    assert.equal(await runState(src.qmp), "running");
    await assertGuestRuns(src.ferry, "source");
  } finally {
    await stopVm(src);
    Deno.removeSync(dir, { recursive: true });
  }
});
