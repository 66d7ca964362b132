import assert from "node:assert/strict";
import { formatIncoming, parseIncoming } from "./incoming.ts";
import { assertConfigError } from "./_testing.ts";

Deno.test("parseIncoming reads tcp:HOST:PORT and unix:PATH", () => {
  assert.deepEqual(parseIncoming("tcp:192.168.0.1:4446"), { kind: "tcp", host: "192.168.0.1", port: 4446 });
  assert.deepEqual(parseIncoming("tcp:dst.example:4446"), { kind: "tcp", host: "dst.example", port: 4446 });
  assert.deepEqual(parseIncoming("tcp:[::1]:4446"), { kind: "tcp", host: "::1", port: 4446 });
  assert.deepEqual(parseIncoming("tcp:127.0.0.1:0"), { kind: "tcp", host: "127.0.0.1", port: 0 });
  assert.deepEqual(parseIncoming("unix:/tmp/stratovirt-migrate.socket"), {
    kind: "unix",
    path: "/tmp/stratovirt-migrate.socket",
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
      "4446",
      "udp:1.2.3.4:5",
    ]
  ) {
    assertConfigError(
      () => parseIncoming(t),
      TypeError,
      "-incoming",
      /expected -incoming tcp:HOST:PORT \| unix:PATH \| defer/,
    );
  }
  assertConfigError(
    () => parseIncoming("file:/tmp/snap"),
    TypeError,
    "-incoming",
    /file is not supported yet/,
  );
});

Deno.test("parseIncoming reads QEMU's defer (listen on QMP migrate-incoming)", () => {
  assert.deepEqual(parseIncoming("defer"), { kind: "defer" });
  assert.equal(formatIncoming({ kind: "defer" }), "defer");
});

Deno.test("formatIncoming brackets an IPv6 host", () => {
  assert.equal(formatIncoming({ kind: "tcp", host: "::1", port: 5 }), "tcp:[::1]:5");
  assert.equal(formatIncoming({ kind: "tcp", host: "10.0.0.1", port: 5 }), "tcp:10.0.0.1:5");
  assert.equal(formatIncoming({ kind: "unix", path: "/s" }), "unix:/s");
});
