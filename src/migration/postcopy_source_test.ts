import assert from "node:assert/strict";
import { GuestMemory, newDirtyBitmap, PAGE_SIZE } from "../memory/guest_memory.ts";
import { PostcopySender, unsentPages } from "./postcopy_source.ts";
import { RamCounters } from "./stats.ts";
import {
  decodeRunCount,
  decodeRuns,
  type MessageKindName,
  type MessageWriter,
  RAM_PREFIX_BYTES,
} from "./stream.ts";

function memory(pages: number): GuestMemory {
  const sizeBytes = pages * PAGE_SIZE;
  const m = new GuestMemory({
    regions: [{
      gpa: 0x100000,
      sizeBytes,
      slot: 0,
      hostAddr: 0n,
      vmmDirty: newDirtyBitmap(sizeBytes),
      buffer: new ArrayBuffer(sizeBytes),
    }],
  });
  for (let p = 0; p < pages; p++) m.regions[0]!.bytes[p * PAGE_SIZE] = p + 1;
  return m;
}

/** A writer that records the pages of each `ram` message. */
function recorder(onRam?: () => void) {
  const sent: number[][] = [];
  const kinds: MessageKindName[] = [];
  const writer = {
    send(kind: MessageKindName, ...parts: Uint8Array[]): Promise<void> {
      kinds.push(kind);
      if (kind === "ram") {
        const table = parts[0]!;
        const runs = decodeRuns(
          table.subarray(RAM_PREFIX_BYTES, RAM_PREFIX_BYTES + decodeRunCount(table, 1 << 30) * 16),
        );
        const pages: number[] = [];
        runs.forEach((r, i) => {
          for (let k = 0; k < r.pageCount; k++) {
            const page = (r.gpa - 0x100000) / PAGE_SIZE + k;
            assert.equal(parts[i + 1]![k * PAGE_SIZE], (page + 1) & 0xff, "the bytes of the page itself");
            pages.push(page);
          }
        });
        sent.push(pages);
        onRam?.();
      }
      return Promise.resolve();
    },
  } as unknown as MessageWriter;
  return { writer, sent, kinds };
}

Deno.test("PostcopySender sends every needed page once, in order, then postcopyEnd", async () => {
  const mem = memory(256);
  const needed = [new Uint32Array(8)];
  const want = [3, 4, 5, 40, 100, 101, 200, 255];
  for (const p of want) needed[0]![p >>> 5] = (needed[0]![p >>> 5]! | (1 << (p & 31))) >>> 0;
  const c = new RamCounters();
  const { writer, sent, kinds } = recorder();
  const s = new PostcopySender(writer, mem, needed, c);
  assert.equal(s.pagesLeft, 8);
  await s.run();
  assert.deepEqual(sent.flat(), want);
  assert.equal(kinds.at(-1), "postcopyEnd");
  assert.equal(s.pagesLeft, 0);
  assert.equal(c.remainingBytes, 0);
  assert.equal(c.normalPages, 8);
});

Deno.test("PostcopySender puts a requested page ahead of the background stream, continues after it, and never sends a page twice", async () => {
  const mem = memory(256);
  const needed = [new Uint32Array(8).fill(0xffffffff)];
  const c = new RamCounters();
  let requested = false;
  const sender: { s?: PostcopySender } = {};
  const rec = recorder(() => {
    if (!requested) {
      requested = true;
      sender.s!.request(0x100000 + 250 * PAGE_SIZE, 1); // not sent yet
      sender.s!.request(0x100000 + 0 * PAGE_SIZE, 1); // already sent: skipped
    }
  });
  const s = new PostcopySender(rec.writer, mem, needed, c);
  sender.s = s;
  await s.run();
  assert.deepEqual(rec.sent[1], [250], "the request went out right after the message in flight");
  assert.deepEqual(rec.sent[2], [251, 252, 253, 254, 255], "the background stream goes on after the request");
  assert.equal(rec.sent[3]![0], 32, "then wraps to the pages it skipped");
  const all = rec.sent.flat().sort((a, b) => a - b);
  assert.deepEqual(all, Array.from({ length: 256 }, (_, i) => i));
  assert.equal(c.postcopyRequests, 2);
  assert.throws(() => s!.request(0x100000 + 256 * PAGE_SIZE, 1), /outside guest RAM/);
});

Deno.test("unsentPages: a dirty pass keeps its bits from the stop on; the full pass every backed page from there", () => {
  const mem = memory(64);
  const dirty = [new Uint32Array([0b1011, 0x80000001])];
  assert.deepEqual(unsentPages(mem, { region: 0, page: 1 }, dirty), [new Uint32Array([0b1010, 0x80000001])]);
  const resident = (_gpa: number, n: number) => Uint8Array.from({ length: n }, (_, i) => (i % 2 ? 1 : 0));
  const full = unsentPages(mem, { region: 0, page: 60 }, null, resident);
  assert.deepEqual(full, [new Uint32Array([0, (1 << 29) | (1 << 31)])]);
  assert.deepEqual(unsentPages(mem, { region: 0, page: 62 }, null), [new Uint32Array([0, 0xc0000000])]);
});
