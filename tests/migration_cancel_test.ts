/**
 * Black box: `migrate_cancel` in every state, commands refused while a migration is active, and
 * the destination's QMP during an incoming migration. Real KVM, real sockets, the probe guest.
 */
import assert from "node:assert/strict";
import {
  assertGuestRuns,
  assertNoStackTrace,
  FINAL,
  type QmpMessage,
  ram,
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
/** About 1 s of active precopy for `PATTERN` (8 MiB at 8 MiB/s), then it converges. */
const SLOW = { "max-bandwidth": 8 << 20, "downtime-limit": 2000 };

function migrationEvents(vm: Vm): string[] {
  return vm.qmp.events.filter((e) => e.event === "MIGRATION").map((e) =>
    (e.data as QmpMessage).status as string
  );
}

/** Migrates `src` to a fresh destination and checks that the guest runs and verifies there. */
async function migrateToFreshDestination(src: Vm, dir: string, append: string): Promise<void> {
  const uri = `unix:${dir}/fresh.sock`;
  const dst = await startVm({ dir, name: "fresh", append, incoming: uri });
  try {
    await src.qmp.call("migrate-set-parameters", { "max-bandwidth": 0, "downtime-limit": 300 });
    await src.qmp.call("migrate", { uri });
    const r = await waitMigration(src.qmp, FINAL);
    assert.equal(r.status, "completed", JSON.stringify(r));
    await dst.ferry.waitLine(/PROBE VERIFY ok round=/, 10000);
    await assertGuestRuns(dst.ferry, "fresh destination");
    assert.equal(await runState(src.qmp), "postmigrate");
  } finally {
    await stopVm(dst);
  }
}

Deno.test("migrate_cancel before any migration is a no-op: it returns {}, emits no MIGRATION event and the VM keeps running", async () => {
  const dir = tempDir();
  let src: Vm | undefined;
  try {
    src = await startVm({ dir, name: "src", append: PATTERN });
    await src.ferry.waitLine(/PROBE READY/);
    const before = await src.qmp.call("query-migrate") as QmpMessage;
    assert.deepEqual(await src.qmp.execute("migrate_cancel"), { return: {} });
    assert.deepEqual(await src.qmp.execute("migrate_cancel"), { return: {} });
    assert.deepEqual(await src.qmp.call("query-migrate"), before, "query-migrate is unchanged");
    assert.ok(!["active", "canceled", "failed"].includes(before.status as string), JSON.stringify(before));
    await sleep(100);
    assert.deepEqual(migrationEvents(src), []);
    assert.equal(await runState(src.qmp), "running");
    await assertGuestRuns(src.ferry, "source");
  } finally {
    await stopVm(src);
    Deno.removeSync(dir, { recursive: true });
  }
});

for (const state of ["setup", "active"] as const) {
  Deno.test(`migrate_cancel twice during ${state} leaves the source running, the destination exits with an error, and a migration to a fresh destination then succeeds`, async () => {
    const transport = state === "setup" ? "unix" : "tcp";
    await withMigrationPair({ append: PATTERN, transport }, async ({ dir, src, dst, uri }) => {
      await src.ferry.waitLine(/PROBE VERIFY ok/);
      assert.equal(await runState(dst.qmp), "inmigrate");
      if (state === "setup") {
        // A stopped destination: the kernel accepts the connection, nobody answers the config.
        dst.ferry.child.kill("SIGSTOP");
      } else {
        await src.qmp.call("migrate-set-parameters", SLOW);
      }
      await src.qmp.call("migrate", { uri });
      const seen = await waitMigration(src.qmp, [state, ...FINAL], 10000, 5);
      assert.equal(seen.status, state, JSON.stringify(seen));
      if (state === "setup") await sleep(300); // still setup: it waits for the answer
      assert.equal((await src.qmp.call("query-migrate") as QmpMessage).status, state);

      assert.deepEqual(await src.qmp.execute("migrate_cancel"), { return: {} });
      assert.deepEqual(await src.qmp.execute("migrate_cancel"), { return: {} });
      const r = await waitMigration(src.qmp, FINAL, 5000);
      assert.equal(r.status, "canceled", JSON.stringify(r));
      assert.equal(r["error-desc"], undefined);
      assert.deepEqual(await src.qmp.execute("migrate_cancel"), { return: {} });
      assert.equal((await src.qmp.call("query-migrate") as QmpMessage).status, "canceled");
      const events = migrationEvents(src);
      assert.deepEqual(events, state === "setup" ? ["setup", "canceled"] : ["setup", "active", "canceled"]);
      assert.equal(await runState(src.qmp), "running");
      await assertGuestRuns(src.ferry, "source after cancel");

      if (state === "setup") dst.ferry.child.kill("SIGCONT");
      const st = await dst.ferry.wait(10000);
      assert.notEqual(st.code, 0, `destination exit code\n${dst.ferry.transcript()}`);
      const why = state === "setup"
        ? /canceled by the source: migrate_cancel/
        : /canceled by the source|source closed the connection/;
      assert.match(
        dst.ferry.stderrLines.at(-1) ?? "",
        new RegExp(`^ferry: incoming migration failed: .*${why.source}`),
        dst.ferry.transcript(),
      );
      assert.ok(!dst.ferry.lines.some((l) => /PROBE/.test(l)), "the destination never ran the guest");
      assertNoStackTrace(dst.ferry);

      await migrateToFreshDestination(src, dir, PATTERN);
    });
  });
}

Deno.test("migrate_cancel after a completed migration is a no-op: the source stays postmigrate and the destination keeps running", async () => {
  await withMigrationPair({ append: PATTERN }, async ({ dir, src, dst, uri }) => {
    await src.ferry.waitLine(/PROBE VERIFY ok/);
    await src.qmp.call("migrate", { uri });
    const done = await waitMigration(src.qmp, FINAL);
    assert.equal(done.status, "completed", JSON.stringify(done));
    assert.deepEqual(await src.qmp.execute("migrate_cancel"), { return: {} });
    assert.deepEqual(await src.qmp.execute("migrate_cancel"), { return: {} });
    const after = await src.qmp.call("query-migrate") as QmpMessage;
    assert.equal(after.status, "completed");
    assert.equal(after.downtime, done.downtime);
    assert.equal(await runState(src.qmp), "postmigrate");
    assert.deepEqual(migrationEvents(src), ["setup", "active", "completed"]);
    const frozen = src.ferry.lines.length;
    await assertGuestRuns(dst.ferry, "destination");
    await dst.ferry.waitLine(/PROBE VERIFY ok/, 5000, dst.ferry.lines.length);
    assert.equal(src.ferry.lines.length, frozen, "the source guest stays paused");
    assert.equal(await runState(dst.qmp), "running");
    // A second migrate from a migrated-away source is refused.
    const again = await src.qmp.execute("migrate", { uri: `unix:${dir}/other.sock` });
    assert.ok("error" in again, JSON.stringify(again));
  });
});

Deno.test("while a migration is active a second migrate and stop, cont, system_reset, system_powerdown are refused at once, and the migration still completes", async () => {
  await withMigrationPair({ append: PATTERN }, async ({ dir, src, dst, uri }) => {
    await src.ferry.waitLine(/PROBE VERIFY ok/);
    await src.qmp.call("migrate-set-parameters", SLOW);
    await src.qmp.call("migrate", { uri });
    await waitMigration(src.qmp, ["active", ...FINAL], 5000, 5);
    for (
      const [cmd, args] of [
        ["migrate", { uri: `unix:${dir}/second.sock` }],
        ["stop", undefined],
        ["cont", undefined],
        ["system_reset", undefined],
        ["system_powerdown", undefined],
      ] as const
    ) {
      const t0 = performance.now();
      const r = await src.qmp.execute(cmd, args);
      const ms = performance.now() - t0;
      const e = r.error as QmpMessage | undefined;
      assert.ok(e, `${cmd} is refused: ${JSON.stringify(r)}`);
      assert.equal(e.class, "GenericError");
      assert.match(
        String(e.desc),
        /^Cannot .*migration is (in progress|already in progress)/,
        `${cmd}: ${e.desc}`,
      );
      assert.ok(ms < 500, `${cmd} answered in ${ms} ms`);
      assert.equal((await src.qmp.call("query-migrate") as QmpMessage).status, "active", `after ${cmd}`);
    }
    const r = await waitMigration(src.qmp, FINAL);
    assert.equal(r.status, "completed", JSON.stringify(r) + src.ferry.transcript());
    await dst.ferry.waitLine(/PROBE VERIFY ok/, 10000);
    await assertGuestRuns(dst.ferry, "destination");
    assert.ok(
      !dst.ferry.lines.some((l) => /PROBE (BOOT|EXIT)/.test(l)),
      "no reset or power-off reached the guest",
    );
    assert.equal(await runState(src.qmp), "postmigrate");
    assert.ok(
      !src.qmp.events.some((e) => e.event === "POWERDOWN" || e.event === "RESET"),
      "no lifecycle event",
    );
  });
});

Deno.test("migrate with a malformed uri, or with blk or resume, is refused at once and changes nothing", async () => {
  const dir = tempDir();
  let src: Vm | undefined;
  try {
    src = await startVm({ dir, name: "src", append: PATTERN });
    await src.ferry.waitLine(/PROBE READY/);
    const before = await src.qmp.call("query-migrate");
    for (
      const [args, re] of [
        [
          { uri: "rdma:1.2.3.4:5" },
          /'rdma:1.2.3.4:5': rdma: is not supported; want tcp:HOST:PORT, unix:PATH or file:PATH/,
        ],
        [{ uri: "tcp:127.0.0.1" }, /want tcp:HOST:PORT/],
        [{ uri: "tcp:127.0.0.1:99999" }, /port 99999/],
        [{ uri: "unix:" }, /empty path/],
        [{ uri: `unix:${dir}/x.sock`, blk: true }, /blk/],
        [{ uri: `unix:${dir}/x.sock`, resume: true }, /resume/],
      ] as const
    ) {
      const r = await src.qmp.execute("migrate", args);
      const e = r.error as QmpMessage | undefined;
      assert.ok(e, `refused: ${JSON.stringify(args)} → ${JSON.stringify(r)}`);
      assert.match(String(e.desc), re);
    }
    assert.deepEqual(await src.qmp.call("query-migrate"), before);
    assert.deepEqual(migrationEvents(src), []);
    assert.equal(await runState(src.qmp), "running");
    await assertGuestRuns(src.ferry, "source");
  } finally {
    await stopVm(src);
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("the destination answers QMP during an incoming migration: query-status inmigrate, query-migrate setup then active, then running", async () => {
  await withMigrationPair({ append: PATTERN, transport: "tcp" }, async ({ src, dst, uri }) => {
    await src.ferry.waitLine(/PROBE VERIFY ok/);
    assert.equal(await runState(dst.qmp), "inmigrate");
    assert.equal((await dst.qmp.call("query-migrate") as QmpMessage).status, "setup");
    const refused = await dst.qmp.execute("cont");
    assert.ok("error" in refused, "cont is refused while waiting for the incoming state");
    await src.qmp.call("migrate-set-parameters", SLOW);
    await src.qmp.call("migrate", { uri });
    const active = await waitMigration(dst.qmp, ["active", ...FINAL], 5000, 5);
    assert.equal(active.status, "active", JSON.stringify(active));
    assert.equal(await runState(dst.qmp), "inmigrate");
    await sleep(200);
    const mid = await dst.qmp.call("query-migrate") as QmpMessage;
    assert.equal(mid.status, "active");
    assert.ok((ram(mid).transferred as number) > 0, JSON.stringify(mid));
    assert.equal(typeof mid["total-time"], "number");
    const r = await waitMigration(src.qmp, FINAL);
    assert.equal(r.status, "completed", JSON.stringify(r));
    assert.equal((await waitMigration(dst.qmp, FINAL, 5000)).status, "completed");
    assert.equal(await runState(dst.qmp), "running");
    assert.deepEqual(
      dst.qmp.events.filter((e) => e.event === "MIGRATION").map((e) => (e.data as QmpMessage).status),
      ["active", "completed"],
    );
    await assertGuestRuns(dst.ferry, "destination");
  });
});
