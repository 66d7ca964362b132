import assert from "node:assert/strict";
import { parseSerial, resolveSerial } from "./serial.ts";
import type { Chardev } from "./chardev.ts";
import { assertConfigError } from "./_testing.ts";

Deno.test("parseSerial reads stdio, both file forms, none and null", () => {
  assert.deepEqual(parseSerial("stdio"), { kind: "stdio" });
  assert.deepEqual(parseSerial("file,path=/tmp/ttyS0.log"), { kind: "file", path: "/tmp/ttyS0.log" });
  assert.deepEqual(parseSerial("file:/tmp/ttyS0.log"), { kind: "file", path: "/tmp/ttyS0.log" });
  assert.deepEqual(parseSerial("file,path=/tmp/a,,b"), { kind: "file", path: "/tmp/a,b" });
  assert.deepEqual(parseSerial("none"), { kind: "none" });
  assert.deepEqual(parseSerial("null"), { kind: "none" });
  assert.deepEqual(parseSerial("chardev:con0"), { kind: "chardev", id: "con0" });
});

Deno.test("parseSerial refuses unsupported backends as not supported yet and unknown ones", () => {
  for (
    const t of ["pty", "socket,path=/s,server,nowait", "unix:/s,server", "tcp::4444,server", "mon:stdio"]
  ) {
    assertConfigError(() => parseSerial(t), TypeError, "-serial", /is not supported yet/);
  }
  assertConfigError(
    () => parseSerial("bogus"),
    TypeError,
    "-serial",
    /unknown backend 'bogus'; expected -serial stdio/,
  );
  assertConfigError(() => parseSerial("file"), TypeError, "-serial", /missing 'path'/);
  assertConfigError(() => parseSerial("file:"), TypeError, "-serial", /empty path/);
});

Deno.test("resolveSerial follows chardev:ID to a stdio or file chardev", () => {
  const devs = new Map<string, Chardev>([
    ["s", { kind: "stdio", id: "s" }],
    ["f", { kind: "file", id: "f", path: "/tmp/x" }],
    ["q", { kind: "socket", id: "q", path: "/tmp/q", server: true, wait: false }],
  ]);
  const used: string[] = [];
  assert.deepEqual(resolveSerial({ kind: "chardev", id: "s" }, devs, (id) => used.push(id)), {
    kind: "stdio",
  });
  assert.deepEqual(resolveSerial({ kind: "chardev", id: "f" }, devs, (id) => used.push(id)), {
    kind: "file",
    path: "/tmp/x",
  });
  assert.deepEqual(used, ["s", "f"]);
  assertConfigError(
    () => resolveSerial({ kind: "chardev", id: "q" }, devs, () => {}),
    TypeError,
    "-serial",
    /not supported yet/,
  );
  assertConfigError(
    () => resolveSerial({ kind: "chardev", id: "zz" }, devs, () => {}),
    TypeError,
    "-serial",
    /no -chardev has id=zz/,
  );
});
