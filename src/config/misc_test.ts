import assert from "node:assert/strict";
import { IGNORED_OPTIONS, LATER_OPTIONS, parseName } from "./misc.ts";
import { parseArgs } from "./parse_args.ts";
import { assertConfigError } from "./_testing.ts";

Deno.test("parseName reads StratoVirt's bare name and QEMU's guest= form", () => {
  assert.equal(parseName("vm1"), "vm1");
  assert.equal(parseName("guest=vm1,debug-threads=on"), "vm1");
  assert.equal(parseName("a,,b"), "a,b");
  assertConfigError(() => parseName("vm1,color=red"), TypeError, "-name", /unknown key 'color'/);
  assertConfigError(() => parseName("x".repeat(256)), RangeError, "-name", /longer than 255/);
});

Deno.test("every refused option says not supported yet and every ignored one is accepted", () => {
  for (const o of LATER_OPTIONS) {
    const argv = o.arity === "none" || o.arity === "optional" ? [o.name] : [o.name, "x"];
    assertConfigError(() => parseArgs(argv), TypeError, o.name, `Option ${o.name} is not supported yet`);
  }
  for (const o of IGNORED_OPTIONS) {
    parseArgs([o.name]);
    if (o.arity === "optional") parseArgs([o.name, "x"]);
  }
});
