/**
 * Black box: ping-pong — one guest migrated 10 times in a row (A→B→A…, each destination a new
 * ferry with -incoming, each old source quits), alternating tcp: and unix:.
 */
import assert from "node:assert/strict";
import {
  assertGuestRuns,
  assertNoFail,
  fdCount,
  FINAL,
  freePort,
  type QmpMessage,
  rssKib,
  runState,
  startVm,
  stopVm,
  tempDir,
  type Vm,
  waitMigration,
} from "./_fixture/migration.ts";

const HOPS = 10;
const APPEND = "mode=pattern mib=8 interval_ms=50";

function lastRound(vm: Vm): number {
  const l = vm.ferry.lines.findLast((x) => /PROBE VERIFY ok round=/.test(x));
  return Number(l?.match(/round=(\d+)/)?.[1] ?? -1);
}

Deno.test(`ping-pong: a guest migrated ${HOPS} times verifies its pattern after every hop, its round counter only grows, and no hop's process holds more fds or memory than the first`, async () => {
  const dir = tempDir();
  let cur: Vm | undefined;
  let next: Vm | undefined;
  const fds: number[] = [];
  const rss: number[] = [];
  const rounds: number[] = [];
  try {
    cur = await startVm({ dir, name: "hop0", append: APPEND, smp: 2 });
    await cur.ferry.waitLine(/PROBE VERIFY ok round=/);
    rounds.push(lastRound(cur));
    for (let hop = 1; hop <= HOPS; hop++) {
      const uri = hop % 2 === 0 ? `unix:${dir}/hop${hop}.sock` : `tcp:127.0.0.1:${freePort()}`;
      next = await startVm({ dir, name: `hop${hop}`, append: APPEND, smp: 2, incoming: uri });
      await cur.qmp.call("migrate", { uri });
      const r = await waitMigration(cur.qmp, FINAL, 20000);
      assert.equal(r.status, "completed", `hop ${hop}: ${JSON.stringify(r)}\n${next.ferry.transcript()}`);
      const before = lastRound(cur);
      const m = await next.ferry.waitLine(/PROBE VERIFY ok round=(\d+)/, 10000);
      const round = Number(m[1]);
      assert.ok(
        round >= before && round >= rounds.at(-1)!,
        `hop ${hop}: round ${round} after ${before} (${rounds})`,
      );
      rounds.push(round);
      await assertGuestRuns(next.ferry, `hop ${hop} cpu 1`, 1);
      assertNoFail(next.ferry, `hop ${hop}`);
      assert.ok(
        !next.ferry.lines.some((l) => /PROBE BOOT/.test(l)),
        `hop ${hop}: the guest was not rebooted`,
      );
      assert.equal(await runState(next.qmp), "running");
      fds.push(fdCount(next.ferry.child.pid));
      rss.push(rssKib(next.ferry.child.pid));

      // The old source is paused and quits cleanly.
      assert.equal(await runState(cur.qmp), "postmigrate");
      await cur.qmp.execute("quit");
      assert.equal((await cur.ferry.wait(10000)).code, 0, `hop ${hop}: the old source exits 0`);
      await stopVm(cur);
      cur = next;
      next = undefined;
    }
    const last = await cur.ferry.waitLine(/PROBE VERIFY ok round=(\d+)/, 5000, cur.ferry.lines.length);
    assert.ok(Number(last[1]) >= rounds.at(-1)!);
    assert.ok(Math.max(...fds) - fds[0]! <= 2, `open fds per hop: ${fds}`);
    assert.ok(Math.max(...rss) - rss[0]! < 64 * 1024, `RSS per hop (KiB): ${rss}`);
    const q = await cur.qmp.call("query-migrate") as QmpMessage;
    assert.equal(q.status, "completed");
  } finally {
    await stopVm(cur);
    await stopVm(next);
    Deno.removeSync(dir, { recursive: true });
  }
});
