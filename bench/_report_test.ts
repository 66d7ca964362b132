import assert from "node:assert/strict";
import { mergeRows, readReportRows, renderReport } from "./_report.ts";

Deno.test("report keeps the rows of benchmarks not run and replaces the ones run", () => {
  const before = renderReport([
    { bench: "boot", ms: 10 },
    { bench: "migrate idle", total: 1 },
    { bench: "migrate dirty", total: 2 },
  ]);
  const merged = mergeRows(readReportRows(before), [{ bench: "migrate idle", total: 3 }], ["migrate"], [
    "boot",
    "migrate",
  ]);
  assert.deepEqual(merged, [{ bench: "boot", ms: "10" }, { bench: "migrate idle", total: 3 }]);
});

Deno.test("report writes one table per run of rows with the same keys", () => {
  const text = renderReport([{ bench: "a", x: 1 }, { bench: "b", x: 2 }, { bench: "c", y: "p|q" }]);
  assert.equal(text.match(/^\|---/gm)?.length, 2);
  assert.deepEqual(readReportRows(text), [{ bench: "a", x: "1" }, { bench: "b", x: "2" }, {
    bench: "c",
    y: "p|q",
  }]);
});
