import assert from "node:assert/strict";
import {
  decodeComplete,
  decodeConfig,
  decodeHeader,
  decodeHello,
  decodeReason,
  decodeRunCount,
  decodeRuns,
  decodeSection,
  encodeComplete,
  encodeConfig,
  encodeHeader,
  encodeHello,
  encodeReason,
  encodeRunTable,
  encodeSection,
  MAX_REASON_BYTES,
  MessageReader,
  MessageWriter,
  ProtocolError,
} from "./stream.ts";

Deno.test("encodeHeader writes the documented little-endian layout", () => {
  const h = encodeHeader("state", 0x01020304);
  assert.deepEqual(
    Array.from(h),
    [
      ...new TextEncoder().encode("FERRYMIG"),
      1,
      0, // version
      6,
      0, // kind state
      0,
      0,
      0,
      0, // flags
      0x04,
      0x03,
      0x02,
      0x01,
      0,
      0,
      0,
      0, // length
    ],
  );
  assert.deepEqual(decodeHeader(h), { version: 1, kind: "state", flags: 0, length: 0x01020304 });
  assert.throws(() => encodeHeader("ram", 64 * 1024 * 1024 + 1), RangeError);
});

Deno.test("payload codecs round-trip", () => {
  assert.deepEqual(decodeHello(encodeHello({ pageSize: 4096, product: "ferry 0.1 ✓" })), {
    pageSize: 4096,
    product: "ferry 0.1 ✓",
  });
  const c = { config: { "-smp": "2", "__proto__": "x" }, host: {} };
  const d = decodeConfig(encodeConfig(c));
  assert.equal(Object.getPrototypeOf(d.config), Object.prototype);
  assert.equal(d.config["-smp"], "2");
  assert.equal(decodeComplete(encodeComplete(7)), 7);
  const s = { id: "virtio-blk/rootfs", version: 3, payload: new Uint8Array([1, 2]) };
  assert.deepEqual(decodeSection(encodeSection(s)), s);
  const runs = [{ gpa: 0x1_0000_0000, pageCount: 3, zero: true }, { gpa: 4096, pageCount: 1, zero: false }];
  const t = encodeRunTable(runs);
  assert.equal(decodeRunCount(t.subarray(0, 8), t.length), 2);
  assert.deepEqual(decodeRuns(t.subarray(8)), runs);
});

Deno.test("encodeReason truncates long reasons on a character boundary", () => {
  const r = encodeReason("é".repeat(5000));
  assert.ok(r.length <= MAX_REASON_BYTES);
  assert.equal(decodeReason(r), "é".repeat(r.length / 2));
  assert.throws(
    () => encodeSection({ id: "x".repeat(300), version: 1, payload: new Uint8Array() }),
    RangeError,
  );
});

function source(chunks: Uint8Array[]) {
  return {
    read(p: Uint8Array): Promise<number | null> {
      const c = chunks.shift();
      if (!c) return Promise.resolve(null);
      const n = Math.min(p.length, c.length);
      p.set(c.subarray(0, n));
      if (n < c.length) chunks.unshift(c.subarray(n));
      return Promise.resolve(n);
    },
  };
}

Deno.test("MessageReader reads messages split at every byte and reports EOF inside one", async () => {
  const bytes: number[] = [];
  const sink = { write: (p: Uint8Array) => (bytes.push(...p), Promise.resolve(p.length)) };
  const w = new MessageWriter(sink);
  await Promise.all([w.send("hello", encodeHello({ pageSize: 4096, product: "p" })), w.send("ack")]);
  const all = Uint8Array.from(bytes);
  const r = new MessageReader(source(Array.from(all, (b) => Uint8Array.of(b))), "source");
  const h1 = (await r.readHeader())!;
  assert.equal(h1.kind, "hello");
  assert.equal(decodeHello(await r.readPayload(h1, 100)).product, "p");
  assert.equal((await r.readHeader())!.kind, "ack");
  assert.equal(await r.readHeader(), null);

  const cut = new MessageReader(source([all.subarray(0, 30)]), "source");
  const h = (await cut.readHeader())!;
  await assert.rejects(
    () => cut.readPayload(h, 100),
    (e: Error) =>
      e instanceof ProtocolError && /the source closed the connection after 6 of 7 bytes/.test(e.message),
  );
  const short = new MessageReader(source([all.subarray(0, 10)]), "source");
  await assert.rejects(
    () => short.readHeader(),
    /Cannot read message header: the source closed the connection after 10 of 24/,
  );
  const over = new MessageReader(source([all]), "source");
  await assert.rejects(async () => over.readPayload((await over.readHeader())!, 3), /limit is 3/);
});
