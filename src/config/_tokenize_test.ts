import assert from "node:assert/strict";
import type { OptionInfo } from "./_kv.ts";
import { tokenize } from "./_tokenize.ts";
import { assertConfigError } from "./_testing.ts";

function opt(name: string, arity: OptionInfo["arity"], repeat = false, aliases?: string[]): OptionInfo {
  return { name, arity, repeat, form: "V", help: "", status: "supported", ...(aliases ? { aliases } : {}) };
}
const OPTS = [
  opt("-m", "one"),
  opt("-append", "many", true),
  opt("-D", "optional"),
  opt("-daemonize", "none"),
  opt("-help", "none", true, ["-h"]),
];

Deno.test("tokenize pairs options with values in order", () => {
  const occ = tokenize(["-m", "2G", "-daemonize", "-D", "log"], OPTS);
  assert.deepEqual(occ.map((o) => [o.spelled, o.values]), [["-m", ["2G"]], ["-daemonize", []], ["-D", [
    "log",
  ]]]);
});

Deno.test("tokenize gives an optional-value option no value before another option", () => {
  const occ = tokenize(["-D", "-m", "1G"], OPTS);
  assert.deepEqual(occ.map((o) => o.values), [[], ["1G"]]);
});

Deno.test("tokenize takes following bare words as more values of a many-valued option", () => {
  const occ = tokenize(["-append", "console=ttyS0", "quiet", "-m", "1G"], OPTS);
  assert.deepEqual(occ[0]?.values, ["console=ttyS0", "quiet"]);
});

Deno.test("tokenize accepts an alias and an empty value", () => {
  assert.equal(tokenize(["-h"], OPTS)[0]?.info.name, "-help");
  assert.deepEqual(tokenize(["-append", ""], OPTS)[0]?.values, [""]);
});

Deno.test("tokenize refuses unknown options, missing values, stray words and repeats", () => {
  assertConfigError(
    () => tokenize(["-foo"], OPTS),
    TypeError,
    "-foo",
    "Unknown option '-foo': see 'ferry -help'",
  );
  assertConfigError(() => tokenize(["--m", "1G"], OPTS), TypeError, "--m", /Unknown option/);
  assertConfigError(() => tokenize(["-m"], OPTS), TypeError, "-m", "Missing value for -m: expected -m V");
  assertConfigError(() => tokenize(["-m", "-D"], OPTS), TypeError, "-m", /Missing value/);
  assertConfigError(
    () => tokenize(["-m", "1G", "2G"], OPTS),
    TypeError,
    "-m",
    /Unexpected argument '2G' after -m/,
  );
  assertConfigError(() => tokenize(["stray"], OPTS), TypeError, "stray", /Unexpected argument/);
  assertConfigError(
    () => tokenize(["-daemonize", "x"], OPTS),
    TypeError,
    "-daemonize",
    /Unexpected argument 'x'/,
  );
  assertConfigError(() => tokenize(["-m", "1G", "-m", "2G"], OPTS), TypeError, "-m", /given more than once/);
});
