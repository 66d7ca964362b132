/**
 * Black box: live migration of a guest using ferry's virtio-blk-pci and virtio-net-pci. While the
 * probe guest streams pattern rounds to a shared image, every write it saw completed is in the image
 * afterwards and its read-back verifies on the destination; the image lock moves with the guest and
 * stays with the source when the migration fails (before or after the switchover); a device or
 * drive attribute that differs is refused before RAM moves; with network traffic, frames keep flowing
 * from the destination and its self-announce (RARP) frames with the guest's MAC reach the tap.
 */
import assert from "node:assert/strict";
import { kvmSkipReason } from "./_fixture/ferry.ts";
import {
  assertNoStackTrace,
  Ferry,
  FINAL,
  probeArgs,
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
import { waitIncoming } from "./_fixture/ferry.ts";
import {
  assertClean,
  assertImageHoldsRound,
  blkArgs,
  createNetLab,
  flockHolders,
  GUEST_MAC,
  HostSide,
  joinedConsole,
  makeImage,
  nackingDestination,
  netArgs,
  netSkipReason,
  verifiedRounds,
  waitPoweroff,
} from "./_fixture/virtio.ts";

const skip = kvmSkipReason();
const suffix = skip === undefined ? "" : ` (skipped: ${skip})`;
const netSkip = skip ?? await netSkipReason();
const netSuffix = netSkip === undefined ? "" : ` (skipped: ${netSkip})`;

/**
 * 4 MiB of pattern per round (8192 sectors). `serial=rep` writes a line with one `rep outsb`; a
 * switchover can still split one (after its first byte), which {@linkcode joinedConsole} joins.
 */
const BLK_SECTORS = 8192;
const blkAppend = (rounds: number) =>
  `mode=blk blk_mib=4 cpus=1 interval_ms=100 serial=rep${rounds ? ` rounds=${rounds}` : ""}`;

async function withDir(fn: (dir: string, img: string) => Promise<void>): Promise<void> {
  const dir = tempDir();
  const img = `${dir}/disk.img`;
  makeImage(img, 8);
  try {
    await fn(dir, img);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

/** Starts one more read-write ferry on `img` and asserts it is refused at start, naming the image. */
async function assertLockRefused(img: string, what: string): Promise<void> {
  const f = new Ferry(probeArgs({ mem: "128M", append: blkAppend(1), extra: blkArgs(img) }));
  const st = await f.wait(20000);
  assert.notEqual(st.code, 0, `${what}: a new ferry on the image is refused\n${f.transcript()}`);
  assert.ok(!f.lines.some((l) => l.includes("PROBE BOOT")), `${what}: no guest ran\n${f.transcript()}`);
  assert.ok(
    f.stderrLines.some((l) => /Cannot lock image/.test(l) && l.includes(`'${img}'`)),
    `${what}\n${f.transcript()}`,
  );
}

async function migrationStatus(q: Vm["qmp"]): Promise<string> {
  return (await q.call("query-migrate") as { status?: string }).status ?? "";
}

/** Asserts exactly `pid` holds the exclusive lock of `img`. */
function assertLockHolder(img: string, pid: number, what: string): void {
  assert.deepEqual(flockHolders(img), [{ kind: "WRITE", pid }], `${what}: the lock holder`);
}

for (
  const v of [
    { hops: 1, direct: false, smp: 1, throttle: true },
    { hops: 2, direct: true, smp: 2, throttle: false },
  ]
) {
  const how = (v.hops === 1 ? "migration" : `${v.hops} migrations in a row`) +
    (v.throttle ? " throttled to several dirty passes" : "");
  Deno.test({
    name: `${how} while the guest streams writes to its disk (direct=${
      v.direct ? "on" : "off"
    }, -smp ${v.smp}): each destination's guest keeps verifying, the lock moves with it, a third ferry is refused, and after the last one's poweroff the image holds the last round${suffix}`,
    ignore: skip !== undefined,
    fn: () =>
      withDir(async (dir, img) => {
        const rounds = 40 + 30 * v.hops; // 30..70 rounds/s here; a hop starts by round ~15
        const append = `${blkAppend(rounds).replace("cpus=1", `cpus=${v.smp}`)}`;
        const common = {
          dir,
          mem: "128M",
          smp: v.smp,
          append,
          extra: blkArgs(img, { serial: "mig1", direct: v.direct }),
        };
        const vms: Vm[] = [];
        try {
          // Every destination waits from the start (their image lock is taken only when they resume).
          const started = await Promise.allSettled(
            Array.from({ length: v.hops + 1 }, (_, i) =>
              startVm({
                ...common,
                name: `vm${i}`,
                ...(i > 0 ? { incoming: `unix:${dir}/mig${i}.sock` } : {}),
              })),
          );
          for (const s of started) {
            if (s.status === "fulfilled") {
              vms.push(s.value);
            }
          }
          assert.equal(vms.length, v.hops + 1, "all ferries started");
          for (const vm of vms.slice(1)) await waitIncoming(vm.qmp);
          let src = vms[0]!;
          await src.ferry.waitLine(/PROBE BLK VERIFY ok round=3\b/, 20000);
          for (let hop = 1; hop <= v.hops; hop++) {
            const uri = `unix:${dir}/mig${hop}.sock`;
            const dst = vms[hop]!;
            assertLockHolder(img, src.ferry.child.pid, `hop ${hop}: before, with the destination waiting`);

            if (v.throttle) {
              // Passes slower than the guest re-reads its 4 MiB: the DMA writes ferry makes into guest
              // RAM must be in the dirty log, or the destination's read-back finds stale buffers.
              // No vCPU throttle: auto-converge would converge it in fewer passes than this test needs.
              await src.qmp.call("migrate-set-capabilities", {
                capabilities: [{ capability: "auto-converge", state: false }],
              });
              await src.qmp.call("migrate-set-parameters", {
                "max-bandwidth": 48 << 20,
                // 0: only a sync that finds nothing dirty converges. The guest writes RAM even while it
                // waits for its disk, but a dirty pass takes under a millisecond, and on 2 cores its
                // vCPU may not run in that window: a later pass can still find nothing and converge.
                "downtime-limit": 0,
                "max-iterations": 5,
                "convergence-policy": "force",
              });
            }
            await src.qmp.call("migrate", { uri });
            const r = await waitMigration(src.qmp, FINAL, 30000);
            const t = () =>
              `hop ${hop}: ${JSON.stringify(r)}\n${src.ferry.transcript()}\n${dst.ferry.transcript()}`;
            assert.equal(r.status, "completed", t());
            // The full pass's sync, at least one dirty pass's, and the last one in the pause.
            if (v.throttle) assert.ok(Number(ram(r)["dirty-sync-count"]) >= 3, `several passes\n${t()}`);
            assert.equal(await runState(src.qmp), "postmigrate");
            // Its console is complete once it exited (a line the switchover split continues on dst).
            await src.qmp.execute("quit");
            assert.equal((await src.ferry.wait(10000)).code, 0, t());
            const before = joinedConsole(vms.slice(0, hop).map((vm) => vm.ferry));
            const lastSrc = verifiedRounds(before).at(-1)!;
            assert.ok(lastSrc < rounds - 20, `the guest was still writing at the switchover\n${t()}`);

            // The destination's guest continues the numbering: the round in flight, then the next ones.
            await dst.ferry.waitLine(new RegExp(`BLK VERIFY ok round=${lastSrc + 3}\\b`), 20000);
            // Every round verified once, in order: the round in flight at the switchover first.
            const sofar = verifiedRounds(joinedConsole(vms.slice(0, hop + 1).map((vm) => vm.ferry)));
            assert.deepEqual(sofar, Array.from({ length: sofar.length }, (_, i) => i + 1), t());
            assert.equal(await runState(dst.qmp), "running");
            assertLockHolder(img, dst.ferry.child.pid, `hop ${hop}: after the switchover`);
            await assertLockRefused(img, `hop ${hop}: while the destination runs`);
            assert.ok(
              !dst.ferry.lines.some((l) => l.includes("PROBE BOOT")),
              "the destination did not boot the guest again",
            );
            src = dst;
          }

          const st = await waitPoweroff(src.ferry, 30000);
          assert.equal(st.code, 0, src.ferry.transcript());
          // Every round verified exactly once, in order, across all hops.
          const all = verifiedRounds(joinedConsole(vms.map((vm) => vm.ferry)));
          assert.deepEqual(
            all,
            Array.from({ length: rounds }, (_, i) => i + 1),
            "rounds 1..N verified once each",
          );
          for (const vm of vms) {
            assertClean(vm.ferry, vm.qmpPath);
            assertNoStackTrace(vm.ferry);
          }
          assertImageHoldsRound(img, BLK_SECTORS, rounds);
        } finally {
          for (const vm of vms) await stopVm(vm);
        }
      }),
  });
}

Deno.test({
  name:
    `a migration that fails after the switchover (the destination refuses the state) gives the lock back to the source, whose guest keeps writing and verifying${suffix}`,
  ignore: skip !== undefined,
  fn: () =>
    withDir(async (dir, img) => {
      let src: Vm | undefined;
      let duringSwitchover: { kind: string; pid: number }[] | undefined;
      const dst = nackingDestination(`${dir}/fake.sock`, () => {
        duringSwitchover = flockHolders(img);
        return Promise.resolve();
      });
      try {
        src = await startVm({ dir, name: "src", mem: "128M", append: blkAppend(0), extra: blkArgs(img) });
        await src.ferry.waitLine(/PROBE BLK VERIFY ok round=2\b/, 20000);
        assertLockHolder(img, src.ferry.child.pid, "before");
        await src.qmp.call("migrate", { uri: `unix:${dir}/fake.sock` });
        const r = await waitMigration(src.qmp, FINAL, 30000);
        const kinds = await dst.done;
        assert.equal(kinds.at(-1), 7, `the source sent everything up to complete: ${kinds}`);
        assert.equal(r.status, "failed", JSON.stringify(r));
        assert.match(String(r["error-desc"]), /scripted refusal/);
        assert.deepEqual(duringSwitchover, [], "the paused source had released the lock at the switchover");

        assert.equal(await runState(src.qmp), "running");
        const last = verifiedRounds(src.ferry).at(-1)!;
        await src.ferry.waitLine(new RegExp(`PROBE BLK VERIFY ok round=${last + 2}\\b`), 10000);
        assertLockHolder(img, src.ferry.child.pid, "after the failed migration");
        await assertLockRefused(img, "after the failed migration");
        const rs = verifiedRounds(src.ferry);
        assert.deepEqual(
          rs,
          Array.from({ length: rs.length }, (_, i) => i + 1),
          "every round verified once, in order",
        );
        assertClean(src.ferry, "source");
        assertNoStackTrace(src.ferry);
      } finally {
        dst.listener.close();
        await stopVm(src);
      }
    }),
});

Deno.test({
  name:
    `a migration whose destination is killed mid-stream fails, the source keeps the lock and its guest keeps writing and verifying${suffix}`,
  ignore: skip !== undefined,
  fn: () =>
    withDir(async (_dir, img) => {
      const options = { mem: "128M", append: blkAppend(0), extra: blkArgs(img) };
      await withMigrationPair(options, async ({ src, dst, uri }) => {
        await src.ferry.waitLine(/PROBE BLK VERIFY ok round=2\b/, 20000);
        await src.qmp.call("migrate-set-parameters", { "max-bandwidth": 1 << 20 });
        await src.qmp.call("migrate", { uri });
        await waitMigration(src.qmp, ["active"], 10000);
        await sleep(300); // ~300 KiB of the guest's ~4 MiB of non-zero RAM are through
        assert.equal(await migrationStatus(src.qmp), "active");
        await dst.ferry.kill();
        const r = await waitMigration(src.qmp, FINAL, 20000);
        assert.equal(r.status, "failed", JSON.stringify(r));
        assert.ok(String(r["error-desc"]).length > 0);

        assert.equal(await runState(src.qmp), "running");
        const last = verifiedRounds(src.ferry).at(-1)!;
        await src.ferry.waitLine(new RegExp(`PROBE BLK VERIFY ok round=${last + 2}\\b`), 10000);
        assertLockHolder(img, src.ferry.child.pid, "after the failed migration");
        await assertLockRefused(img, "after the failed migration");
        assertClean(src.ferry, "source");
        assertNoStackTrace(src.ferry);
      });
    }),
});

Deno.test({
  name:
    `a destination whose own image is locked by another VM never runs the guest; the migration fails and the source takes its lock back and keeps writing${suffix}`,
  ignore: skip !== undefined,
  fn: () =>
    withDir(async (dir, img) => {
      // Drive file paths are not part of the configuration digest: the destination's path points at
      // another image, which a third ferry holds.
      const other = `${dir}/other.img`;
      makeImage(other, 8);
      let holder: Vm | undefined;
      try {
        holder = await startVm({
          dir,
          name: "holder",
          mem: "128M",
          append: blkAppend(0),
          extra: blkArgs(other),
        });
        await holder.ferry.waitLine(/PROBE BLK VERIFY ok round=1\b/, 20000);
        const options = {
          mem: "128M",
          append: blkAppend(0),
          src: { extra: blkArgs(img) },
          dst: { extra: blkArgs(other) },
        };
        await withMigrationPair(options, async ({ src, dst, uri }) => {
          await src.ferry.waitLine(/PROBE BLK VERIFY ok round=2\b/, 20000);
          await src.qmp.call("migrate", { uri });
          const r = await waitMigration(src.qmp, FINAL, 30000);
          const t = `${JSON.stringify(r)}\n${src.ferry.transcript()}\n${dst.ferry.transcript()}`;
          assert.equal(r.status, "failed", t);
          assert.match(String(r["error-desc"]), /lock/i, t);
          const st = await dst.ferry.wait(10000);
          assert.notEqual(st.code, 0, t);
          assert.ok(
            !dst.ferry.lines.some((l) => l.includes("PROBE")),
            `the destination never ran the guest\n${t}`,
          );
          assert.ok(
            dst.ferry.stderrLines.some((l) => l.includes(`'${other}'`)),
            `the destination names the image\n${t}`,
          );

          assert.equal(await runState(src.qmp), "running");
          const last = verifiedRounds(src.ferry).at(-1)!;
          await src.ferry.waitLine(new RegExp(`PROBE BLK VERIFY ok round=${last + 2}\\b`), 10000);
          assertLockHolder(img, src.ferry.child.pid, "the source, after the failed migration");
          assertLockHolder(other, holder!.ferry.child.pid, "the other VM's image");
          const hl = verifiedRounds(holder!.ferry).at(-1)!;
          await holder!.ferry.waitLine(new RegExp(`PROBE BLK VERIFY ok round=${hl + 1}\\b`), 10000);
          assertClean(src.ferry, "source");
          assertClean(holder!.ferry, "the other VM");
        });
      } finally {
        await stopVm(holder);
      }
    }),
});

const MISMATCH: { attribute: string; dst: Parameters<typeof blkArgs>[1]; want: RegExp }[] = [
  {
    attribute: "serial=",
    dst: { serial: "other" },
    want: /device d0: serial: source mig1, destination other/,
  },
  {
    attribute: "readonly=",
    dst: { serial: "mig1", readonly: true },
    want: /drive d0: readonly: source off, destination on/,
  },
  {
    attribute: "addr=",
    dst: { serial: "mig1", addr: "0x4" },
    want: /device d0: addr: source 0x2(\.0)?, destination 0x4(\.0)?/,
  },
];

Deno.test({
  name:
    `a destination whose disk has another serial=, readonly= or addr= refuses the migration before any RAM moves, naming the attribute, and the source keeps the lock and runs${suffix}`,
  ignore: skip !== undefined,
  fn: () =>
    withDir(async (dir, img) => {
      let src: Vm | undefined;
      const dsts: Vm[] = [];
      try {
        src = await startVm({
          dir,
          name: "src",
          mem: "128M",
          append: blkAppend(0),
          extra: blkArgs(img, { serial: "mig1" }),
        });
        await src.ferry.waitLine(/PROBE BLK VERIFY ok round=1\b/, 20000);
        for (const [i, row] of MISMATCH.entries()) {
          const uri = `unix:${dir}/mig${i}.sock`;
          const dst = await startVm({
            dir,
            name: `dst${i}`,
            mem: "128M",
            append: blkAppend(0),
            extra: blkArgs(img, row.dst),
            incoming: uri,
          });
          dsts.push(dst);
          await waitIncoming(dst.qmp);
          await src.qmp.call("migrate", { uri });
          const r = await waitMigration(src.qmp, FINAL, 10000);
          const t = `${row.attribute}: ${JSON.stringify(r)}\n${dst.ferry.transcript()}`;
          assert.equal(r.status, "failed", t);
          assert.match(String(r["error-desc"]), row.want, t);
          assert.ok(!(Number(ram(r).transferred ?? 0) > 0), `${row.attribute}: no RAM moved\n${t}`);
          const st = await dst.ferry.wait(10000);
          assert.notEqual(st.code, 0, t);
          assert.ok(
            dst.ferry.stderrLines.some((l) => row.want.test(l)),
            `the destination names it too\n${t}`,
          );
          assert.ok(
            !dst.ferry.lines.some((l) => l.includes("PROBE")),
            `the destination never ran the guest\n${t}`,
          );
          assert.equal(await runState(src.qmp), "running");
          assertLockHolder(img, src.ferry.child.pid, row.attribute);
        }
        const last = verifiedRounds(src.ferry).at(-1)!;
        await src.ferry.waitLine(new RegExp(`PROBE BLK VERIFY ok round=${last + 1}\\b`), 10000);
        await assertLockRefused(img, "after the refused migrations");
        assertClean(src.ferry, "source");
      } finally {
        await stopVm(src);
        for (const d of dsts) await stopVm(d);
      }
    }),
});

for (const burst of [1, 16]) {
  Deno.test({
    name: `migration during network traffic (${burst} frame${burst > 1 ? "s" : ""} per ${
      burst > 1 ? 20 : 50
    } ms): broadcasts keep flowing from the destination's tap with the next sequence numbers, its RARP self-announce with the guest's MAC reaches the bridge, and UDP echoes resume, no broadcast lost or repeated${netSuffix}`,
    ignore: netSkip !== undefined,
    async fn() {
      const lab = await createNetLab(2);
      const host = new HostSide(lab, 40);
      try {
        await host.waitFor((e) => e.kind === "ready", 5000);
        const options = {
          mem: "128M",
          append: `mode=net interval_ms=${burst > 1 ? 20 : 50} net_burst=${burst} cpus=1 serial=rep`,
          netns: lab.ns,
          src: { extra: netArgs(lab.taps[0]!) },
          dst: { extra: netArgs(lab.taps[1]!) },
        };
        await withMigrationPair(options, async ({ src, dst, uri }) => {
          // Traffic both ways through the source's tap first.
          await host.waitFor((e) => e.kind === "echo", 10000);
          await host.waitFor((e) => e.kind === "bcast" && e.seq! >= 5, 10000);

          await src.qmp.call("migrate", { uri });
          const r = await waitMigration(src.qmp, FINAL, 30000);
          const t = () =>
            `${
              JSON.stringify(r)
            }\n${src.ferry.transcript()}\n${dst.ferry.transcript()}\n${host.transcript()}`;
          assert.equal(r.status, "completed", t());
          assert.equal(await runState(src.qmp), "postmigrate");
          const srcSeq = Math.max(...src.ferry.lines.flatMap((l) => {
            const m = l.match(/^PROBE NET TX seq=(\d+)/);
            return m ? [Number(m[1])] : [];
          }));

          // New frames from the destination: its tap, later sequence numbers; the announce; echoes again.
          await host.waitFor((e) => e.kind === "bcast" && e.seq! >= srcSeq + 5, 10000);
          await host.waitFor((e) => e.kind === "frame" && e.ethertype === 0x8035, 5000);
          const switched = host.events.findIndex((e) => e.if === lab.taps[1]);
          await host.waitFor((e) => e.kind === "echo", 5000, switched);
          await sleep(200);
          const rarp = host.events.filter((e) => e.kind === "frame" && e.ethertype === 0x8035);
          assert.ok(
            rarp.every((e) => e.if === lab.taps[1] && e.dst === "ff:ff:ff:ff:ff:ff"),
            `RARP from the destination's tap\n${t()}`,
          );
          assert.ok(
            rarp.every((e) => e.sha === GUEST_MAC && e.tha === GUEST_MAC && e.len === 60),
            `RARP frames announce the guest's MAC (QEMU's 60-byte reverse request)\n${t()}`,
          );
          const bcast = host.events.filter((e) => e.kind === "bcast");
          // The source's tap carries the first frames, the destination's the rest (a frame the source's
          // guest queued but ferry had not sent at the pause goes out from the destination).
          const onSrc = bcast.filter((e) => e.if === lab.taps[0]).map((e) => e.seq!);
          const onDst = bcast.filter((e) => e.if === lab.taps[1]).map((e) => e.seq!);
          assert.equal(onSrc.length + onDst.length, bcast.length, t());
          assert.ok(
            Math.max(...onSrc) < Math.min(...onDst),
            `source's tap first, then the destination's\n${t()}`,
          );
          assert.ok(Math.max(...onDst) >= srcSeq + 5 && Math.min(...onDst) <= srcSeq + burst + 1, t());
          assert.ok(
            rarp[0]!.t - host.events[switched]!.t < 0.5,
            `the announce comes right after the switchover\n${t()}`,
          );
          // No broadcast lost or repeated across the switchover.
          const seqs = host.events.filter((e) => e.kind === "bcast").map((e) => e.seq!);
          const first = seqs[0]!;
          assert.deepEqual(
            seqs,
            Array.from({ length: seqs.length }, (_, i) => first + i),
            `consecutive broadcasts\n${t()}`,
          );
          assert.equal(await runState(dst.qmp), "running");
          assertClean(src.ferry, "source");
          assertClean(dst.ferry, "destination");
          assert.ok(
            !dst.ferry.lines.some((l) => l.includes("PROBE BOOT")),
            "the destination did not boot the guest again",
          );
          assertNoStackTrace(dst.ferry);
        });
      } finally {
        await host.stop();
        await lab.remove();
      }
    },
  });
}
