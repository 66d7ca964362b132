/**
 * Black box: the configuration-mismatch matrix. A destination started with a different `-m`,
 * `-append`, kernel file or `-initrd` refuses the migration before any RAM moves, and both sides
 * name the attribute and both values. (`-smp` is in tests/migration_test.ts. `-machine` has one
 * form only, q35, so it cannot differ; `-device` is not wired into the machine yet.)
 */
import assert from "node:assert/strict";
import {
  assertGuestRuns,
  assertNoStackTrace,
  FINAL,
  type PairOptions,
  PROBE,
  ram,
  runState,
  waitMigration,
  withMigrationPair,
} from "./_fixture/migration.ts";

const APPEND = "mode=idle interval_ms=50";

async function digest(path: string): Promise<string> {
  const h = new Uint8Array(await crypto.subtle.digest("SHA-256", await Deno.readFile(path)));
  return "sha256:" + Array.from(h.subarray(0, 16), (b) => b.toString(16).padStart(2, "0")).join("");
}

interface Row {
  attribute: string;
  /** Destination options that differ from the source's. */
  dst: (dir: string) => Promise<{ mem?: string; append?: string; kernel?: string; extra?: string[] }>;
  /** `<attribute>: source <a>, destination <b>` as it must appear. */
  want: (dir: string) => Promise<string>;
}

const ROWS: Row[] = [
  {
    attribute: "-m",
    dst: () => Promise.resolve({ mem: "384M" }),
    want: () => Promise.resolve(`-m: source ${256 << 20}, destination ${384 << 20}`),
  },
  {
    attribute: "-append",
    dst: () => Promise.resolve({ append: "mode=idle interval_ms=60" }),
    want: () => Promise.resolve(`-append: source ${APPEND}, destination mode=idle interval_ms=60`),
  },
  {
    attribute: "kernel",
    dst: async (dir) => {
      // The same probe with one byte appended: a different content digest, same path shape.
      const copy = `${dir}/probe-changed.elf`;
      const bytes = await Deno.readFile(PROBE);
      const changed = new Uint8Array(bytes.length + 1);
      changed.set(bytes);
      await Deno.writeFile(copy, changed);
      return { kernel: copy };
    },
    want: async (dir) =>
      `kernel: source ${await digest(PROBE)}, destination ${await digest(`${dir}/probe-changed.elf`)}`,
  },
  {
    attribute: "initrd",
    dst: async (dir) => {
      await Deno.writeFile(`${dir}/initrd.img`, new Uint8Array(4096).fill(7));
      return { extra: ["-initrd", `${dir}/initrd.img`] };
    },
    want: () => Promise.resolve("initrd: source no, destination yes"),
  },
];

for (const row of ROWS) {
  Deno.test(`migration to a destination with another ${row.attribute} is refused before any RAM moves, naming ${row.attribute} and both values on both sides`, async () => {
    const transport = row.attribute === "-append" ? "tcp" : "unix";
    const options = async (dir: string): Promise<PairOptions> => ({
      append: APPEND,
      transport,
      dst: await row.dst(dir),
    });
    await withMigrationPair(options, async ({ dir, src, dst, uri }) => {
      const want = await row.want(dir);
      await src.ferry.waitLine(/PROBE READY/);
      assert.equal(await runState(dst.qmp), "inmigrate", dst.ferry.transcript());
      const t0 = Date.now();
      await src.qmp.call("migrate", { uri });
      const r = await waitMigration(src.qmp, FINAL, 5000, 10);
      const ms = Date.now() - t0;
      assert.equal(r.status, "failed", JSON.stringify(r));
      assert.equal(r["error-desc"], `Cannot exchange configuration: destination refused: ${want}`);
      assert.ok(ms < 1500, `refused in ${ms} ms`);
      assert.equal(ram(r).transferred ?? 0, 0, "no RAM moved");
      assert.equal(ram(r).normal ?? 0, 0, "no page sent");

      const st = await dst.ferry.wait(10000);
      assert.notEqual(st.code, 0, "the destination exits with an error");
      assert.equal(
        dst.ferry.stderrLines.at(-1),
        `ferry: incoming migration failed: ${want}`,
        dst.ferry.transcript(),
      );
      assert.ok(!dst.ferry.lines.some((l) => /PROBE/.test(l)), "the destination never ran the guest");
      assertNoStackTrace(dst.ferry);

      assert.equal(await runState(src.qmp), "running");
      await assertGuestRuns(src.ferry, "source");
    });
  });
}
