/**
 * Black box: a migration destination lands guest RAM in 4 KiB pages and gives it transparent huge
 * pages once the migration completes (a fresh huge page costs this host ~5× a small one to back:
 * docs/migration-performance.md, "Landing"). Read from the kernel's own view, /proc/PID/smaps.
 */
import assert from "node:assert/strict";
import { FINAL, waitMigration, withMigrationPair } from "./_fixture/migration.ts";

const MIB = 1024 * 1024;

/** `THPeligible` of the process's mapping that is exactly `bytes` long (the guest RAM), or undefined. */
function thpEligible(pid: number, bytes: number): number | undefined {
  let size = -1;
  for (const line of Deno.readTextFileSync(`/proc/${pid}/smaps`).split("\n")) {
    const range = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (range) size = parseInt(range[2]!, 16) - parseInt(range[1]!, 16);
    const m = /^THPeligible:\s+(\d)/.exec(line);
    if (m && size === bytes) return Number(m[1]);
  }
  return undefined;
}

Deno.test("a destination lands RAM in small pages, then takes huge pages once the migration completed", async () => {
  const thpMode = Deno.readTextFileSync("/sys/kernel/mm/transparent_hugepage/enabled");
  await withMigrationPair(
    { append: "mode=pattern mib=32 interval_ms=50", mem: "256M" },
    async ({ src, dst, uri }) => {
      const ram = 256 * MIB;
      const source = thpEligible(src.ferry.child.pid, ram);
      assert.notEqual(source, undefined, "the source has one 256 MiB guest RAM mapping");
      assert.equal(
        thpEligible(dst.ferry.child.pid, ram),
        0,
        "the waiting destination's RAM takes small pages",
      );
      await src.ferry.waitLine(/PROBE VERIFY ok round=/);
      await src.qmp.call("migrate", { uri });
      assert.equal((await waitMigration(src.qmp, FINAL)).status, "completed");
      await dst.ferry.waitLine(/PROBE VERIFY ok round=/, 20000, dst.ferry.lines.length);
      // Huge pages where the host offers them at all (THP "never" leaves both sides at 0).
      const want = thpMode.includes("[never]") ? 0 : 1;
      assert.equal(source, want, `the booted source's RAM is THP-eligible (host THP: ${thpMode.trim()})`);
      assert.equal(
        thpEligible(dst.ferry.child.pid, ram),
        want,
        "the landed destination's RAM is THP-eligible",
      );
      assert.ok(!dst.ferry.lines.some((l) => /FAIL|PROBE BOOT/.test(l)), dst.ferry.transcript());
    },
  );
});

/** `Rss` in KiB of the process's mapping that is exactly `bytes` long (the guest RAM), or undefined. */
function ramRssKib(pid: number, bytes: number): number | undefined {
  let size = -1;
  for (const line of Deno.readTextFileSync(`/proc/${pid}/smaps`).split("\n")) {
    const range = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
    if (range) size = parseInt(range[2]!, 16) - parseInt(range[1]!, 16);
    const m = /^Rss:\s+(\d+) kB/.exec(line);
    if (m && size === bytes) return Number(m[1]);
  }
  return undefined;
}

Deno.test("a destination backs the pages that arrive with data and no others", async () => {
  await withMigrationPair(
    { append: "mode=fill mib=8 rate=0 interval_ms=50", mem: "256M" },
    async ({ src, dst, uri }) => {
      const ram = 256 * MIB;
      await src.ferry.waitLine(/PROBE FILLED/, 30000);
      await src.qmp.call("stop");
      const source = ramRssKib(src.ferry.child.pid, ram)!;
      assert.ok(source >= 8 * 1024, `the source holds the 8 MiB it filled (${source} KiB)`);
      await src.qmp.call("migrate", { uri });
      assert.equal((await waitMigration(src.qmp, FINAL)).status, "completed");
      // Every page with data is backed, and nothing ahead of it: a source that holds little leaves
      // a destination that holds as little (backing ahead of the landing added up to 32 MiB).
      const landed = ramRssKib(dst.ferry.child.pid, ram)!;
      assert.ok(landed >= 8 * 1024, `the destination holds the 8 MiB of data (${landed} KiB)`);
      assert.ok(landed <= source, `the destination holds ${landed} KiB, the source ${source} KiB`);
      await dst.qmp.call("cont");
      await dst.ferry.waitLine(/PROBE PROGRESS/, 20000, dst.ferry.lines.length);
      assert.ok(!dst.ferry.lines.some((l) => /FAIL|PROBE BOOT/.test(l)), dst.ferry.transcript());
    },
  );
});
