/**
 * Black box: the thread `query-cpus-fast` names for each vCPU (`thread-id`, as in QEMU) is the host
 * thread that runs it, at `-smp 1` (where ferry's vCPU Worker runs the vCPU itself) and at `-smp 2`
 * (a run thread per vCPU): an operator who pins or watches that thread gets the vCPU. And one
 * vCPU's exits do not wait for another's.
 */
import assert from "node:assert/strict";
import { Ferry, probeArgs, tempDir } from "./_fixture/ferry.ts";
import type { QmpClient } from "./_fixture/qmp_client.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** utime + stime of thread `tid` of process `pid`, in clock ticks. */
function threadTicks(pid: number, tid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]);
}

for (const smp of [1, 2]) {
  Deno.test(`query-cpus-fast's thread-id is the thread that runs each vCPU (-smp ${smp})`, async () => {
    const dir = tempDir();
    const sock = `${dir}/qmp.sock`;
    // mode=idle keeps every vCPU computing in the guest between its progress lines.
    const f = new Ferry(probeArgs({ smp, qmp: sock, append: "mode=idle interval_ms=50" }), { qmpPath: sock });
    let q: QmpClient | undefined;
    try {
      q = await f.qmp();
      for (let c = 0; c < smp; c++) await f.waitLine(new RegExp(`PROBE PROGRESS cpu=${c}`));
      const cpus = await q.call("query-cpus-fast") as { "cpu-index": number; "thread-id": number }[];
      assert.equal(cpus.length, smp);
      const pid = f.child.pid;
      const tids = cpus.map((c) => c["thread-id"]);
      assert.equal(new Set(tids).size, smp, `one thread per vCPU: ${tids}`);
      const before = tids.map((t) => threadTicks(pid, t));
      await sleep(1000);
      const after = tids.map((t) => threadTicks(pid, t));
      // A computing vCPU keeps its thread busy; 1 s is 100 ticks, allow a loaded host a quarter.
      tids.forEach((t, i) =>
        assert.ok(
          after[i]! - before[i]! >= 25,
          `vCPU ${i} thread ${t}: ${after[i]! - before[i]!} ticks in 1 s`,
        )
      );

      assert.deepEqual(await q.execute("stop"), { return: {} });
      await q.waitEvent("STOP");
      const paused = tids.map((t) => threadTicks(pid, t));
      await sleep(500);
      const still = tids.map((t) => threadTicks(pid, t));
      tids.forEach((t, i) =>
        assert.ok(still[i]! - paused[i]! <= 2, `vCPU ${i} thread ${t} idles while paused`)
      );
      assert.deepEqual(await q.execute("cont"), { return: {} });
      await q.waitEvent("RESUME");
      const n = f.lines.length;
      await f.waitLine(/PROBE PROGRESS cpu=0/, 5000, n);
    } finally {
      await q?.close();
      await f.kill();
      Deno.removeSync(dir, { recursive: true });
    }
  });
}

Deno.test("-smp 2: vCPU 1's exits are served at their own pace while vCPU 0 computes", async () => {
  const dir = tempDir();
  // Each vCPU computes in the guest and prints a ~40-byte progress line (one port exit per byte)
  // every 50 ms; one thread serves every vCPU's exits. If vCPU 1's exits waited for vCPU 0's (as
  // when that thread also runs vCPU 0 and nothing gets it out of the guest: stop 20 tried that
  // design, docs/architecture.md §3), vCPU 1 would print about a byte per vCPU 0 line instead of
  // 20 lines a second.
  const f = new Ferry(probeArgs({ smp: 2, append: "mode=idle interval_ms=50" }));
  try {
    await f.waitLine(/PROBE PROGRESS cpu=1/);
    const from = f.lines.length;
    await sleep(2000);
    const count = (c: number) =>
      f.lines.slice(from).filter((l) => l.startsWith(`PROBE PROGRESS cpu=${c} `)).length;
    // 40 lines each in 2 s when served at once; a loaded host gets a quarter.
    assert.ok(count(1) >= 10, `vCPU 1 printed ${count(1)} progress lines in 2 s (vCPU 0: ${count(0)})`);
    assert.ok(count(0) >= 10, `vCPU 0 printed ${count(0)} progress lines in 2 s (vCPU 1: ${count(1)})`);
  } finally {
    await f.kill();
    Deno.removeSync(dir, { recursive: true });
  }
});
