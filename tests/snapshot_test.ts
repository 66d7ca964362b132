/**
 * Black box: snapshots. QMP `migrate file:PATH` saves a running guest in the live wire format;
 * `-incoming file:PATH` (or `-incoming defer` + `migrate-incoming`) restores it in a fresh
 * process, with the configuration check of live migration. A truncated or corrupted file is
 * refused with one line and no guest runs; a canceled snapshot leaves no file. Real KVM, real
 * ferry processes, the probe guest.
 */
import assert from "node:assert/strict";
import {
  assertGuestRuns,
  assertNoFail,
  assertNoStackTrace,
  Ferry,
  FINAL,
  probeArgs,
  type QmpMessage,
  ram,
  runState,
  sleep,
  startVm,
  stopVm,
  tempDir,
  type Vm,
  waitMigration,
} from "./_fixture/migration.ts";
import { exists } from "./_fixture/ferry.ts";
import { blkArgs, makeImage, verifiedRounds } from "./_fixture/virtio.ts";

const PATTERN = "mode=pattern mib=16 interval_ms=50";

function lifecycle(vm: Vm): string[] {
  return vm.qmp.events
    .filter((e) => ["STOP", "RESUME", "MIGRATION"].includes(e.event as string))
    .map((e) => e.event === "MIGRATION" ? `MIGRATION:${(e.data as QmpMessage).status}` : e.event as string);
}

/** Saves `src` to `file`; asserts QEMU's events and run state after a migration to a file. */
async function save(
  src: Vm,
  file: string,
  events = ["MIGRATION:setup", "MIGRATION:active", "STOP", "MIGRATION:completed"],
): Promise<QmpMessage> {
  assert.deepEqual(await src.qmp.execute("migrate", { uri: `file:${file}` }), { return: {} });
  const r = await waitMigration(src.qmp, FINAL);
  assert.equal(r.status, "completed", JSON.stringify(r) + "\n" + src.ferry.transcript());
  assert.equal(await runState(src.qmp), "postmigrate");
  assert.deepEqual(lifecycle(src), events);
  assert.ok(exists(file) && !exists(`${file}.partial`), "the file is in place, no partial file is left");
  assert.ok((ram(r).transferred as number) > 0, JSON.stringify(r));
  return r;
}

/** The last `PROBE VERIFY ok round=N` of a console. */
function lastRound(f: Ferry): number {
  const m = [...f.lines].reverse().find((l) => /PROBE VERIFY ok round=/.test(l))?.match(/round=(\d+)/);
  return Number(m?.[1] ?? -1);
}

/** Restores `file` in a fresh process that must refuse it; returns its stderr. */
async function refused(args: string[]): Promise<{ code: number; stderr: string[]; console: string[] }> {
  const f = new Ferry(args);
  const st = await f.wait(20000);
  return { code: st.code, stderr: f.stderrLines.filter((l) => l.trim() !== ""), console: f.lines };
}

Deno.test("a running pattern guest saved with migrate file: restores in a fresh process (-incoming file:) and its pattern verifies; the source may continue (cont), as QEMU", async () => {
  const dir = tempDir();
  const file = `${dir}/vm.snap`;
  let src: Vm | undefined, dst: Vm | undefined;
  try {
    src = await startVm({ dir, name: "src", append: PATTERN });
    await src.ferry.waitLine(/PROBE VERIFY ok round=/, 20000);
    await save(src, file);
    const saved = lastRound(src.ferry);
    const frozen = src.ferry.lines.length;
    await sleep(300);
    assert.equal(src.ferry.lines.length, frozen, "the source is paused after the snapshot");
    // QEMU lets a source that went to a file run again: nothing else runs this guest.
    assert.deepEqual(await src.qmp.execute("cont"), { return: {} });
    assert.equal(await runState(src.qmp), "running");
    await assertGuestRuns(src.ferry, "source after cont");
    await stopVm(src);
    src = undefined;

    dst = await startVm({ dir, name: "dst", append: PATTERN, incoming: `file:${file}` });
    const m = await dst.ferry.waitLine(/PROBE VERIFY ok round=(\d+)/, 20000);
    assert.ok(Number(m[1]) >= saved, `restored round ${m[1]} continues the saved round ${saved}`);
    await assertGuestRuns(dst.ferry, "restored guest");
    assert.ok(
      !dst.ferry.lines.some((l) => /PROBE BOOT/.test(l)),
      "restored, not booted\n" + dst.ferry.transcript(),
    );
    assertNoFail(dst.ferry, "restored guest");
    assert.equal(await runState(dst.qmp), "running");
    const q = await dst.qmp.call("query-migrate") as QmpMessage;
    assert.equal(q.status, "completed", JSON.stringify(q));
    assertNoStackTrace(dst.ferry);
  } finally {
    await stopVm(src);
    await stopVm(dst);
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a guest with a virtio-blk disk saved to a file restores with -incoming defer + migrate-incoming file: and its disk rounds verify", async () => {
  const dir = tempDir();
  const file = `${dir}/vm.snap`;
  const img = `${dir}/disk.img`;
  makeImage(img, 8);
  const append = "mode=blk blk_mib=4 cpus=1 interval_ms=100 serial=rep";
  let src: Vm | undefined, dst: Vm | undefined;
  try {
    src = await startVm({ dir, name: "src", mem: "128M", append, extra: blkArgs(img) });
    await src.ferry.waitLine(/PROBE BLK VERIFY ok round=2\b/, 20000);
    await save(src, file);
    const saved = verifiedRounds(src.ferry).at(-1)!;
    await src.qmp.execute("quit");
    assert.equal((await src.ferry.wait()).code, 0);
    src = undefined;

    dst = await startVm({ dir, name: "dst", mem: "128M", append, extra: blkArgs(img), incoming: "defer" });
    assert.equal(await runState(dst.qmp), "inmigrate");
    assert.deepEqual(await dst.qmp.execute("migrate-incoming", { uri: `file:${file}` }), { return: {} });
    await dst.ferry.waitLine(new RegExp(`PROBE BLK VERIFY ok round=${saved + 2}\\b`), 20000);
    const rounds = verifiedRounds(dst.ferry);
    assert.ok(rounds[0]! > saved && rounds[0]! <= saved + 1, `rounds ${rounds} continue ${saved}`);
    assertNoFail(dst.ferry, "restored blk guest");
    assert.equal(await runState(dst.qmp), "running");
    assert.equal((await dst.qmp.call("query-migrate") as QmpMessage).status, "completed");
  } finally {
    await stopVm(src);
    await stopVm(dst);
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a truncated file, a file with one flipped byte and another configuration are refused with one line naming the reason, and no guest runs; the good file of a paused source restores paused", async () => {
  const dir = tempDir();
  const file = `${dir}/vm.snap`;
  let src: Vm | undefined;
  try {
    src = await startVm({ dir, name: "src", mem: "128M", append: PATTERN });
    await src.ferry.waitLine(/PROBE VERIFY ok round=/, 20000);
    await src.qmp.execute("stop");
    await save(src, file, ["STOP", "MIGRATION:setup", "MIGRATION:active", "MIGRATION:completed"]);
    await stopVm(src);
    src = undefined;
    const good = Deno.readFileSync(file);
    const args = (path: string, o: { mem?: string; smp?: number } = {}) =>
      probeArgs({
        mem: o.mem ?? "128M",
        smp: o.smp ?? 1,
        append: PATTERN,
        extra: ["-incoming", `file:${path}`],
      });

    const cases: { name: string; bytes: Uint8Array; want: RegExp }[] = [
      { name: "truncated", bytes: good.subarray(0, good.length >> 1), want: /truncated/ },
      { name: "cut-end", bytes: good.subarray(0, good.length - 1), want: /truncated/ },
    ];
    // One flipped byte: in the hello (a field no check but the file's CRC covers), in RAM, in the end record.
    for (const [name, at] of [["hello", 30], ["ram", good.length >> 1], ["end", good.length - 8]] as const) {
      const bad = good.slice();
      bad[at]! ^= 0x01;
      cases.push({ name: `flip-${name}`, bytes: bad, want: /the file is corrupted/ });
    }
    for (const c of cases) {
      Deno.writeFileSync(`${dir}/${c.name}.snap`, c.bytes);
      const r = await refused(args(`${dir}/${c.name}.snap`));
      assert.equal(r.code, 1, `${c.name}: ${r.stderr.join("\n")}`);
      assert.equal(r.stderr.length, 1, `${c.name}: one line\n${r.stderr.join("\n")}`);
      assert.match(r.stderr[0]!, new RegExp(`^ferry: .*Cannot restore from '${dir}/${c.name}\\.snap': `));
      assert.match(r.stderr[0]!, c.want, c.name);
      assert.deepEqual(r.console.filter((l) => /PROBE/.test(l)), [], `${c.name}: no guest ran`);
    }

    for (
      const [o, attribute] of [[{ mem: "256M" }, /-m: source 134217728, destination 268435456/], [
        { smp: 2 },
        /-smp: source 1, destination 2/,
      ]] as const
    ) {
      const r = await refused(args(file, o));
      assert.equal(r.code, 1, r.stderr.join("\n"));
      assert.equal(r.stderr.length, 1, r.stderr.join("\n"));
      assert.match(r.stderr[0]!, attribute);
      assert.deepEqual(r.console.filter((l) => /PROBE/.test(l)), [], "no guest ran");
    }
    assert.deepEqual(Deno.readFileSync(file), good, "a refused restore leaves the file alone");

    // The intact file restores; a guest saved paused stays paused until cont (as after a live migration).
    const dst = await startVm({ dir, name: "dst", mem: "128M", append: PATTERN, incoming: `file:${file}` });
    try {
      await waitMigration(dst.qmp, ["completed"]);
      assert.equal(await runState(dst.qmp), "paused");
      await dst.qmp.execute("cont");
      await dst.ferry.waitLine(/PROBE VERIFY ok round=/, 20000);
      assertNoFail(dst.ferry, "restored paused guest");
    } finally {
      await stopVm(dst);
    }
  } finally {
    await stopVm(src);
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("a canceled snapshot leaves the source running, no partial file and an older snapshot at the path untouched; a failing one too", async () => {
  const dir = tempDir();
  const file = `${dir}/vm.snap`;
  let src: Vm | undefined;
  try {
    src = await startVm({ dir, name: "src", append: "mode=pattern mib=32 interval_ms=50" });
    await src.ferry.waitLine(/PROBE VERIFY ok round=/, 20000);
    // 32 MiB at 4 MiB/s: several seconds of active precopy to cancel in.
    await src.qmp.call("migrate-set-parameters", { "max-bandwidth": 4 << 20 });
    Deno.writeTextFileSync(file, "an older snapshot");
    await src.qmp.call("migrate", { uri: `file:${file}` });
    await waitMigration(src.qmp, ["active"]);
    await sleep(300);
    assert.ok(exists(`${file}.partial`), "written under the partial name");
    assert.equal(Deno.readTextFileSync(file), "an older snapshot");
    const progress = ram(await src.qmp.call("query-migrate") as QmpMessage);
    assert.ok((progress.transferred as number) > 0, JSON.stringify(progress));
    assert.deepEqual(await src.qmp.execute("migrate_cancel"), { return: {} });
    const r = await waitMigration(src.qmp, FINAL);
    assert.equal(r.status, "canceled", JSON.stringify(r));
    assert.equal(await runState(src.qmp), "running");
    await assertGuestRuns(src.ferry, "source after cancel");
    assert.deepEqual(
      [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.startsWith("vm.snap")),
      ["vm.snap"],
    );
    assert.equal(Deno.readTextFileSync(file), "an older snapshot", "the older snapshot is untouched");

    // A directory that does not exist: the snapshot fails naming the file, the source runs on.
    await src.qmp.call("migrate-set-parameters", { "max-bandwidth": 0 });
    await src.qmp.call("migrate", { uri: `file:${dir}/missing/vm.snap` });
    const f = await waitMigration(src.qmp, FINAL);
    assert.equal(f.status, "failed");
    assert.match(f["error-desc"] as string, /Cannot create snapshot file '.*missing\/vm\.snap\.partial'/);
    assert.equal(await runState(src.qmp), "running");
    await assertGuestRuns(src.ferry, "source after a failed snapshot");
    assertNoStackTrace(src.ferry);
  } finally {
    await stopVm(src);
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("-incoming file: of a missing file exits non-zero naming it in one line; migrate-incoming refuses QEMU's exec: by name", async () => {
  const dir = tempDir();
  try {
    const r = await refused(probeArgs({ append: PATTERN, extra: ["-incoming", `file:${dir}/nope.snap`] }));
    assert.equal(r.code, 1);
    assert.equal(r.stderr.length, 1, r.stderr.join("\n"));
    assert.match(r.stderr[0]!, /Cannot restore from '.*nope\.snap': cannot open it: No such file/);
    const vm = await startVm({ dir, name: "q", append: PATTERN, incoming: "defer" });
    try {
      const e = await vm.qmp.execute("migrate-incoming", { uri: "exec:cat /x" }) as QmpMessage;
      assert.match(JSON.stringify(e), /exec: is not supported/);
    } finally {
      await stopVm(vm);
    }
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
