import assert from "node:assert/strict";
import {
  encodeLine,
  errorReply,
  eventMessage,
  greeting,
  QmpError,
  returnReply,
  timestamp,
} from "./protocol.ts";

Deno.test("encodeLine() writes compact JSON ending in CRLF, bigints as exact numbers", () => {
  assert.equal(encodeLine({ return: {} }), '{"return":{}}\r\n');
  assert.equal(encodeLine({ n: 2n ** 64n }), '{"n":18446744073709551616}\r\n');
});

Deno.test("returnReply() and errorReply() add id only when the request had one", () => {
  assert.deepEqual(returnReply({}), { return: {} });
  assert.deepEqual(returnReply({}, null), { return: {}, id: null });
  const e = new QmpError("CommandNotFound", "The command x has not been found");
  assert.deepEqual(errorReply(e, "a"), { error: { class: "CommandNotFound", desc: e.message }, id: "a" });
  assert.equal(e.desc, e.message);
  assert.equal(e.name, "QmpError");
});

Deno.test("eventMessage() always carries data and a timestamp", () => {
  const m = eventMessage("STOP");
  assert.deepEqual(Object.keys(m), ["event", "data", "timestamp"]);
  assert.deepEqual(m.data, {});
  const ts = timestamp();
  assert.ok(Math.abs(ts.seconds - Date.now() / 1000) < 2);
  assert.ok(ts.microseconds >= 0 && ts.microseconds < 1e6 && Number.isInteger(ts.microseconds));
});

Deno.test("greeting() puts ferry's version under qemu and names ferry in package", () => {
  assert.deepEqual(greeting({ major: 1, minor: 2, micro: 3 }), {
    QMP: { version: { qemu: { micro: 3, minor: 2, major: 1 }, package: "ferry-1.2.3" }, capabilities: [] },
  });
});
