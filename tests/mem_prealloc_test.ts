/**
 * Black box: `-mem-prealloc` (QEMU's and StratoVirt's option) backs all guest RAM at start, so a
 * migration destination pays the host's backing cost before its source connects; without it a
 * fresh VM stays sparse.
 */
import assert from "node:assert/strict";
import { Ferry, probeArgs, tempDir, waitIncoming } from "./_fixture/ferry.ts";
import { rssKib } from "./_fixture/migration.ts";
import type { QmpMessage } from "./_fixture/qmp_client.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

Deno.test("-mem-prealloc: a destination backs all of its RAM while it waits, and a migration into it verifies", async () => {
  const dir = tempDir();
  const uri = `unix:${dir}/mig.sock`;
  const base = { mem: "256M", smp: 1, append: "mode=pattern mib=32 interval_ms=50" };
  const src = new Ferry(probeArgs({ ...base, qmp: `${dir}/src.sock` }), { qmpPath: `${dir}/src.sock` });
  const sparse = new Ferry(
    probeArgs({ ...base, qmp: `${dir}/sparse.sock`, extra: ["-incoming", `unix:${dir}/unused.sock`] }),
    { qmpPath: `${dir}/sparse.sock` },
  );
  const dst = new Ferry(
    probeArgs({ ...base, qmp: `${dir}/dst.sock`, extra: ["-mem-prealloc", "-incoming", uri] }),
    { qmpPath: `${dir}/dst.sock` },
  );
  try {
    const sq = await src.qmp();
    const dq = await dst.qmp();
    const xq = await sparse.qmp();
    await waitIncoming(dq);
    await waitIncoming(xq);
    const mib = (pid: number) => rssKib(pid) / 1024;
    assert.ok(
      mib(dst.child.pid) >= 256,
      `destination RSS ${mib(dst.child.pid)} MiB covers its 256 MiB of RAM`,
    );
    assert.ok(mib(sparse.child.pid) < 200, `without -mem-prealloc RSS stays ${mib(sparse.child.pid)} MiB`);
    await xq.close();

    await src.waitLine(/PROBE VERIFY ok round=/);
    assert.deepEqual(await sq.execute("migrate", { uri }), { return: {} });
    for (;;) {
      const r = await sq.call("query-migrate") as QmpMessage;
      if (r.status === "completed") break;
      assert.ok(r.status !== "failed", JSON.stringify(r));
      await sleep(50);
    }
    const before = dst.lines.length;
    await dst.waitLine(/PROBE VERIFY ok round=/, 20000, before);
    assert.ok(!dst.lines.some((l) => /FAIL|PROBE BOOT/.test(l)), dst.transcript());
    await sq.close();
    await dq.close();
  } finally {
    await src.kill();
    await dst.kill();
    await sparse.kill();
    Deno.removeSync(dir, { recursive: true });
  }
});
