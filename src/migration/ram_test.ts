import assert from "node:assert/strict";
import { GuestMemory, newDirtyBitmap } from "../memory/guest_memory.ts";
import { countDirtyPages, mergeBitmaps, RamSender, RateLimiter, receiveRamBatch } from "./ram.ts";
import { RamCounters } from "./stats.ts";
import {
  decodeHeader,
  decodeRunCount,
  decodeRuns,
  HEADER_BYTES,
  MessageReader,
  MessageWriter,
  type RamRun,
} from "./stream.ts";

function memory(regions: { gpa: number; sizeBytes: number }[]): GuestMemory {
  return new GuestMemory({
    regions: regions.map((r, slot) => ({
      ...r,
      slot,
      hostAddr: 0n,
      vmmDirty: newDirtyBitmap(r.sizeBytes),
      buffer: new ArrayBuffer(r.sizeBytes),
    })),
  });
}

/** Collects what the sender writes; splits it into RAM messages, or reads it back as a stream. */
function capture() {
  const chunks: Uint8Array[] = [];
  const writer = new MessageWriter({ write: (p) => (chunks.push(p.slice()), Promise.resolve(p.length)) });
  function bytes(): Uint8Array {
    const all = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
    let o = 0;
    for (const c of chunks) all.set(c, (o += c.length) - c.length);
    return all;
  }
  function messages(): { runs: RamRun[]; dataBytes: number }[] {
    const all = bytes();
    const out = [];
    for (let p = 0; p < all.length;) {
      const h = decodeHeader(all.subarray(p, p + HEADER_BYTES));
      const body = all.subarray(p + HEADER_BYTES, p + HEADER_BYTES + h.length);
      const n = decodeRunCount(body.subarray(0, 8), h.length);
      out.push({ runs: decodeRuns(body.subarray(8, 8 + n * 16)), dataBytes: h.length - 8 - n * 16 });
      p += HEADER_BYTES + h.length;
    }
    return out;
  }
  /** A destination's reader over everything written so far. */
  function reader(): MessageReader {
    const all = bytes();
    let at = 0;
    return new MessageReader({
      read: (p) => {
        if (at >= all.length) return Promise.resolve(null);
        const n = Math.min(p.length, all.length - at);
        p.set(all.subarray(at, at + n));
        at += n;
        return Promise.resolve(n);
      },
    }, "source");
  }
  return { writer, messages, reader };
}

Deno.test("RamSender sends zero pages as runs and coalesces adjacent pages within one region", async () => {
  // Two regions that touch at 64 KiB: a run must never span both.
  const mem = memory([{ gpa: 0, sizeBytes: 16 * 4096 }, { gpa: 16 * 4096, sizeBytes: 4 * 4096 }]);
  for (const p of [2, 3, 4, 9]) mem.write(p * 4096 + 100, Uint8Array.of(1));
  const c = capture();
  const counters = new RamCounters();
  const pass = await new RamSender(c.writer, mem, counters).sendAll();
  assert.deepEqual(c.messages(), [{
    runs: [
      { gpa: 0, pageCount: 2, zero: true },
      { gpa: 2 * 4096, pageCount: 3, zero: false },
      { gpa: 5 * 4096, pageCount: 4, zero: true },
      { gpa: 9 * 4096, pageCount: 1, zero: false },
      { gpa: 10 * 4096, pageCount: 6, zero: true },
      { gpa: 16 * 4096, pageCount: 4, zero: true },
    ],
    dataBytes: 4 * 4096,
  }]);
  assert.equal(counters.zeroPages, 16);
  assert.equal(counters.normalPages, 4);
  assert.equal(pass.pages, 20);
  assert.equal(pass.bytes, counters.transferredBytes);
});

Deno.test("RamSender splits raw data into batches and sends only dirty pages", async () => {
  const mem = memory([{ gpa: 0x1000_0000, sizeBytes: 64 * 4096 }]);
  mem.fill(0x1000_0000, 64 * 4096, 7);
  const c = capture();
  const sender = new RamSender(c.writer, mem, new RamCounters(), { batchBytes: 3 * 4096 });
  const bm = new Uint32Array(2);
  for (const p of [0, 1, 2, 3, 4, 31, 32, 63]) bm[p >>> 5]! |= 1 << (p & 31);
  await sender.sendDirty([bm]);
  const msgs = c.messages();
  assert.deepEqual(msgs.map((m) => m.runs.map((r) => [(r.gpa - 0x1000_0000) / 4096, r.pageCount])), [
    [[0, 3]],
    [[3, 2], [31, 1]],
    [[32, 1], [63, 1]],
  ]);
  assert.ok(msgs.every((m) => m.dataBytes <= 3 * 4096));
});

Deno.test("countDirtyPages and mergeBitmaps work on page bitmaps", () => {
  const a = [Uint32Array.of(0b1011, 0x80000000), Uint32Array.of(0)];
  assert.equal(countDirtyPages(a), 4);
  mergeBitmaps(a, [Uint32Array.of(0b0100, 0), Uint32Array.of(0xffffffff)]);
  assert.equal(countDirtyPages(a), 37);
});

Deno.test("RateLimiter holds the average rate to its limit", async () => {
  const l = new RateLimiter(1024 * 1024);
  const t0 = performance.now();
  l.reset();
  for (let i = 0; i < 10; i++) await l.consume(10 * 1024);
  const ms = performance.now() - t0;
  assert.ok(ms >= 90 && ms < 2000, `took ${ms} ms`);
  const free = new RateLimiter(0);
  await free.consume(1 << 30);
});

Deno.test("RamSender full pass takes a never-resident page as zero without reading it", async () => {
  const mem = memory([{ gpa: 0, sizeBytes: 16 * 4096 }]);
  for (const p of [3, 4]) mem.write(p * 4096 + 100, Uint8Array.of(1));
  const resident = (except?: number) => () => {
    const v = new Uint8Array(16).fill(1);
    if (except !== undefined) v[except] = 0;
    return v;
  };
  const all = new RamCounters();
  await new RamSender(capture().writer, mem, all, { residency: resident() }).sendAll();
  assert.equal(all.normalPages, 2, "both data pages are sent when resident");
  const skipped = new RamCounters();
  await new RamSender(capture().writer, mem, skipped, { residency: resident(4) }).sendAll();
  assert.equal(skipped.normalPages, 1, "the page the host never backed goes as a zero run");
});

Deno.test("a large full pass round-trips through receiveRamBatch: raw bytes land, zero runs clear stale pages", async () => {
  // 40 MiB: more than one message's cover (16 MiB) and more pages than one yield interval.
  const pages = 10240;
  const src = memory([{ gpa: 0, sizeBytes: pages * 4096 }]);
  for (let p = 0; p < pages; p += 3) src.write(p * 4096 + (p % 4096), Uint8Array.of((p % 251) + 1));
  const c = capture();
  await new RamSender(c.writer, src, new RamCounters()).sendAll();
  const dst = memory([{ gpa: 0, sizeBytes: pages * 4096 }]);
  // Stale data where the source has zero pages must be cleared.
  for (let p = 1; p < pages; p += 3) dst.write(p * 4096 + 7, Uint8Array.of(9));
  const reader = c.reader();
  let messages = 0;
  for (let h = await reader.readHeader(); h; h = await reader.readHeader()) {
    await receiveRamBatch(reader, h, dst);
    messages++;
  }
  assert.ok(messages >= 3, `${messages} messages`);
  assert.equal(c.messages().length, messages);
  assert.deepEqual(dst.regions[0]!.bytes, src.regions[0]!.bytes);
});

Deno.test("receiveRamBatch with place: runs with a page not resident go through place, resident runs are read in place", async () => {
  const pages = 1024;
  const src = memory([{ gpa: 0, sizeBytes: pages * 4096 }]);
  for (let p = 0; p < pages; p++) {
    if (p < 300 || (p >= 600 && p < 800) || p >= 810) src.write(p * 4096 + 5, Uint8Array.of((p % 250) + 1));
  }
  const c = capture();
  await new RamSender(c.writer, src, new RamCounters()).sendAll();
  const reader = c.reader();
  const dst = memory([{ gpa: 0, sizeBytes: pages * 4096 }]);
  // Pages 600.. are resident already but page 700, the rest never backed.
  const resident = new Uint8Array(pages);
  resident.fill(1, 600);
  resident[700] = 0;
  const placed: [number, number][] = [];
  for (let h = await reader.readHeader(); h; h = await reader.readHeader()) {
    await receiveRamBatch(reader, h, dst, {
      residency: (gpa, n) => resident.slice(gpa / 4096, gpa / 4096 + n),
      place: (gpa, bytes) => {
        placed.push([gpa / 4096, bytes.length / 4096]);
        dst.write(gpa, bytes);
        return Promise.resolve();
      },
      populate: () => assert.fail("nothing is populated while pages are placed"),
    });
  }
  assert.deepEqual(dst.regions[0]!.bytes, src.regions[0]!.bytes);
  // Data runs 0..300 (never backed) and 600..800 (page 700 missing) are placed; 810..1024 is all
  // resident and read straight into guest RAM.
  assert.deepEqual(placed, [[0, 300], [600, 200]]);
});
