/**
 * Black box: post-copy migration (QEMU's interface: capability `postcopy-ram` on both sides,
 * `migrate-start-postcopy`, status `postcopy-active`) between two network namespaces joined by a
 * veth pair whose both ends are limited to 200 Mbit/s with `tc … tbf`: a guest that dirties memory
 * faster than that link moves only with post-copy. Skipped (with the reason) when `ip netns` or
 * `tc` is unavailable.
 */
import assert from "node:assert/strict";
import {
  assertGuestRuns,
  assertNoFail,
  assertNoStackTrace,
  createNetnsPair,
  FINAL,
  freePort,
  type NetnsPair,
  ram,
  runState,
  sh,
  sleep,
  startVm,
  stopVm,
  tempDir,
  type Vm,
  waitMigration,
} from "./_fixture/migration.ts";
import { blkArgs, makeImage, verifiedRounds } from "./_fixture/virtio.ts";
import type { QmpClient, QmpMessage } from "./_fixture/qmp_client.ts";

/** The guest: 192 MiB rewritten as fast as the vCPU can (far above 200 Mbit/s). */
const DIRTY = "mode=dirty mib=192 rate=0 interval_ms=200";
/** A guest whose memory is checked: 64 MiB rewritten at 50 000 pages/s (~200 MB/s) and verified. */
const FILL = "mode=fill mib=64 rate=50000 interval_ms=200";
const LINK = "200mbit";

async function throttledPair(): Promise<NetnsPair | string> {
  const ns = await createNetnsPair();
  if (typeof ns === "string") return ns;
  for (const [n, dev] of [[ns.a, ns.linkA], [ns.b, ns.linkA.replace("fma", "fmb")]] as const) {
    const r = await sh(
      "tc",
      "-n",
      n,
      "qdisc",
      "add",
      "dev",
      dev,
      "root",
      "tbf",
      "rate",
      LINK,
      "burst",
      "256kb",
      "latency",
      "50ms",
    );
    if (r.code !== 0) {
      await ns.remove();
      return `'tc qdisc add … tbf rate ${LINK}' failed: ${r.out.trim()}`;
    }
  }
  return ns;
}

const probe = await throttledPair().catch((e: Error) => e.message);
const skip = typeof probe === "string" ? probe : undefined;
if (typeof probe !== "string") await probe.remove();

async function withLink(fn: (ns: NetnsPair, dir: string) => Promise<void>): Promise<void> {
  const ns = await throttledPair();
  if (typeof ns === "string") throw new Error(ns);
  const dir = tempDir();
  try {
    await fn(ns, dir);
  } finally {
    await ns.remove();
    Deno.removeSync(dir, { recursive: true });
  }
}

async function setCapabilities(q: QmpClient, caps: Record<string, boolean>): Promise<void> {
  await q.call("migrate-set-capabilities", {
    capabilities: Object.entries(caps).map(([capability, state]) => ({ capability, state })),
  });
}

const POSTCOPY = { "postcopy-ram": true, "postcopy-blocktime": true, "auto-converge": false };

/** What {@linkcode withPair} starts. */
interface PairOptions {
  append: string;
  caps: Record<string, boolean>;
  smp?: number;
  /** More ferry arguments for both sides, made in the pair's directory (e.g. a disk image there). */
  extra?: (dir: string) => string[];
}

/**
 * Runs `body` with a source in namespace a and a destination (`-incoming defer`, `caps` set on
 * both) in b, over the throttled link, once the guest has started (a DIRTY guest has written its
 * whole area). Both ferries are stopped afterwards, whatever happened.
 */
function withPair(
  o: PairOptions,
  body: (p: { src: Vm; dst: Vm; uri: string }) => Promise<void>,
): Promise<void> {
  return withLink(async (ns, dir) => {
    const uri = `tcp:${ns.addrB}:${freePort()}`;
    const { append, smp = 1 } = o;
    const extra = o.extra?.(dir) ?? [];
    let src: Vm | undefined, dst: Vm | undefined;
    try {
      src = await startVm({ dir, name: "src", append, smp, extra, netns: ns.a });
      dst = await startVm({ dir, name: "dst", append, smp, extra, netns: ns.b, incoming: "defer" });
      await setCapabilities(src.qmp, o.caps);
      await setCapabilities(dst.qmp, o.caps);
      await dst.qmp.call("migrate-incoming", { uri });
      await src.ferry.waitLine(/PROBE READY .*native=1/);
      if (append === DIRTY) {
        // The whole 192 MiB area holds data before the migration starts (count = pages written).
        const deadline = Date.now() + 30000;
        while (lastCount(src.ferry.lines) < 192 * 256) {
          assert.ok(Date.now() < deadline, `the guest did not write its area\n${src.ferry.transcript()}`);
          await sleep(50);
        }
      }
      await src.ferry.waitLine(/PROBE PROGRESS cpu=0 /);
      await body({ src, dst, uri });
    } finally {
      await stopVm(src);
      await stopVm(dst);
    }
  });
}

function events(q: QmpClient): string[] {
  return q.events.filter((e) => e.event === "MIGRATION").map((e) => (e.data as QmpMessage).status as string);
}

function verifiedRound(lines: string[]): number {
  const l = lines.findLast((x) => /PROBE VERIFY ok round=/.test(x));
  return Number(l?.match(/round=(\d+)/)?.[1] ?? -1);
}

function lastCount(lines: string[]): number {
  const l = lines.findLast((x) => /PROBE PROGRESS cpu=0 /.test(x));
  return Number(l?.match(/count=(\d+)/)?.[1] ?? -1);
}

Deno.test({
  name: `precopy alone cannot move a ${DIRTY} guest over a ${LINK} link: it fails and the source runs on`,
  ignore: skip !== undefined,
  fn: () =>
    withPair({ append: DIRTY, caps: { "auto-converge": false } }, async ({ src, uri }) => {
      const none = await src.qmp.execute("migrate-start-postcopy");
      assert.match(JSON.stringify(none.error), /no outgoing migration is in progress/);
      await src.qmp.call("migrate-set-parameters", { "max-precopy-time": 4000 });
      await src.qmp.call("migrate", { uri });
      await waitMigration(src.qmp, ["active"], 10000);
      const off = await src.qmp.execute("migrate-start-postcopy");
      assert.match(JSON.stringify(off.error), /enable capability 'postcopy-ram'/);
      const r = await waitMigration(src.qmp, FINAL, 60000);
      assert.equal(r.status, "failed", JSON.stringify(r));
      assert.match(String(r["error-desc"]), /still dirty after \d+ dirty passes/);
      assert.ok(ram(r)["remaining"] as number > 64 << 20, `far from converging: ${JSON.stringify(ram(r))}`);
      assert.equal(await runState(src.qmp), "running");
      await assertGuestRuns(src.ferry, "source after the failed precopy");
    }),
});

Deno.test({
  name:
    `post-copy moves a ${DIRTY} guest over a ${LINK} link: postcopy-active, then completed on both sides, and the guest runs on`,
  ignore: skip !== undefined,
  fn: () =>
    withPair({ append: DIRTY, caps: POSTCOPY }, async ({ src, dst, uri }) => {
      await src.qmp.call("migrate", { uri });
      await waitMigration(src.qmp, ["active"], 10000);
      // QEMU's usage: start post-copy during the precopy phase; it switches after this pass.
      assert.deepEqual(await src.qmp.execute("migrate-start-postcopy"), { return: {} });
      const r = await waitMigration(src.qmp, FINAL, 90000);
      assert.equal(r.status, "completed", JSON.stringify(r) + src.ferry.transcript());
      assert.deepEqual(events(src.qmp), ["setup", "active", "postcopy-active", "completed"]);
      const d = await waitMigration(dst.qmp, FINAL, 10000);
      assert.equal(d.status, "completed", JSON.stringify(d) + dst.ferry.transcript());
      assert.deepEqual(events(dst.qmp), ["setup", "active", "postcopy-active", "completed"]);
      // The destination ran the guest while pages were missing and asked for them.
      const requests = ram(d)["postcopy-requests"] as number;
      assert.ok(requests > 0, `destination page requests: ${JSON.stringify(d)}`);
      assert.equal(ram(r)["postcopy-requests"], requests, "the source served every request");
      assert.ok((d["postcopy-latency"] as number) > 0, JSON.stringify(d));
      assert.equal((d["postcopy-vcpu-blocktime"] as number[]).length, 1);
      assert.equal(typeof d["postcopy-blocktime"], "number");
      assert.equal(typeof r.downtime, "number");
      assert.ok((r.downtime as number) < 2000, `the pause lasted ${r.downtime} ms`);
      // The guest runs on: its page counter continues from where the source left it.
      const before = lastCount(src.ferry.lines);
      await assertGuestRuns(dst.ferry, "destination after post-copy");
      assert.ok(lastCount(dst.ferry.lines) > before, `count ${before} → ${lastCount(dst.ferry.lines)}`);
      assert.equal(await runState(dst.qmp), "running");
      assert.equal(await runState(src.qmp), "postmigrate");
      assertNoStackTrace(src.ferry);
      assertNoStackTrace(dst.ferry);
    }),
});

Deno.test({
  name:
    `post-copy of a ${FILL} guest with 2 vCPUs: every page the guest checks on the destination holds what the source wrote`,
  ignore: skip !== undefined,
  fn: () =>
    // Two vCPUs: faults from several threads, and the APs' register checks after the switch.
    withPair({ append: FILL, caps: POSTCOPY, smp: 2 }, async ({ src, dst, uri }) => {
      await src.ferry.waitLine(/PROBE FILLED/);
      await src.qmp.call("migrate", { uri });
      await waitMigration(src.qmp, ["active"], 10000);
      await src.qmp.call("migrate-start-postcopy");
      const r = await waitMigration(src.qmp, FINAL, 60000);
      assert.equal(r.status, "completed", JSON.stringify(r) + src.ferry.transcript());
      const d = await waitMigration(dst.qmp, FINAL, 10000);
      assert.equal(d.status, "completed", JSON.stringify(d));
      // Two more verify rounds after completion hold a full sweep over the 64 MiB.
      const from = dst.ferry.lines.length;
      const m = await dst.ferry.waitLine(/PROBE VERIFY ok round=(\d+)/, 20000, from);
      const deadline = Date.now() + 30000;
      while (verifiedRound(dst.ferry.lines.slice(from)) < Number(m[1]) + 2) {
        assert.ok(Date.now() < deadline, `no verify round after ${m[1]}\n${dst.ferry.transcript()}`);
        await sleep(50);
      }
      assertNoFail(dst.ferry, "destination after post-copy");
      await assertGuestRuns(dst.ferry, "destination, cpu 1", 1);
      assert.equal((d["postcopy-vcpu-blocktime"] as number[]).length, 2);
    }),
});

Deno.test({
  name:
    "post-copy: when the source dies during postcopy-active the destination says so, pauses the guest (postcopy-paused) and never runs it with missing memory",
  ignore: skip !== undefined,
  fn: () =>
    withPair({ append: DIRTY, caps: POSTCOPY }, async ({ src, dst, uri }) => {
      await src.qmp.call("migrate", { uri });
      await waitMigration(src.qmp, ["active"], 10000);
      await src.qmp.call("migrate-start-postcopy");
      await waitMigration(dst.qmp, ["postcopy-active"], 60000, 5);
      await sleep(300); // the guest runs here meanwhile, pages still streaming
      await src.ferry.kill("SIGKILL");
      const d = await waitMigration(dst.qmp, ["postcopy-paused", ...FINAL], 20000);
      assert.equal(d.status, "postcopy-paused", JSON.stringify(d));
      assert.match(String(d["error-desc"]), /Post-copy failed after the switch: .*source/);
      assert.match(String(d["error-desc"]), /pages \(\d+ MiB\) of its memory are only on the source/);
      assert.ok((ram(d)["remaining"] as number) > 0, JSON.stringify(d));
      assert.deepEqual(events(dst.qmp), ["setup", "active", "postcopy-active", "postcopy-paused"]);
      assert.ok(dst.ferry.stderrLines.some((l) => /ferry: Post-copy failed after the switch/.test(l)));
      // The guest is stopped: no progress, and the process stays up to answer QMP.
      assert.equal(await runState(dst.qmp), "paused");
      await sleep(300);
      const n = dst.ferry.lines.length;
      await sleep(1000);
      assert.deepEqual(dst.ferry.lines.slice(n), [], "the guest printed nothing while paused");
      const cont = await dst.qmp.execute("cont");
      assert.match(JSON.stringify(cont.error), /migration is in progress/);
      assert.equal((await dst.qmp.call("query-migrate") as QmpMessage).status, "postcopy-paused");
      assertNoStackTrace(dst.ferry);
      // The operator gives up: quit ends the process (the guest was never run on without its pages).
      const t0 = Date.now();
      await dst.qmp.execute("quit");
      const st = await dst.ferry.wait(15000);
      assert.ok(Date.now() - t0 < 14000, `quit took ${Date.now() - t0} ms`);
      assert.equal(st.signal, null, "ferry exited by itself");
      assert.ok(!dst.ferry.lines.slice(n).some((l) => /FAIL|EXCEPTION/.test(l)), dst.ferry.transcript());
    }),
});

Deno.test({
  name:
    "post-copy: when the destination dies during postcopy-active the source stays paused in postcopy-paused and refuses to run the guest again",
  ignore: skip !== undefined,
  fn: () =>
    withPair({ append: DIRTY, caps: POSTCOPY }, async ({ src, dst, uri }) => {
      await src.qmp.call("migrate", { uri });
      await waitMigration(src.qmp, ["active"], 10000);
      await src.qmp.call("migrate-start-postcopy");
      await waitMigration(src.qmp, ["postcopy-active"], 60000, 5);
      assert.deepEqual(
        await src.qmp.execute("migrate_cancel"),
        { return: {} },
        "ignored, as after complete",
      );
      await sleep(300);
      await dst.ferry.kill("SIGKILL");
      const r = await waitMigration(src.qmp, ["postcopy-paused", ...FINAL], 20000);
      assert.equal(r.status, "postcopy-paused", JSON.stringify(r));
      assert.match(String(r["error-desc"]), /Post-copy failed after the switch: .*must not be resumed/);
      assert.deepEqual(events(src.qmp), ["setup", "active", "postcopy-active", "postcopy-paused"]);
      assert.equal(await runState(src.qmp), "paused");
      const n = src.ferry.lines.length;
      await sleep(1000);
      assert.deepEqual(src.ferry.lines.slice(n), [], "the source guest stays paused");
      assert.match(JSON.stringify((await src.qmp.execute("cont")).error), /migration is in progress/);
      assertNoStackTrace(src.ferry);
    }),
});

Deno.test({
  name:
    "post-copy of a virtio-blk guest (its device thread reads and writes guest RAM while pages are still missing): the disk pattern keeps verifying on the destination",
  ignore: skip !== undefined,
  fn: () =>
    withPair({
      append: "mode=blk blk_mib=4 cpus=1 interval_ms=100 serial=rep",
      caps: POSTCOPY,
      extra: (dir) => {
        const img = `${dir}/disk.img`;
        makeImage(img, 8);
        return blkArgs(img);
      },
    }, async ({ src, dst, uri }) => {
      await src.ferry.waitLine(/PROBE BLK VERIFY ok round=/);
      await src.qmp.call("migrate", { uri });
      // At once (QEMU accepts it from setup on): this mostly-zero guest's precopy can converge
      // within the first pass, and the switch must come while pages are still missing.
      await src.qmp.call("migrate-start-postcopy");
      const r = await waitMigration(src.qmp, FINAL, 60000);
      assert.equal(r.status, "completed", JSON.stringify(r) + src.ferry.transcript());
      const d = await waitMigration(dst.qmp, FINAL, 10000);
      assert.equal(d.status, "completed", JSON.stringify(d) + dst.ferry.transcript());
      const last = Math.max(0, ...verifiedRounds(src.ferry));
      const deadline = Date.now() + 20000;
      while (Math.max(0, ...verifiedRounds(dst.ferry)) < last + 2) {
        assert.ok(
          Date.now() < deadline,
          `no disk round after ${last} on the destination\n${dst.ferry.transcript()}`,
        );
        await sleep(50);
      }
      assertNoFail(dst.ferry, "destination after post-copy with virtio-blk");
      assert.deepEqual(events(dst.qmp), ["setup", "active", "postcopy-active", "completed"]);
      assert.ok((ram(d)["postcopy-requests"] as number) > 0, JSON.stringify(d));
      assertNoStackTrace(dst.ferry);
    }),
});
