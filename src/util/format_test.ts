import assert from "node:assert/strict";
import { format } from "node:util";
import { formatLine } from "./format.ts";

Deno.test("formatLine() fills %s, %d and %i in order", () => {
  assert.equal(formatLine("read %d bytes from %s", 512, "disk"), "read 512 bytes from disk");
  assert.equal(formatLine("%i of %d", 2.7, 1.5), "2 of 1.5");
  assert.equal(formatLine("%s", 10n), "10n");
});

Deno.test("formatLine() inspects objects, keeps %% and unmatched placeholders, appends extra arguments", () => {
  assert.equal(formatLine("cmd %o", { a: 1 }), "cmd { a: 1 }");
  assert.equal(formatLine("100%% of %s", "ram"), "100% of ram");
  assert.equal(formatLine("%s and %s", "one"), "one and %s");
  assert.equal(formatLine("base", 1, "x"), "base 1 x");
});

Deno.test("formatLine() agrees with node:util format on the forms ferry's logs use", () => {
  const cases: [string, ...unknown[]][] = [
    ["vCPU %d: %s", 3, "stopped"],
    ["%s bytes", 4096],
    ["cpu=%d count=%d", 0, 17],
    ["%d%%", 50],
    ["%s", true],
    ["%s", undefined],
    ["%d", "12"],
  ];
  for (const [t, ...a] of cases) assert.equal(formatLine(t, ...a), format(t, ...a), t);
});

Deno.test("formatLine() prints an Error with its stack", () => {
  const e = new Error("boom");
  assert.ok(formatLine("failed: %s", e).startsWith("failed: Error: boom\n"));
});
