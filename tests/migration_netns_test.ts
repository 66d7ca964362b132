/**
 * Black box: migration between two "hosts" — two network namespaces joined by a veth pair with
 * TEST-NET-1 addresses (192.0.2.0/24) that exist only inside them — and a connection cut there.
 * Skipped (with the reason) when `ip netns` is unavailable.
 */
import assert from "node:assert/strict";
import {
  assertGuestRuns,
  assertNoStackTrace,
  createNetnsPair,
  FINAL,
  type NetnsPair,
  type PairOptions,
  runState,
  sh,
  sleep,
  waitMigration,
  withMigrationPair,
} from "./_fixture/migration.ts";

const PATTERN = "mode=pattern mib=8 interval_ms=50";

const probe = await createNetnsPair();
const skip = typeof probe === "string" ? probe : undefined;
if (typeof probe !== "string") await probe.remove();

async function withNetns(fn: (ns: NetnsPair) => Promise<void>): Promise<void> {
  const ns = await createNetnsPair();
  if (typeof ns === "string") throw new Error(ns);
  try {
    await fn(ns);
  } finally {
    await ns.remove();
  }
}

/** A tcp migration from namespace `a` to a destination listening on `b`'s address. */
function across(ns: NetnsPair, smp = 1): PairOptions {
  return {
    append: PATTERN,
    smp,
    transport: "tcp",
    host: ns.addrB,
    src: { netns: ns.a },
    dst: { netns: ns.b },
  };
}

Deno.test({
  name:
    "cross-host: tcp migration from one network namespace to another over a veth pair completes and the guest runs and verifies there",
  ignore: skip !== undefined,
  fn: () =>
    withNetns(async (ns) => {
      await withMigrationPair(across(ns, 2), async ({ src, dst, uri }) => {
        await src.ferry.waitLine(/PROBE VERIFY ok round=/);
        // The destination is reachable only through the veth: not from the root namespace.
        const direct = await Deno.connect({ hostname: ns.addrB, port: Number(uri.split(":").at(-1)) }).then(
          (c) => (c.close(), true),
          () => false,
        );
        assert.equal(direct, false, "the destination address is local to the namespaces");
        await src.qmp.call("migrate", { uri });
        const r = await waitMigration(src.qmp, FINAL, 30000);
        assert.equal(r.status, "completed", JSON.stringify(r) + src.ferry.transcript());
        assert.equal(typeof r.downtime, "number");
        const srcRound = Number(
          src.ferry.lines.findLast((l) => /round=/.test(l))?.match(/round=(\d+)/)?.[1] ?? 0,
        );
        const m = await dst.ferry.waitLine(/PROBE VERIFY ok round=(\d+)/, 10000);
        assert.ok(Number(m[1]) >= srcRound, `destination round ${m[1]} continues ${srcRound}`);
        await assertGuestRuns(dst.ferry, "destination, cpu 0", 0);
        await assertGuestRuns(dst.ferry, "destination, cpu 1", 1);
        assert.equal(await runState(dst.qmp), "running");
        assert.equal(await runState(src.qmp), "postmigrate");
        await src.qmp.execute("quit");
        assert.equal((await src.ferry.wait(10000)).code, 0);
      });
    }),
});

for (const cut of ["link down", "veth deleted"] as const) {
  Deno.test({
    name:
      `a migration whose connection is cut (${cut}) fails with a clear error-desc and the source keeps running`,
    ignore: skip !== undefined,
    fn: () =>
      withNetns(async (ns) => {
        await withMigrationPair(across(ns), async ({ src, dst, uri }) => {
          await src.ferry.waitLine(/PROBE VERIFY ok round=/);
          await src.qmp.call("migrate-set-parameters", { "max-bandwidth": 2 << 20, "downtime-limit": 2000 });
          await src.qmp.call("migrate", { uri });
          await waitMigration(src.qmp, ["active"], 10000, 5);
          await sleep(300);
          const t0 = Date.now();
          const r0 = await sh(
            "ip",
            ...(cut === "link down"
              ? ["-n", ns.a, "link", "set", ns.linkA, "down"]
              : ["-n", ns.a, "link", "del", ns.linkA]),
          );
          assert.equal(r0.code, 0, r0.out);
          const r = await waitMigration(src.qmp, FINAL, 40000, 100);
          const ms = Date.now() - t0;
          assert.equal(r.status, "failed", JSON.stringify(r));
          assert.match(
            String(r["error-desc"]),
            /^Cannot send (full|dirty) RAM.*: the connection stalled: could not send anything to the destination for \d+ s$/,
            JSON.stringify(r),
          );
          assert.ok(ms < 20000, `failed after ${ms} ms`);
          assert.equal(await runState(src.qmp), "running");
          await src.ferry.waitLine(/PROBE VERIFY ok/, 5000, src.ferry.lines.length);
          await assertGuestRuns(src.ferry, "source after the cut");
          assertNoStackTrace(src.ferry);
          // The destination gets nothing more: it gives up as well, and never runs the guest.
          const st = await dst.ferry.wait(15000);
          assert.notEqual(st.code, 0, dst.ferry.transcript());
          assert.match(
            dst.ferry.stderrLines.at(-1) ?? "",
            /^ferry: incoming migration failed: .*stalled/,
            dst.ferry.transcript(),
          );
          assert.ok(!dst.ferry.lines.some((l) => /PROBE/.test(l)), "the destination never ran the guest");
          assertNoStackTrace(dst.ferry);
        });
      }),
  });
}
