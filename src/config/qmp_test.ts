import assert from "node:assert/strict";
import { parseChardev } from "./chardev.ts";
import { parseMon, parseQmp, resolveMon } from "./qmp.ts";
import type { Chardev } from "./chardev.ts";
import { assertConfigError } from "./_testing.ts";

Deno.test("parseQmp reads StratoVirt's and QEMU's spellings; wait defaults to true", () => {
  assert.deepEqual(parseQmp("unix:/run/src.sock,server,nowait"), { path: "/run/src.sock", wait: false });
  assert.deepEqual(parseQmp("unix:/run/src.sock,server=on,wait=off"), { path: "/run/src.sock", wait: false });
  assert.deepEqual(parseQmp("unix:/run/src.sock,server"), { path: "/run/src.sock", wait: true });
  assert.deepEqual(parseQmp("unix:/run/src.sock,server=on,wait=on"), { path: "/run/src.sock", wait: true });
  assert.deepEqual(parseQmp("unix:/run/a,,b.sock,server,nowait"), { path: "/run/a,b.sock", wait: false });
  assert.deepEqual(parseQmp("unix:/run/a=b.sock,server"), { path: "/run/a=b.sock", wait: true });
});

Deno.test("parseQmp refuses TCP, client mode, other schemes and long paths", () => {
  assertConfigError(
    () => parseQmp("tcp:127.0.0.1:4444,server,nowait"),
    TypeError,
    "-qmp",
    /QMP over TCP is not supported yet/,
  );
  assertConfigError(
    () => parseQmp("unix:/run/src.sock"),
    TypeError,
    "-qmp",
    /client mode\) is not supported yet/,
  );
  assertConfigError(() => parseQmp("/run/src.sock,server"), TypeError, "-qmp", /is not unix:PATH/);
  assertConfigError(() => parseQmp("unix:,server"), SyntaxError, "-qmp", /empty socket path/);
  assertConfigError(() => parseQmp("unix:/s,server,pretty=on"), TypeError, "-qmp", /unknown key 'pretty'/);
  assertConfigError(
    () => parseQmp(`unix:/${"x".repeat(107)},server`),
    RangeError,
    "-qmp",
    /longer than 107 bytes/,
  );
});

Deno.test("parseChardev reads stdio, file and UNIX socket chardevs", () => {
  assert.deepEqual(parseChardev("stdio,id=c0"), { kind: "stdio", id: "c0" });
  assert.deepEqual(parseChardev("file,id=c1,path=/tmp/out"), { kind: "file", id: "c1", path: "/tmp/out" });
  assert.deepEqual(parseChardev("socket,id=m,path=/run/q.sock,server,nowait"), {
    kind: "socket",
    id: "m",
    path: "/run/q.sock",
    server: true,
    wait: false,
  });
  assert.deepEqual(parseChardev("socket,id=m,path=/run/q.sock,server=on"), {
    kind: "socket",
    id: "m",
    path: "/run/q.sock",
    server: true,
    wait: true,
  });
  assert.deepEqual(parseChardev("socket,id=m,path=/run/q.sock"), {
    kind: "socket",
    id: "m",
    path: "/run/q.sock",
    server: false,
    wait: false,
  });
});

Deno.test("parseChardev refuses pty, TCP, unknown backends and missing ids", () => {
  assertConfigError(
    () => parseChardev("pty,id=p"),
    TypeError,
    "-chardev",
    /pty chardev is not supported yet/,
  );
  assertConfigError(
    () => parseChardev("socket,id=t,port=4444,server"),
    TypeError,
    "-chardev",
    /TCP socket chardev is not supported yet/,
  );
  assertConfigError(() => parseChardev("spice,id=s"), TypeError, "-chardev", /unknown backend 'spice'/);
  assertConfigError(() => parseChardev("stdio"), TypeError, "-chardev", /missing 'id'/);
  assertConfigError(
    () => parseChardev("socket,id=m,path=/s,nowait"),
    TypeError,
    "-chardev",
    /only with 'server'/,
  );
});

Deno.test("parseMon and resolveMon make a QMP listener from a UNIX server chardev", () => {
  const devs = new Map<string, Chardev>([
    ["m", { kind: "socket", id: "m", path: "/run/q.sock", server: true, wait: false }],
    ["c", { kind: "socket", id: "c", path: "/run/c.sock", server: false, wait: false }],
    ["s", { kind: "stdio", id: "s" }],
  ]);
  assert.deepEqual(resolveMon(parseMon("chardev=m,mode=control"), devs, () => {}), {
    path: "/run/q.sock",
    wait: false,
  });
  assert.deepEqual(
    resolveMon(parseMon("chardev=m,mode=control,id=mon0"), devs, () => {}).path,
    "/run/q.sock",
  );
  assertConfigError(() => parseMon("chardev=m"), TypeError, "-mon", /missing 'mode=control'/);
  assertConfigError(
    () => parseMon("chardev=m,mode=readline"),
    TypeError,
    "-mon",
    /mode=readline \(HMP\) is not supported yet/,
  );
  assertConfigError(
    () => resolveMon(parseMon("chardev=zz,mode=control"), devs, () => {}),
    TypeError,
    "-mon",
    /no -chardev has id=zz/,
  );
  assertConfigError(
    () => resolveMon(parseMon("chardev=s,mode=control"), devs, () => {}),
    TypeError,
    "-mon",
    /is stdio; QMP needs/,
  );
  assertConfigError(
    () => resolveMon(parseMon("chardev=c,mode=control"), devs, () => {}),
    TypeError,
    "-mon",
    /client mode/,
  );
});
