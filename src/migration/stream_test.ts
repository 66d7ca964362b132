import assert from "node:assert/strict";
import {
  crc32c,
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
  encodeMessage,
  encodeReason,
  encodeRunTable,
  encodeSection,
  HEADER_BYTES,
  MAX_MESSAGE_BYTES,
  MAX_REASON_BYTES,
  messageBytes,
  type MessageKindName,
  MessageReader,
  MessageWriter,
  PAYLOAD_BYTES,
  ProtocolError,
  sealMessage,
} from "./stream.ts";
import { shim } from "../ffi/shim.ts";

Deno.test("encodeHeader writes the documented little-endian layout", () => {
  const h = encodeHeader("state", 0x00010203, 0x0a0b0c0d);
  assert.deepEqual(
    Array.from(h),
    [
      ...new TextEncoder().encode("FERRYMIG"),
      ...[2, 0], // version
      ...[6, 0], // kind state
      ...[0, 0, 0, 0], // flags
      ...[0x03, 0x02, 0x01, 0, 0, 0, 0, 0], // length
      ...[0x0d, 0x0c, 0x0b, 0x0a], // sequence number
      ...[0, 0, 0, 0], // CRC32C, set by sealMessage / the writer
    ],
  );
  assert.equal(HEADER_BYTES, 32);
  assert.deepEqual(decodeHeader(h), {
    version: 2,
    kind: "state",
    flags: 0,
    length: 0x00010203,
    seq: 0x0a0b0c0d,
    crc: 0,
  });
  assert.throws(() => encodeHeader("ram", 64 * 1024 * 1024 + 1), RangeError);
  assert.throws(() => encodeHeader("ack", 1), /'ack' message of 1 bytes: limit is 0/);
});

Deno.test("crc32c gives the standard check values, continues, and ferry_copy_crc32c copies while it checksums", () => {
  const check = new TextEncoder().encode("123456789");
  assert.equal(crc32c(check), 0xe3069283);
  assert.equal(crc32c(check.subarray(4), crc32c(check.subarray(0, 4))), 0xe3069283);
  assert.equal(crc32c(new Uint8Array(32)), 0x8a9136aa); // RFC 3720 B.4: 32 bytes of zeros
  assert.equal(crc32c(new Uint8Array(32).fill(0xff)), 0x62a8ab43); // RFC 3720 B.4: 32 bytes of 0xff
  assert.equal(crc32c(Uint8Array.from({ length: 32 }, (_, i) => i)), 0x46dd794e); // RFC 3720 B.4
  // Lengths around the three-way block sizes, against a bytewise reference.
  const ref = (b: Uint8Array, crc = 0) => {
    let c = ~crc >>> 0;
    for (const x of b) {
      c ^= x;
      for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0x82f63b78 & -(c & 1));
    }
    return ~c >>> 0;
  };
  const src = Uint8Array.from({ length: 3 * 4096 * 2 + 100 }, (_, i) => (i * 2654435761) >>> 24);
  const dst = new Uint8Array(src.length);
  const copy = shim().ferry_copy_crc32c;
  for (const n of [0, 1, 7, 8, 767, 768, 4080, 4095, 4096, 4097, 12288, 12289, src.length]) {
    const want = ref(src.subarray(0, n), 0x1234);
    assert.equal(crc32c(src.subarray(0, n), 0x1234), want, `crc32c of ${n} bytes`);
    dst.fill(0);
    assert.equal(copy(dst, src, BigInt(n), 0x1234) >>> 0, want, `ferry_copy_crc32c of ${n} bytes`);
    assert.deepEqual(dst.subarray(0, n), src.subarray(0, n));
  }
  assert.ok(shim().ferry_crc32c_impl() >= 0);
});

Deno.test("encodeMessage seals a message its reader accepts; sealMessage repairs a changed one", async () => {
  const m = encodeMessage("nack", encodeReason("no"), 0);
  assert.equal(m.length, messageBytes(2));
  const r = new MessageReader(source([m]), "destination");
  const h = (await r.readHeader())!;
  assert.equal(decodeReason(await r.readPayload(h)), "no");
  const bad = m.slice();
  bad[HEADER_BYTES] = 0x4e; // "No"
  await assert.rejects(
    async () => {
      const r2 = new MessageReader(source([bad]), "destination");
      await r2.readPayload((await r2.readHeader())!);
    },
    /^ProtocolError: Cannot accept migration message #0 \('nack'\) at stream offset 0: CRC32C mismatch/,
  );
  const r3 = new MessageReader(source([sealMessage(bad)]), "destination");
  assert.equal(decodeReason(await r3.readPayload((await r3.readHeader())!)), "No");
});

Deno.test("PAYLOAD_BYTES bounds every kind and decodeHeader enforces them", () => {
  for (const [kind, [min, max]] of Object.entries(PAYLOAD_BYTES)) {
    assert.ok(min <= max && max <= MAX_MESSAGE_BYTES, kind);
    const h = encodeHeader(kind as MessageKindName, max);
    assert.equal(decodeHeader(h).length, max);
    if (min > 0) {
      new DataView(h.buffer).setBigUint64(16, BigInt(min - 1), true);
      assert.throws(() => decodeHeader(h), /need at least/);
    }
    new DataView(h.buffer).setBigUint64(16, BigInt(max + 1), true);
    assert.throws(() => decodeHeader(h), /limit is/);
  }
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

  const cut = new MessageReader(source([all.subarray(0, HEADER_BYTES + 6)]), "source");
  const h = (await cut.readHeader())!;
  await assert.rejects(
    () => cut.readPayload(h, 100),
    (e: Error) =>
      e instanceof ProtocolError && /the source closed the connection after 6 of 7 bytes/.test(e.message),
  );
  const short = new MessageReader(source([all.subarray(0, 12)]), "source");
  await assert.rejects(
    () => short.readHeader(),
    /Cannot read message header: the source closed the connection after 2 of 22/,
  );
  const over = new MessageReader(source([all]), "source");
  await assert.rejects(async () => over.readPayload((await over.readHeader())!, 3), /limit is 3/);
});

Deno.test("MessageWriter numbers messages per connection; MessageReader refuses a missing, repeated or reordered one", async () => {
  const out: Uint8Array[] = [];
  const w = new MessageWriter({ write: (p: Uint8Array) => (out.push(p.slice()), Promise.resolve(p.length)) });
  await w.send("ack");
  await w.send("nack", encodeReason("a"));
  await w.send("resumed");
  assert.equal(w.sent, 3);
  assert.deepEqual(out.map((m) => decodeHeader(m.subarray(0, HEADER_BYTES)).seq), [0, 1, 2]);
  const read = async (msgs: Uint8Array[]) => {
    const r = new MessageReader(source(msgs.map((m) => m.slice())), "source");
    const kinds: string[] = [];
    for (let h = await r.readHeader(); h; h = await r.readHeader()) {
      await r.readPayload(h);
      kinds.push(h.kind);
    }
    return kinds;
  };
  assert.deepEqual(await read(out), ["ack", "nack", "resumed"]);
  await assert.rejects(
    () => read([out[0]!, out[2]!]),
    /^ProtocolError: Cannot accept migration message #1 \('resumed'\) at stream offset 32: sequence number 2, want 1: message #1 is missing or out of order$/,
  );
  await assert.rejects(
    () => read([out[0]!, out[1]!, out[1]!]),
    /message #2 \('nack'\) at stream offset 65: sequence number 1, want 2: message #1 was already received/,
  );
  await assert.rejects(() => read([out[1]!, out[0]!]), /sequence number 1, want 0/);
});

Deno.test("MessageWriter.sendPages and MessageReader.readPages give each page's CRC32C of the bytes sent and received", async () => {
  const out: Uint8Array[] = [];
  const w = new MessageWriter({ write: (p: Uint8Array) => (out.push(p.slice()), Promise.resolve(p.length)) });
  const pages = Uint8Array.from({ length: 3 * 4096 }, (_, i) => (i * 31) & 0xff);
  const prefix = Uint8Array.of(1, 2, 3);
  const sent = new Uint32Array(3);
  await w.sendPages("ram", prefix, [pages.subarray(0, 4096), pages.subarray(4096)], sent);
  const want = [0, 1, 2].map((p) => crc32c(pages.subarray(p * 4096, (p + 1) * 4096)));
  assert.deepEqual(Array.from(sent), want);
  const r = new MessageReader(source([out[0]!]), "source");
  const h = (await r.readHeader())!;
  assert.equal(h.length, 3 + 3 * 4096);
  const got = new Uint8Array(3 * 4096);
  const crcs = new Uint32Array(3);
  await r.readExact(new Uint8Array(3), "prefix");
  await r.readPages(got, "pages", crcs);
  assert.deepEqual(got, pages);
  assert.deepEqual(Array.from(crcs), want);
  // A damaged page is refused when the message ends.
  const bad = out[0]!.slice();
  bad[HEADER_BYTES + 3 + 5000]! ^= 1;
  const r2 = new MessageReader(source([bad]), "source");
  await r2.readHeader();
  await r2.readExact(new Uint8Array(3), "prefix");
  await assert.rejects(() => r2.readPages(got, "pages", crcs), /CRC32C mismatch/);
});

Deno.test("MessageWriter: queued and in-place page messages are the same bytes as sendPages, in call order, and drain() reports a write error", async () => {
  const pages = Uint8Array.from({ length: 4 * 4096 }, (_, i) => (i * 13 + 7) & 0xff);
  const prefix = Uint8Array.of(9, 8, 7, 6);
  const parts = [pages.subarray(0, 4096), pages.subarray(4096)];
  const collect = () => {
    const chunks: Uint8Array[] = [];
    return {
      chunks,
      sink: { write: (p: Uint8Array) => (chunks.push(p.slice()), Promise.resolve(p.length)) },
      bytes: () => Uint8Array.from(chunks.flatMap((c) => Array.from(c))),
    };
  };
  const a = collect(), b = collect();
  const wa = new MessageWriter(a.sink), wb = new MessageWriter(b.sink);
  const ca = new Uint32Array(4), cb = new Uint32Array(4), cc = new Uint32Array(4);
  await wa.sendPages("ram", prefix, parts, ca);
  await wa.send("ack");
  await wa.sendPages("ram", prefix, parts, ca);
  // Both queued kinds resolve once checksummed; the writes follow in order, then `ack` after them.
  await wb.sendPagesInPlaceQueued("ram", prefix, parts, cb);
  const acked = wb.send("ack");
  await wb.sendPagesQueued("ram", prefix, parts, cc);
  await acked;
  await wb.drain();
  assert.deepEqual(b.bytes(), a.bytes());
  assert.deepEqual(Array.from(cb), Array.from(ca));
  assert.deepEqual(Array.from(cc), Array.from(ca));

  let calls = 0;
  const failing = new MessageWriter({
    write: () =>
      ++calls === 1
        ? Promise.resolve(0).then(() => Promise.reject(new Error("peer gone")))
        : Promise.resolve(1),
  });
  await failing.sendPagesInPlaceQueued("ram", prefix, parts, cb);
  await assert.rejects(() => failing.drain(), /peer gone/);
  await assert.rejects(() => failing.send("ack"), /peer gone/);
});

Deno.test("MessageWriter: in-place page messages wait while two are still unwritten (the checksums stay just ahead of the socket)", async () => {
  const pages = Uint8Array.from({ length: 2 * 4096 }, (_, i) => (i * 7 + 1) & 0xff);
  const prefix = Uint8Array.of(1, 2);
  const parts = [pages];
  const pending: (() => void)[] = [];
  const w = new MessageWriter({
    write: (p: Uint8Array) => new Promise<number>((resolve) => pending.push(() => resolve(p.length))),
  });
  const crcs = new Uint32Array(2);
  await w.sendPagesInPlaceQueued("ram", prefix, parts, crcs);
  await w.sendPagesInPlaceQueued("ram", prefix, parts, crcs);
  let third = false;
  const t = w.sendPagesInPlaceQueued("ram", prefix, parts, crcs).then(() => third = true);
  for (let i = 0; i < 5; i++) await new Promise((r) => setTimeout(r, 0));
  assert.equal(third, false, "framed while two messages were still unwritten");
  // Complete the first message's writes (header + table, then the pages): the third may go.
  while (!third) {
    pending.shift()?.();
    await new Promise((r) => setTimeout(r, 0));
  }
  await t;
  while (pending.length) {
    pending.shift()!();
    await new Promise((r) => setTimeout(r, 0));
  }
  await w.drain();
});

Deno.test("MessageReader.readPagesStaged hands whole-page chunks to place, with each page's CRC32C, and refuses a damaged message", async () => {
  const out: Uint8Array[] = [];
  const w = new MessageWriter({ write: (p: Uint8Array) => (out.push(p.slice()), Promise.resolve(p.length)) });
  // 5 MiB: three chunks (2 MiB staging buffers), the last one short; more chunks than buffers.
  const n = 1280;
  const pages = Uint8Array.from({ length: n * 4096 }, (_, i) => ((i >> 12) * 7 + i) & 0xff);
  const sent = new Uint32Array(n);
  await w.sendPages("ram", Uint8Array.of(1, 2, 3), [pages], sent);
  const read = async (bytes: Uint8Array, place: (off: number, chunk: Uint8Array) => Promise<void>) => {
    // Delivered in odd-sized reads, so chunks fill from several reads and from the reader's buffer.
    const parts: Uint8Array[] = [];
    for (let o = 0; o < bytes.length; o += 300_001) parts.push(bytes.subarray(o, o + 300_001));
    const r = new MessageReader(source(parts), "source");
    await r.readHeader();
    await r.readExact(new Uint8Array(3), "prefix");
    const crcs = new Uint32Array(n);
    await r.readPagesStaged(n * 4096, "pages", crcs, place);
    return crcs;
  };
  const got = new Uint8Array(n * 4096);
  const offsets: number[] = [];
  const crcs = await read(out[0]!, async (off, chunk) => {
    offsets.push(off);
    await new Promise((r) => setTimeout(r, 1)); // placing is asynchronous: the next chunk is read meanwhile
    got.set(chunk, off);
  });
  assert.deepEqual(offsets, [0, 2 * 1024 * 1024, 4 * 1024 * 1024]);
  assert.deepEqual(got, pages);
  assert.deepEqual(Array.from(crcs), Array.from(sent));
  // A damaged page is refused when the message ends.
  const bad = out[0]!.slice();
  bad[HEADER_BYTES + 3 + 3 * 1024 * 1024]! ^= 1;
  await assert.rejects(() => read(bad, () => Promise.resolve()), /CRC32C mismatch/);
  // The first placement error is the reader's error, after every placement settled.
  let settled = 0;
  await assert.rejects(
    () =>
      read(out[0]!, async (off) => {
        await new Promise((r) => setTimeout(r, 1));
        settled++;
        if (off === 0) throw new Error("no memory");
      }),
    /no memory/,
  );
  assert.ok(settled >= 1);
});
