import assert from "node:assert/strict";
import { formatIncoming, parseIncoming } from "./incoming.ts";
import { assertConfigError } from "./_testing.ts";

Deno.test("parseIncoming reads tcp:HOST:PORT, unix:PATH and file:PATH", () => {
  const tcp = (uri: string, host: string, port: number) => ({ kind: "tcp", uri, host, port });
  assert.deepEqual(parseIncoming("tcp:192.168.0.1:4446"), tcp("tcp:192.168.0.1:4446", "192.168.0.1", 4446));
  assert.deepEqual(parseIncoming("tcp:dst.example:4446"), tcp("tcp:dst.example:4446", "dst.example", 4446));
  assert.deepEqual(parseIncoming("tcp:[::1]:4446"), tcp("tcp:[::1]:4446", "::1", 4446));
  assert.deepEqual(parseIncoming("tcp:127.0.0.1:0"), tcp("tcp:127.0.0.1:0", "127.0.0.1", 0));
  assert.deepEqual(parseIncoming("unix:/tmp/stratovirt-migrate.socket"), {
    kind: "unix",
    uri: "unix:/tmp/stratovirt-migrate.socket",
    path: "/tmp/stratovirt-migrate.socket",
  });
  assert.deepEqual(parseIncoming("file:/tmp/snap"), {
    kind: "file",
    uri: "file:/tmp/snap",
    path: "/tmp/snap",
  });
});

Deno.test("parseIncoming refuses a missing or bad uri naming the accepted form", () => {
  for (
    const t of [
      "tcp:1.2.3.4",
      "tcp::4446",
      "tcp:1.2.3.4:70000",
      "tcp:1.2.3.4:x",
      "tcp:::1:44",
      "unix:",
      "file:",
      "4446",
      "udp:1.2.3.4:5",
      "exec:cat /tmp/snap",
    ]
  ) {
    assertConfigError(
      () => parseIncoming(t),
      TypeError,
      "-incoming",
      /expected -incoming tcp:HOST:PORT \| unix:PATH \| file:PATH \| defer/,
    );
  }
  assertConfigError(() => parseIncoming("fd:3"), TypeError, "-incoming", /fd: is not supported/);
});

Deno.test("parseIncoming reads QEMU's defer (listen on QMP migrate-incoming)", () => {
  assert.deepEqual(parseIncoming("defer"), { kind: "defer" });
  assert.equal(formatIncoming({ kind: "defer" }), "defer");
});

Deno.test("formatIncoming writes the canonical uri back (IPv6 bracketed) and it parses to the same", () => {
  for (const t of ["tcp:[::1]:5", "tcp:10.0.0.1:5", "unix:/s", "file:/x/y.snap"]) {
    assert.equal(formatIncoming(parseIncoming(t)), t);
    assert.deepEqual(parseIncoming(formatIncoming(parseIncoming(t))), parseIncoming(t));
  }
});
