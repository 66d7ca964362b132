import assert from "node:assert/strict";
import { escapeValue, OptionList, splitList } from "./_kv.ts";
import { assertConfigError } from "./_testing.ts";

const FORM = { form: "FORM" };

Deno.test("splitList splits at single commas and reads ,, as a literal comma", () => {
  assert.deepEqual(splitList("a=1,b=2"), ["a=1", "b=2"]);
  assert.deepEqual(splitList("file=a,,b.img,id=d0"), ["file=a,b.img", "id=d0"]);
  assert.deepEqual(splitList("x=a,,,y=b"), ["x=a,", "y=b"]);
  assert.deepEqual(splitList("server,nowait"), ["server", "nowait"]);
  assert.deepEqual(splitList(""), [""]);
});

Deno.test("escapeValue round-trips through splitList", () => {
  for (const v of ["plain", "a,b", ",,", "x,"]) {
    assert.deepEqual(splitList(`k=${escapeValue(v)},z=1`), [`k=${v}`, "z=1"]);
  }
});

Deno.test("OptionList reads the implied key, pairs and bare flags", () => {
  const l = new OptionList("-qmp", "unix:/s,server,wait=off", { implied: "uri", form: "F" });
  assert.deepEqual(l.keys(), ["uri", "server", "wait"]);
  assert.equal(l.string("uri"), "unix:/s");
  assert.equal(l.bool("server", false), true);
  assert.equal(l.bool("wait", true), false);
});

Deno.test("OptionList.bool reads on/off words, bare nokey, and the fallback", () => {
  const l = new OptionList("-x", "a=on,b=off,c=yes,d=no,e=true,f=false,nowait", FORM);
  assert.deepEqual(["a", "b", "c", "d", "e", "f"].map((k) => l.bool(k, false)), [
    true,
    false,
    true,
    false,
    true,
    false,
  ]);
  assert.equal(l.bool("wait", true), false);
  assert.equal(l.bool("absent", true), true);
  assertConfigError(
    () => new OptionList("-x", "a=maybe", FORM).bool("a", false),
    SyntaxError,
    "-x",
    /'a=maybe' is not on or off/,
  );
  assertConfigError(
    () => new OptionList("-x", "wait,nowait", FORM).bool("wait", true),
    SyntaxError,
    "-x",
    /both/,
  );
});

Deno.test("OptionList refuses empty items, empty keys and repeated keys", () => {
  assertConfigError(() => new OptionList("-drive", "id=a,,,", FORM), SyntaxError, "-drive", /stray comma/);
  assertConfigError(() => new OptionList("-drive", "id=a,", FORM), SyntaxError, "-drive", /stray comma/);
  assertConfigError(() => new OptionList("-drive", "=a", FORM), SyntaxError, "-drive", /empty key/);
  assertConfigError(
    () => new OptionList("-drive", "id=a,id=b", FORM),
    SyntaxError,
    "-drive",
    /'id' given twice/,
  );
  assertConfigError(() => new OptionList("-drive", "", FORM), SyntaxError, "-drive", /empty value/);
});

Deno.test("OptionList.only names the unknown key and the accepted ones", () => {
  assertConfigError(
    () => new OptionList("-drive", "id=a,foo=1", { form: "id=ID" }).only(["id"]),
    TypeError,
    "-drive",
    "Cannot parse -drive 'id=a,foo=1': unknown key 'foo' (accepted: id); expected -drive id=ID",
  );
});

Deno.test("OptionList.string refuses a bare key or an empty value where a value is needed", () => {
  assertConfigError(() => new OptionList("-x", "id", FORM).string("id"), SyntaxError, "-x", /needs a value/);
  assertConfigError(() => new OptionList("-x", "id=", FORM).string("id"), SyntaxError, "-x", /empty value/);
});

Deno.test("OptionList.int checks decimal digits and the range", () => {
  const l = new OptionList("-x", "a=7,b=0x7,c=300", FORM);
  assert.equal(l.int("a", { min: 0, max: 10 }), 7);
  assertConfigError(() => l.int("b", { min: 0, max: 10 }), SyntaxError, "-x", /not a decimal number/);
  assertConfigError(() => l.int("c", { min: 0, max: 255 }), RangeError, "-x", /outside 0..255/);
});
