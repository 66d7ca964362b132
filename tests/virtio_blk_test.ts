/**
 * Black box: ferry's virtio-blk-pci with the probe guest's polled driver (`mode=blk`). Pattern rounds
 * verify in the guest and the image on the host holds the last round; `serial=` and the capacity
 * reach the guest; `readonly=on` refuses writes with VIRTIO_BLK_S_IOERR and leaves the image alone;
 * `direct=on` (O_DIRECT) works; the image lock keeps a second read-write ferry away, and read-only
 * users share it.
 */
import assert from "node:assert/strict";
import { kvmSkipReason } from "./_fixture/ferry.ts";
import { Ferry, probeArgs, tempDir } from "./_fixture/ferry.ts";
import { assertNoStackTrace } from "./_fixture/migration.ts";
import {
  assertClean,
  assertImageHoldsRound,
  blkArgs,
  makeImage,
  patternImage,
  verifiedRounds,
  waitPoweroff,
} from "./_fixture/virtio.ts";

const skip = kvmSkipReason();
const suffix = skip === undefined ? "" : ` (skipped: ${skip})`;

function blkFerry(img: string, append: string, o: Parameters<typeof blkArgs>[1] = {}): Ferry {
  return new Ferry(probeArgs({ mem: "128M", append, extra: blkArgs(img, o) }));
}

const O_DIRECT = 0o40000;

/** The open flags (fdinfo `flags:`, octal) of every fd of `pid` that refers to `path`. */
function imageFdFlags(pid: number, path: string): number[] {
  const flags: number[] = [];
  for (const e of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      if (Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`) !== path) continue;
      const m = Deno.readTextFileSync(`/proc/${pid}/fdinfo/${e.name}`).match(/^flags:\s+([0-7]+)$/m);
      if (m) flags.push(parseInt(m[1]!, 8));
    } catch { /* closed meanwhile */ }
  }
  return flags;
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = tempDir();
  try {
    await fn(dir);
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
}

for (const direct of [false, true]) {
  Deno.test({
    name: `virtio-blk with direct=${
      direct ? "on" : "off"
    }: every round verifies in the guest, BLK READY shows the image's capacity and serial, and after poweroff the image holds the last round${suffix}`,
    ignore: skip !== undefined,
    fn: () =>
      withDir(async (dir) => {
        const img = `${dir}/disk.img`;
        makeImage(img, 8);
        const rounds = 3;
        const f = blkFerry(img, `mode=blk blk_mib=4 rounds=${rounds} cpus=1 interval_ms=100`, {
          direct,
          serial: "ferry-sn1",
        });
        try {
          const st = await waitPoweroff(f, 20000);
          const t = f.transcript();
          assert.equal(st.code, 0, t);
          assertClean(f, "guest");
          assertNoStackTrace(f);
          assert.match(
            f.lines.find((l) => l.startsWith("PROBE VIRTIO "))!,
            /^PROBE VIRTIO dev=00:02\.0 id=1af4:1042 /,
            t,
          );
          assert.deepEqual(f.lines.filter((l) => l.startsWith("PROBE BLK READY")), [
            "PROBE BLK READY capacity=16384 ro=0 serial=ferry-sn1",
          ], t);
          assert.deepEqual(verifiedRounds(f), [1, 2, 3], t);
          assert.equal(
            f.lines.filter((l) => /^PROBE BLK RATE round=\d+ write_kibps=[1-9]/.test(l)).length,
            rounds,
            t,
          );
          assert.equal(f.progress(0), rounds * 8192, t);
          assert.equal(f.lines.at(-1), "PROBE EXIT poweroff", t);
          assertImageHoldsRound(img, 8192, rounds);
        } finally {
          await f.kill();
        }
      }),
  });
}

Deno.test({
  name:
    `virtio-blk with readonly=on refuses the guest's write with VIRTIO_BLK_S_IOERR (status=1), serves reads, and leaves the image unchanged${suffix}`,
  ignore: skip !== undefined,
  fn: () =>
    withDir(async (dir) => {
      const img = `${dir}/disk.img`;
      const image = patternImage(4, 4096, 7); // round 7 over the first 2 MiB, zeros after
      makeImage(img, 4, image);
      const f = blkFerry(img, "mode=blk blk_mib=4 rounds=2 cpus=1 interval_ms=100", {
        readonly: true,
        serial: "ro1",
      });
      try {
        const st = await waitPoweroff(f, 20000);
        const t = f.transcript();
        assert.equal(st.code, 0, t);
        assertClean(f, "guest");
        assertNoStackTrace(f);
        assert.ok(f.lines.includes("PROBE BLK READY capacity=8192 ro=1 serial=ro1"), t);
        assert.deepEqual(
          f.lines.filter((l) => l.startsWith("PROBE BLK WRITE")),
          ["PROBE BLK WRITE status=1"],
          t,
        );
        const sums = f.lines.filter((l) => l.startsWith("PROBE BLK READONLY")).map((l) =>
          /^PROBE BLK READONLY ok round=\d+ sum=(0x[0-9a-f]+) valid=4096$/.exec(l)?.[1]
        );
        assert.equal(sums.length, 2, t);
        assert.ok(sums[0] !== undefined && sums[0] === sums[1], t);
        assert.deepEqual(verifiedRounds(f), [], t);
        assert.deepEqual(Deno.readFileSync(img), image, "the read-only image is unchanged");
      } finally {
        await f.kill();
      }
    }),
});

Deno.test({
  name:
    `a second ferry on an image a running ferry (direct=on: the image open with O_DIRECT) writes is refused at start with one line naming the image, read-only too, and the first keeps verifying${suffix}`,
  ignore: skip !== undefined,
  fn: () =>
    withDir(async (dir) => {
      const img = `${dir}/disk.img`;
      makeImage(img, 4);
      const first = blkFerry(img, "mode=blk blk_mib=2 cpus=1 interval_ms=100", { direct: true });
      const others: Ferry[] = [];
      try {
        await first.waitLine(/PROBE BLK VERIFY ok round=/, 20000);
        const flags = imageFdFlags(first.child.pid, img);
        assert.ok(
          flags.some((f) => (f & O_DIRECT) !== 0),
          `an fd of the image has O_DIRECT: ${flags.map((f) => f.toString(8))}`,
        );
        for (const readonly of [false, true]) {
          const second = blkFerry(img, "mode=blk blk_mib=2 rounds=1 cpus=1", { readonly });
          others.push(second);
          const st = await second.wait(20000);
          const t = second.transcript();
          assert.notEqual(st.code, 0, t);
          assert.deepEqual(
            second.lines.filter((l) => l.includes("PROBE BOOT")),
            [],
            `readonly=${readonly}: no guest ran\n${t}`,
          );
          assertNoStackTrace(second);
          const errs = second.stderrLines.filter((l) => l.trim() !== "");
          assert.equal(errs.length, 1, `readonly=${readonly}: one line\n${t}`);
          assert.ok(errs[0]!.includes(`'${img}'`), `readonly=${readonly}: names the image\n${t}`);
          assert.match(errs[0]!, /Cannot lock image .* of drive 'd0'/, t);
        }
        const before = verifiedRounds(first).at(-1)!;
        const m = await first.waitLine(/PROBE BLK VERIFY ok round=(\d+)/, 10000, first.lines.length);
        assert.ok(Number(m[1]) > before, first.transcript());
        assertClean(first, "first");
      } finally {
        await first.kill();
        for (const o of others) await o.kill();
      }
    }),
});

Deno.test({
  name: `two ferries with readonly=on share one image: both read it and verify the same checksum${suffix}`,
  ignore: skip !== undefined,
  fn: () =>
    withDir(async (dir) => {
      const img = `${dir}/disk.img`;
      const image = patternImage(4, 2048, 3);
      makeImage(img, 4, image);
      const a = blkFerry(img, "mode=blk blk_mib=1 cpus=1 interval_ms=100", { readonly: true });
      let b: Ferry | undefined;
      try {
        await a.waitLine(/PROBE BLK READONLY ok round=/, 20000);
        b = blkFerry(img, "mode=blk blk_mib=1 cpus=1 interval_ms=100", { readonly: true });
        const mb = await b.waitLine(/PROBE BLK READONLY ok round=\d+ sum=(0x[0-9a-f]+) valid=(\d+)/, 20000);
        // a is still running and reading while b runs
        const ma = await a.waitLine(
          /PROBE BLK READONLY ok round=\d+ sum=(0x[0-9a-f]+) valid=(\d+)/,
          10000,
          a.lines.length,
        );
        assert.equal(mb[1], ma[1], "both read the same content");
        assert.equal(mb[2], "2048", b.transcript());
        assertClean(a, "a");
        assertClean(b, "b");
        assert.deepEqual(Deno.readFileSync(img), image, "the image is unchanged");
      } finally {
        await a.kill();
        await b?.kill();
      }
    }),
});
