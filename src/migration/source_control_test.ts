/**
 * The source's control surface during a migration: live parameters, `ram.remaining` in every
 * pass, auto-converge (with {@linkcode FakeVm}'s throttle), and the order of the switch-over
 * callbacks and status changes.
 */
import assert from "node:assert/strict";
import { FakeVm, firstRamDifference, listenDestination } from "./_fake_vm.ts";
import { type MigrationStatus, MigrationStatusTracker } from "./status.ts";
import { startMigration } from "./source.ts";
import {
  DEFAULT_MIGRATION_CAPABILITIES,
  DEFAULT_MIGRATION_PARAMETERS,
  updateMigrationParameters,
} from "./parameters.ts";
import type { MigrationInfo } from "./stats.ts";

const MiB = 1024 * 1024;

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function vms(sizeBytes: number) {
  const regions = [{ gpa: 0, sizeBytes }];
  const source = new FakeVm({ regions });
  source.fillPattern(4);
  const dest = new FakeVm({ regions, paused: true });
  return { source, dest };
}

Deno.test("startMigration counts ram.remaining down during the first pass and applies a raised max-bandwidth at once", async () => {
  const { source, dest } = vms(8 * MiB);
  const d = await listenDestination(dest, "unix");
  const limit = 2 * MiB;
  const h = startMigration(
    source,
    d.uri,
    updateMigrationParameters(DEFAULT_MIGRATION_PARAMETERS, { "max-bandwidth": limit }),
    new MigrationStatusTracker(),
  );
  // Limited: 6 MiB of page bytes take ~3 s. Watch the first pass for about a second.
  const samples: { t: number; q: MigrationInfo }[] = [];
  while (samples.length < 25) {
    const q = h.queryMigrate();
    if (q.status === "active" && q.ram!["dirty-sync-count"] === 0) samples.push({ t: performance.now(), q });
    assert.notEqual(q.status, "completed", "too fast: the limit did not hold");
    await sleep(40);
  }
  const remaining = samples.map((s) => s.q.ram!.remaining);
  for (let i = 1; i < remaining.length; i++) {
    assert.ok(remaining[i]! <= remaining[i - 1]!, `remaining never grows in a pass: ${remaining}`);
  }
  assert.ok(remaining.at(-1)! < 8 * MiB && remaining.at(-1)! > 0, `remaining counts down: ${remaining}`);
  const first = samples[0]!, last = samples.at(-1)!;
  const limitedRate = (last.q.ram!.transferred - first.q.ram!.transferred) / ((last.t - first.t) / 1000);
  assert.ok(limitedRate < 2 * limit, `limited rate ${limitedRate} B/s, limit ${limit}`);

  const changedAt = performance.now();
  const sentBefore = h.queryMigrate().ram!.transferred;
  h.setParameters(DEFAULT_MIGRATION_PARAMETERS); // max-bandwidth 0: unlimited
  assert.equal(await h.done, "completed", h.queryMigrate()["error-desc"]);
  const q = h.queryMigrate();
  const freeRate = (q.ram!.transferred - sentBefore) / ((performance.now() - changedAt) / 1000);
  assert.ok(freeRate > 4 * limit, `after max-bandwidth 0: ${freeRate} B/s, before ${limitedRate} B/s`);
  assert.equal(q.ram!.remaining, 0);
  assert.equal(await d.result, null);
  assert.equal(firstRamDifference(source, dest), -1);
});

Deno.test("startMigration sets ram.remaining to the dirty set at each sync and counts it down as pages go", async () => {
  const { source, dest } = vms(4 * MiB);
  const d = await listenDestination(dest, "unix");
  const status = new MigrationStatusTracker();
  // Never converges (1 ms downtime): watch the dirty passes.
  source.dirtyAtRate(4000);
  const seen: { sync: number; remaining: number }[] = [];
  try {
    const h = startMigration(
      source,
      d.uri,
      updateMigrationParameters(DEFAULT_MIGRATION_PARAMETERS, {
        "max-bandwidth": 4 * MiB,
        "downtime-limit": 1,
        "max-iterations": 4,
      }),
      status,
      { capabilities: { ...DEFAULT_MIGRATION_CAPABILITIES, "auto-converge": false } },
    );
    while (!["completed", "failed", "canceled"].includes(h.queryMigrate().status)) {
      const r = h.queryMigrate().ram;
      if (r && r["dirty-sync-count"] > 0) seen.push({ sync: r["dirty-sync-count"], remaining: r.remaining });
      await sleep(5);
    }
    assert.equal(await h.done, "failed");
  } finally {
    source.stopDirtying();
  }
  for (let i = 1; i < seen.length; i++) {
    if (seen[i]!.sync === seen[i - 1]!.sync) {
      assert.ok(seen[i]!.remaining <= seen[i - 1]!.remaining, `within a pass remaining only shrinks`);
    }
  }
  assert.ok(seen.some((s) => s.remaining > 0), "dirty pages were remaining");
  assert.ok(new Set(seen.map((s) => s.remaining)).size > 2, `remaining moved: ${JSON.stringify(seen)}`);
});

/** A guest that dirties 16000 pages/s over 2 MiB (512 pages): faster than the 16 MiB/s link moves them. */
const HOT = updateMigrationParameters(DEFAULT_MIGRATION_PARAMETERS, {
  "max-bandwidth": 16 * MiB,
  "downtime-limit": 10,
  "max-iterations": 25,
});

for (const autoConverge of [true, false]) {
  Deno.test(`startMigration of a guest dirtying faster than the link ${autoConverge ? "converges with auto-converge, throttling step by step, and unthrottles at the end" : "does not converge without auto-converge"}`, async () => {
    const { source, dest } = vms(2 * MiB);
    const d = await listenDestination(dest, "unix");
    source.dirtyAtRate(16_000);
    let maxSeen = 0;
    try {
      const h = startMigration(source, d.uri, HOT, new MigrationStatusTracker(), {
        capabilities: { ...DEFAULT_MIGRATION_CAPABILITIES, "auto-converge": autoConverge },
      });
      while (!["completed", "failed"].includes(h.queryMigrate().status)) {
        maxSeen = Math.max(maxSeen, h.queryMigrate()["cpu-throttle-percentage"] ?? 0);
        await sleep(5);
      }
      const final = await h.done;
      const q = h.queryMigrate();
      if (!autoConverge) {
        assert.equal(final, "failed");
        assert.match(q["error-desc"]!, /^Cannot converge: /);
        assert.equal(q["cpu-throttle-percentage"], undefined, "no throttle figure without auto-converge");
        assert.deepEqual(source.throttleHistory, []);
        return;
      }
      assert.equal(final, "completed", q["error-desc"]);
      assert.equal(q["cpu-throttle-percentage"], 0, "unthrottled once completed");
      assert.ok(maxSeen >= 20, `query-migrate showed the throttle while active: ${maxSeen}`);
      const steps = source.throttleHistory;
      assert.equal(steps[0], 20, `starts at cpu-throttle-initial: ${steps}`);
      assert.equal(steps.at(-1), 0, `ends unthrottled: ${steps}`);
      for (let i = 1; i < steps.length - 1; i++) {
        assert.equal(steps[i], Math.min(steps[i - 1]! + 10, 99), `steps of 10 up to 99: ${steps}`);
      }
      assert.equal(source.cpuThrottle, 0);
      assert.equal(await d.result, null);
    } finally {
      source.stopDirtying();
    }
  });
}

Deno.test("MigrationHandle.cancel during throttling unthrottles and leaves the source running", async () => {
  const { source, dest } = vms(2 * MiB);
  const d = await listenDestination(dest, "unix");
  source.dirtyAtRate(16_000);
  try {
    const p = updateMigrationParameters(HOT, { "downtime-limit": 0, "max-iterations": 1000 });
    const h = startMigration(source, d.uri, p, new MigrationStatusTracker());
    while ((h.queryMigrate()["cpu-throttle-percentage"] ?? 0) < 30) await sleep(5);
    h.cancel();
    assert.equal(await h.done, "canceled");
    assert.equal(source.cpuThrottle, 0);
    assert.equal(h.queryMigrate()["cpu-throttle-percentage"], 0);
    assert.equal(source.paused, false);
    assert.equal(source.pauseCount, 0);
    assert.ok(await d.result instanceof Error);
  } finally {
    source.stopDirtying();
  }
});

Deno.test("startMigration applies a lowered max-cpu-throttle to the running throttle at once", async () => {
  const { source, dest } = vms(2 * MiB);
  const d = await listenDestination(dest, "unix");
  source.dirtyAtRate(16_000);
  try {
    const p = updateMigrationParameters(HOT, { "downtime-limit": 0, "max-iterations": 1000 });
    const h = startMigration(source, d.uri, p, new MigrationStatusTracker());
    while ((h.queryMigrate()["cpu-throttle-percentage"] ?? 0) < 40) await sleep(5);
    h.setParameters(updateMigrationParameters(p, { "max-cpu-throttle": 25 }));
    assert.equal(h.queryMigrate()["cpu-throttle-percentage"], 25);
    await sleep(0);
    assert.equal(source.cpuThrottle, 25);
    h.setParameters(updateMigrationParameters(p, { "downtime-limit": 60_000 }));
    assert.equal(await h.done, "completed", "a raised downtime-limit lets it switch over");
    assert.equal(source.cpuThrottle, 0);
    assert.equal(await d.result, null);
  } finally {
    source.stopDirtying();
  }
});

Deno.test("startMigration calls onPaused before 'completed', and a rollback reports 'failed' before resuming the source", async () => {
  for (const fail of [false, true]) {
    const regions = [{ gpa: 0, sizeBytes: MiB }];
    const source = new FakeVm({ regions });
    const dest = new FakeVm({ regions, paused: true, ...(fail ? { restoreError: "bad state" } : {}) });
    const d = await listenDestination(dest, "unix");
    const status = new MigrationStatusTracker();
    const order: string[] = [];
    status.onChange((s: MigrationStatus) => order.push(`${s} (resumed ${source.resumeCount})`));
    const h = startMigration(source, d.uri, DEFAULT_MIGRATION_PARAMETERS, status, {
      onPaused: () => order.push(`paused (saved ${source.switchoverCount})`),
    });
    const final = await h.done;
    await d.result;
    if (!fail) {
      assert.equal(final, "completed");
      assert.deepEqual(order, [
        "setup (resumed 0)",
        "active (resumed 0)",
        "paused (saved 0)",
        "completed (resumed 0)",
      ]);
    } else {
      assert.equal(final, "failed");
      assert.deepEqual(order, [
        "setup (resumed 0)",
        "active (resumed 0)",
        "paused (saved 0)",
        "failed (resumed 0)",
      ]);
      assert.equal(source.resumeCount, 1, "resumed right after 'failed'");
      assert.equal(source.paused, false);
    }
  }
});
